"""Command line: ``python -m fastconv info | check | bench``.

* ``info``  versions, numba threads, and which backends are usable (and why not);
* ``check`` runs every usable backend against the NumPy oracle on small random
  cases and prints a pass/fail table (exit status 1 on any failure);
* ``bench`` times fastconv against PyTorch/torchvision (see ``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

from . import __version__, _dispatch, _random_cases

GPU_BACKENDS = ("cupy", "numba_cuda")


def _version(module_name: str) -> str:
    try:
        from importlib.metadata import version

        return version(module_name)
    except Exception:  # noqa: BLE001 - not installed
        return "not installed"


def info(args) -> int:
    import numba

    print(f"fastconv {__version__}")
    print(f"python   {platform.python_version()} ({platform.machine()}, {platform.system()})")
    for dist in ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cuda-bindings", "torch"):
        print(f"{dist:13s} {_version(dist)}")
    print(f"numba threads: {numba.get_num_threads()} (of {numba.config.NUMBA_NUM_THREADS})")
    from .backends.cpu._config import describe_target

    print(f"cpu target:    {describe_target()}")
    print("backends:")
    for name in ("cpu", "reference", *GPU_BACKENDS):
        ok, why = _dispatch.backend_status(name)
        print(f"  {name:11s} {'usable' if ok else 'unavailable'}{'' if ok else ': ' + why}")
    return 0


def check(args) -> int:
    """Every usable backend x op x dtype against the oracle on ``--cases`` random cases."""
    backends = args.backends.split(",") if args.backends else ["cpu", *GPU_BACKENDS]
    ops = args.ops.split(",") if args.ops else list(_random_cases.OPS)
    rng = np.random.default_rng(args.seed)

    def pick(lo, hi):
        return int(rng.integers(lo, hi + 1))

    failed = False
    print(f"{'backend':11s} {'op':17s} {'dtype':8s} {'cases':>5s} {'max rel err':>12s}  result")
    for backend in backends:
        ok, why = _dispatch.backend_status(backend)
        if not ok:
            print(f"{backend:11s} {'(all)':17s} {'':8s} {'':>5s} {'':>12s}  skipped: {why}")
            continue
        dtypes = ["float32", "float64"] + (["float16"] if backend == "cupy" else [])
        for op in ops:
            for dtype in dtypes:
                tol = _random_cases.TOLERANCE[np.dtype(dtype)]
                worst, first_bad, t0 = 0.0, None, time.perf_counter()
                for _ in range(args.cases):
                    case = _random_cases.GENERATORS[op](pick, rng, np.dtype(dtype))
                    try:
                        err = _random_cases.run_case(case, backend)[0]
                    except Exception as exc:  # noqa: BLE001 - a crash is a failure to report
                        err = float("inf")
                        first_bad = first_bad or f"{type(exc).__name__}: {exc} in {case.describe()}"
                    if err > tol and first_bad is None:
                        first_bad = case.describe()
                    worst = max(worst, err)
                passed = worst <= tol
                failed |= not passed
                verdict = "pass" if passed else "FAIL"
                print(
                    f"{backend:11s} {op:17s} {dtype:8s} {args.cases:5d} {worst:12.2e}  {verdict}"
                    f"  ({time.perf_counter() - t0:.1f} s)"
                )
                if not passed:
                    print(f"    first failing case: {first_bad}")
    print("FAILED" if failed else "all checks passed")
    return 1 if failed else 0


def bench(argv) -> int:
    from . import _bench

    return _bench.main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":  # the benchmark parses its own options
        return bench(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fastconv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, threads and usable backends")
    p = sub.add_parser("check", help="every usable backend against the NumPy oracle")
    p.add_argument("--cases", type=int, default=25, help="random cases per backend, op and dtype")
    p.add_argument("--backends", help="comma-separated (default: cpu,cupy,numba_cuda)")
    p.add_argument("--ops", help="comma-separated (default: all five)")
    p.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="benchmarks against PyTorch/torchvision (see --help)")
    args = parser.parse_args(argv)
    return {"info": info, "check": check}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
