"""ptxas' resource report for the cupy backend's kernels, per benchmark case -- no GPU needed.

NVRTC (``cuda-bindings``) compiles every instantiation for sm_80 and sm_90 with
``--ptxas-options=-v`` (``fastconv.backends.cupy._nvrtc``).  Which kernels each
full-size case of BENCHMARKS.md launches, with which grid and dynamic shared
memory, comes from the cupy launchers themselves: they run on host arrays as
the emulator's ``"cupy_emulated"`` backend (``tests/cupy_emu``) with launching
replaced by recording (a dry run: nothing executes).

Occupancy is the upper bound the resources allow (256-thread blocks): blocks
per SM limited by registers (65536 per SM, allocated per warp in units of 256),
shared memory (sm_80: 164 KiB per SM, sm_90: 228 KiB; 1 KiB reserved per block)
and 2048 threads per SM.

Besides each case's default launches, the launches of every other arm of
``bench/ab_cupy_variants.py`` (the optional kernel paths, off by default) are listed
as ``"<case> [<settings>]"``.

The numba.cuda backend's kernels get the same report with ``--numba``: each kernel's
PTX (``numba.cuda.compile_ptx``) assembled by nvJitLink with ptxas' verbose report
(``fastconv.backends.numba_cuda._resources``), float32 and float64, sm_80 and sm_90.

    python bench/kernel_resources.py --json bench/results/<date>-nvrtc-resources.json
    python bench/kernel_resources.py --numba --json bench/results/<date>-numba-resources.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SMEM_PER_SM = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}
REGS_PER_SM, THREADS_PER_SM, BLOCK = 65536, 2048, 256


def planned_launches() -> dict[str, list[dict]]:
    """``{case: [{"kernel", "grid", "dynamic_smem_bytes"}]}`` for the full-size cases, and
    for ``"<case> [<arm>]"`` under each non-default arm of ``bench/ab_cupy_variants.py``."""
    from cupy_emu import emulator

    from fastconv import _cases
    from fastconv.backends.cupy import _module

    emulator.install()
    _module.max_blocks = lambda: 64 * 132  # an H100 SXM: 132 SMs
    recorded: list = []
    _module.run = lambda launches: recorded.extend(launches)
    import ab_cupy_variants as ab  # beside this script (its folder is on sys.path)

    defaults = ab.current()
    plans = {}
    try:
        for case in _cases.select("all"):
            inputs = case.inputs("full")
            arms = ab.VARIANTS.get(case.op, [{}])
            for i, arm in enumerate(arms):
                ab.apply(defaults)
                ab.apply(arm)
                recorded.clear()
                inputs.call_fastconv(backend=emulator.NAME)
                plan = [
                    {"kernel": name, "grid": list(grid) if isinstance(grid, tuple) else int(grid),
                     "dynamic_smem_bytes": int(smem)}
                    for name, grid, _block, smem, _args in recorded]
                if i == 0:
                    plans[case.name] = plan
                elif plan != plans[case.name]:  # an arm that changes nothing here is left out
                    plans[f"{case.name} [{ab.arm_label(arm)}]"] = plan
    finally:
        ab.apply(defaults)
    return plans


def usage_by_arch() -> dict[str, dict[str, dict]]:
    from fastconv.backends.cupy import _nvrtc

    include = _nvrtc.cuda_include_dir()
    if include is None:
        raise SystemExit("cuda_fp16.h not found: pip install 'numba-cuda[cu13]' cuda-bindings")
    out = {}
    for arch in _nvrtc.ARCHS:
        out[arch] = {}
        for file, names in _nvrtc.kernel_files().items():
            lowered, log = _nvrtc.compile_file(file, arch, names, include, _nvrtc.PTXAS_VERBOSE)
            out[arch].update(_nvrtc.resource_usage(lowered, log))
    return out


def blocks_per_sm(arch: str, usage: dict, dynamic_smem: int) -> int:
    regs_per_warp = -(-usage["registers"] * 32 // 256) * 256
    by_regs = REGS_PER_SM // (regs_per_warp * (BLOCK // 32))
    smem = usage["static_smem_bytes"] + dynamic_smem + 1024
    by_smem = SMEM_PER_SM[arch] // smem
    return int(min(by_regs, by_smem, THREADS_PER_SM // BLOCK))


def markdown(plans, usage) -> str:
    lines = ["| case | kernel | grid | arch | registers | smem (static + dynamic) "
             "| spills (st/ld) | blocks/SM (x256 threads) |", "|---|---|---|---|---|---|---|---|"]
    for case, launches in plans.items():
        seen = set()
        for launch in launches:
            name = launch["kernel"]
            if name in seen:
                continue
            seen.add(name)
            for arch in usage:
                u = usage[arch][name]
                smem = f'{u["static_smem_bytes"]} + {launch["dynamic_smem_bytes"]}'
                spills = f'{u["spill_store_bytes"]}/{u["spill_load_bytes"]}'
                blocks = blocks_per_sm(arch, u, launch["dynamic_smem_bytes"])
                grid = launch["grid"]
                grid = " x ".join(map(str, grid)) if isinstance(grid, list) else grid
                lines.append(f"| {case} | `{name}` | {grid} | {arch} | {u['registers']} | "
                             f"{smem} | {spills} | {blocks} |")
    return "\n".join(lines)


NUMBA_MODULES = ("conv", "deform", "roi", "_copy", "resample")


def numba_usage() -> dict[str, dict[str, dict]]:
    """``{arch: {"<module>.<kernel> <dtype>": usage + {"threads"}}}`` for every numba.cuda
    kernel (``ptx_cases`` of each backend module), with the block size it is launched with."""
    import importlib

    import numpy as np

    from fastconv.backends.numba_cuda import _resources

    out: dict[str, dict[str, dict]] = {}
    for arch in ("sm_80", "sm_90"):
        out[arch] = {}
        for module in NUMBA_MODULES:
            mod = importlib.import_module(f"fastconv.backends.numba_cuda.{module}")
            for dtype in (np.float32, np.float64):
                for name, kernel, argtypes in mod.ptx_cases(dtype):
                    u = _resources.resource_usage(kernel, argtypes, arch)
                    u["threads"] = _resources.launch_threads(name)
                    out[arch][f"{module}.{name} {np.dtype(dtype).name}"] = u
    return out


def numba_markdown(usage) -> str:
    lines = ["| kernel | dtype | arch | registers | static smem | spills (st/ld) "
             "| threads/block | blocks/SM |", "|---|---|---|---|---|---|---|---|"]
    for arch, kernels in usage.items():
        for key, u in kernels.items():
            name, dtype = key.rsplit(" ", 1)
            regs_per_warp = -(-u["registers"] * 32 // 256) * 256
            warps = -(-u["threads"] // 32)
            blocks = min(REGS_PER_SM // (regs_per_warp * warps),
                         SMEM_PER_SM[arch] // (u["static_smem_bytes"] + 1024),
                         THREADS_PER_SM // u["threads"])
            lines.append(f"| `{name}` | {dtype} | {arch} | {u['registers']} | "
                         f"{u['static_smem_bytes']} | {u['spill_store_bytes']}/"
                         f"{u['spill_load_bytes']} | {u['threads']} | {blocks} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--numba", action="store_true",
                        help="report the numba.cuda backend's kernels instead (nvJitLink)")
    args = parser.parse_args(argv)
    if args.numba:
        import numba_cuda
        from cuda.bindings import nvjitlink

        usage = numba_usage()
        report = {
            "date": datetime.date.today().isoformat(),
            "what": "ptxas resource report (nvJitLink -verbose on numba.cuda.compile_ptx's "
                    "PTX) of every numba_cuda-backend kernel, with its launch block size "
                    "(no GPU used)",
            "numba_cuda": numba_cuda.__version__,
            "nvjitlink": ".".join(map(str, nvjitlink.version())),
            "archs": list(usage),
            "kernels": usage,
        }
        print(numba_markdown(usage))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
            print(f"\nwrote {args.json}")
        return
    from cuda.bindings import nvrtc

    plans = planned_launches()
    usage = usage_by_arch()
    _, major, minor = nvrtc.nvrtcVersion()
    report = {
        "date": datetime.date.today().isoformat(),
        "what": "ptxas resource report (NVRTC --ptxas-options=-v) of every cupy-backend kernel, "
                "and the launches each full-size benchmark case plans (no GPU used)",
        "nvrtc": f"{major}.{minor}",
        "archs": list(usage),
        "cases": plans,
        "kernels": usage,
    }
    print(markdown(plans, usage))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
