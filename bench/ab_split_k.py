"""A/B: the cupy conv2d implicit GEMM with and without split-K, against cuDNN, in one run.

    PYTHONPATH=. python3 bench/ab_split_k.py [--cases dilated_aspp,dilated_small,deform_dcnv2]

Three contestants per case, interleaved (peer, split-K automatic, split-K off),
device time from CUDA events (``fastconv._bench``); prints the medians and ratios.
Split-K stays off by default (``fastconv.backends.cupy.conv.SPLIT_K = 1``) until
this run shows that the automatic choice pays.
"""

from __future__ import annotations

import argparse
import json

from fastconv import _bench, _cases
from fastconv.backends.cupy import conv as cupy_conv


def with_split(runner, split):
    def call(inner=runner.call):
        cupy_conv.SPLIT_K = split
        return inner()
    return _bench.Runner(runner.impl, f"{runner.label} split={split}", call, runner.sync,
                         runner.gpu, runner.size)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default="dilated_aspp,dilated_small,deform_dcnv2")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    default_split = cupy_conv.SPLIT_K
    env = _bench.GpuEnv.real()
    rows = {}
    for name in args.cases.split(","):
        case = _cases.get(name)
        inputs = case.inputs("full", 0)
        peer = _bench.make_runner(case, "torch:cuda", inputs=inputs)
        fc = _bench.make_runner(case, "fastconv:cupy", inputs=inputs)
        runners = {"peer": peer, "split_auto": with_split(fc, None), "split_off": with_split(fc, 1)}
        cs = [_bench.Contestant(k, r, _bench.GpuClock(r.sync, env.timer(r.gpu), env.delay))
              for k, r in runners.items()]
        _bench.interleave(cs, args.repeat, 3)
        ms = {c.key: (c.summary().get("ms"), c.error) for c in cs}
        ref = cs[0].output
        err = {c.key: _bench.max_rel_err(c.output, ref) for c in cs[1:] if c.output is not None}
        rows[name] = {"ms": ms, "max_rel_err": err}
        pm = ms["peer"][0]
        if None in (pm, ms["split_auto"][0], ms["split_off"][0]):
            print(name, ms, flush=True)
            continue
        print(f"{name:16s} peer {pm:.4f} ms | split auto {ms['split_auto'][0]:.4f} ms "
              f"(ratio {ms['split_auto'][0] / pm:.2f}) | split off {ms['split_off'][0]:.4f} ms "
              f"(ratio {ms['split_off'][0] / pm:.2f}) | err {err}", flush=True)
    cupy_conv.SPLIT_K = default_split
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
