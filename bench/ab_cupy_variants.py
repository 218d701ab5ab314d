"""A/B of the cupy backend's optional kernel paths against cuDNN, in one run (needs a GPU).

    PYTHONPATH=. python3 bench/ab_cupy_variants.py [--cases ...] [--json FILE]

Both paths are implemented and tested (CPU emulator, NVRTC) but off by default until a run
of this script shows where they pay:

* ``SPLIT_K``: the conv2d implicit GEMM with its reduction split when its tiles leave the
  GPU short of blocks (``None`` = automatic, ``1`` = off) -- conv2d and deform_conv2d cases;
* ``TRANSPOSED_GEMM``: conv_transpose2d as one implicit GEMM per output phase instead of
  the gathering kernel -- conv_transpose2d cases.

Per case three contestants run interleaved (the peer, the path on, the path off), device
time from CUDA events (``fastconv._bench``); prints medians and ratios.
"""

from __future__ import annotations

import argparse
import json

from fastconv import _bench, _cases
from fastconv.backends.cupy import conv as cupy_conv

#: op -> (module setting, value for "on", value for "off")
VARIANTS = {
    "conv2d": ("SPLIT_K", None, 1),
    "deform_conv2d": ("SPLIT_K", None, 1),
    "conv_transpose2d": ("TRANSPOSED_GEMM", True, False),
}
DEFAULT_CASES = ("dilated_aspp,dilated_small,deform_dcnv2,transposed_fcn,transposed_decoder")


def with_setting(runner, name, value):
    def call(inner=runner.call):
        setattr(cupy_conv, name, value)
        return inner()
    return _bench.Runner(runner.impl, f"{runner.label} {name}={value}", call, runner.sync,
                         runner.gpu, runner.size)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    defaults = {name: getattr(cupy_conv, name) for name, _, _ in VARIANTS.values()}
    env = _bench.GpuEnv.real()
    rows = {}
    try:
        for case_name in args.cases.split(","):
            case = _cases.get(case_name)
            name, on, off = VARIANTS[case.op]
            inputs = case.inputs("full", 0)
            peer = _bench.make_runner(case, "torch:cuda", inputs=inputs)
            fc = _bench.make_runner(case, "fastconv:cupy", inputs=inputs)
            runners = {"peer": peer, "on": with_setting(fc, name, on),
                       "off": with_setting(fc, name, off)}
            cs = [_bench.Contestant(k, r, _bench.GpuClock(r.sync, env.timer(r.gpu), env.delay))
                  for k, r in runners.items()]
            _bench.interleave(cs, args.repeat, 3)
            ms = {c.key: c.summary().get("ms") for c in cs}
            errors = {c.key: c.error for c in cs if c.error}
            err = {c.key: _bench.max_rel_err(c.output, cs[0].output)
                   for c in cs[1:] if c.output is not None and cs[0].output is not None}
            rows[case_name] = {"setting": name, "on": on, "off": off, "ms": ms,
                               "max_rel_err": err, "errors": errors}
            if None in ms.values():
                print(case_name, ms, errors, flush=True)
                continue
            print(f"{case_name:18s} {name}: peer {ms['peer']:.4f} ms | on {ms['on']:.4f} ms "
                  f"(ratio {ms['on'] / ms['peer']:.2f}) | off {ms['off']:.4f} ms "
                  f"(ratio {ms['off'] / ms['peer']:.2f}) | err {err}", flush=True)
    finally:
        for name, value in defaults.items():
            setattr(cupy_conv, name, value)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
