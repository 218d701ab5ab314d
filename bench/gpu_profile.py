"""Where the GPU time and the host time of a fastconv call go (run on a GPU machine).

    python bench/gpu_profile.py host [--profile OP]   # host us per call, tiny inputs
    ncu --metrics ... python bench/gpu_profile.py kernels [--cases a,b]  # one call per case

``host``: the host time per call of every op on tiny inputs (fastconv ``cupy`` and
``numba_cuda``, and torch/torchvision on CUDA), timed as ``fastconv bench`` times its
host-overhead table (``_bench.host_overhead_us``: the median of batches of back-to-back
calls, the sync after each batch excluded); with ``--profile OP`` the cProfile
table of that op's cupy call follows.  ``kernels``: each benchmark case once per
backend after a warm-up, between ``cudaProfilerStart``/``Stop`` so that
``ncu --profile-from-start off`` sees only the timed call's kernels.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import numpy as np

from fastconv import _bench, _cases


def _tiny_case_runners(case, backends):
    inputs = case.inputs("tiny", 0)
    out = {}
    for impl in [f"fastconv:{b}" for b in backends] + ["torch:cuda"]:
        try:
            out[impl] = _bench.make_runner(case, impl, "tiny", inputs=inputs, check_boxes=False)
        except _bench.Unavailable as exc:
            print(f"{case.name} {impl}: unavailable ({exc})")
    return out


def host(args):
    cases = [_cases.get(n) for n in args.cases.split(",")]
    print(f"{'case':20s} {'impl':20s} {'host us/call':>12s}")
    for case in cases:
        for impl, r in _tiny_case_runners(case, args.backends.split(",")).items():
            print(f"{case.name:20s} {impl:20s} {_bench.host_overhead_us(r):12.1f}")
    if args.profile:
        r = _tiny_case_runners(_cases.get(args.profile), ["cupy"])["fastconv:cupy"]
        r.call()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            r.call()
        prof.disable()
        r.sync()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def kernels(args):
    import cupy

    for case in [_cases.get(n) for n in args.cases.split(",")]:
        inputs = case.inputs("full", 0)
        for b in args.backends.split(","):
            r = _bench.make_runner(case, f"fastconv:{b}", "full", inputs=inputs,
                                   check_boxes=False)
            for _ in range(3):
                r.call()
            r.sync()
            cupy.cuda.runtime.profilerStart()
            r.call()
            r.sync()
            cupy.cuda.runtime.profilerStop()
            print("profiled", case.name, b, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["host", "kernels"])
    p.add_argument("--cases", default=",".join(c.name for c in _cases.CASES.values()
                                                  if c.default))
    p.add_argument("--backends", default="cupy,numba_cuda")
    p.add_argument("--profile", default=None, help="a case whose cupy call is cProfiled")
    args = p.parse_args()
    (host if args.what == "host" else kernels)(args)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
