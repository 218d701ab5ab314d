"""A/B of the cupy backend's optional kernel paths against cuDNN/torchvision, in one run.

    PYTHONPATH=. python3 bench/ab_cupy_variants.py [--cases ...] [--json FILE]   # needs a GPU

Each path is implemented and tested (CPU emulator, NVRTC) but off by default until a
run of this script shows where it pays:

* ``conv.DEPTHWISE_TILED``: depthwise conv2d without the shared-memory tile (one thread
  per output) -- the depthwise case;
* ``conv.DEPTHWISE_LOADS``: the depthwise tile loaded with 4 loads in flight per thread
  instead of 1 -- the depthwise case;
* ``conv.SPLIT_K``: the conv2d implicit GEMM with its reduction split when its tiles
  leave the GPU short of blocks (``None`` = automatic, ``1`` = off) -- conv2d and
  deform_conv2d cases;
* ``conv.TRANSPOSED_GEMM``: conv_transpose2d as one implicit GEMM per output phase
  instead of the gathering kernel, with and without split-K -- conv_transpose2d cases;
* ``roi.ROI_BOX_GRID`` and ``roi.ROI_CB``: the RoI kernels with boxes on grid y (32-bit
  index arithmetic) instead of one grid-stride loop, and 1, 4 or 8 channels per
  thread -- roi_align and roi_pool cases;
* ``deform.DEFORM_FUSED``: deform_conv2d in one kernel (bilinear sampling inside the
  implicit GEMM's loads) instead of deform_im2col + conv2d, with and without split-K --
  deform_conv2d cases;
* ``conv.GEMM_VEC``: every implicit GEMM above with gemm.cuh's vector register tiles
  (128-bit shared-memory loads; 128-row tiles for more than 64 output channels per
  group), with and without split-K -- conv2d, deform_conv2d and conv_transpose2d cases.

Per case the peer and every arm run interleaved, device time from CUDA events
(``fastconv._bench``; the RoI ops without the box check, as in ``fastconv bench``);
prints medians and ratios, the first arm being the default, and per op the arm to make
the default: the lowest geometric mean of its time over the default arm's across the
op's cases, among the arms whose every output matched the peer (``recommend``).
``--json`` writes ``{"cases": {case: {...}}, "recommended": {op: {...}}}``;
``--load FILE`` prints the summary of a saved run (no GPU needed).
"""

from __future__ import annotations

import argparse
import json
import math

from fastconv import _bench, _cases
from fastconv.backends.cupy.autotune import ARMS, set_enabled
from fastconv.backends.cupy.autotune import label as arm_label
from fastconv.backends.cupy.variants import apply, current

#: op -> the arms: settings per contestant, the default first; the arms of an op set the
#: same settings, so none carries over from the arm before it (the arms autotuning tries)
VARIANTS = ARMS
DEFAULT_CASES = ("dilated_aspp,dilated_small,depthwise,deform_dcnv2,transposed_fcn,"
                 "transposed_decoder,"
                 "roi_align_fpn,roi_align_mask,roi_pool_fpn")


def with_settings(runner, settings: dict):
    """``runner`` with ``settings`` applied before each call (the arms interleave)."""
    def apply_arm():
        apply(settings)

    def call(inner=runner.call):
        apply_arm()
        return inner()

    device_call = None
    if runner.device_call is not None:
        def device_call(inner=runner.device_call):
            apply_arm()
            return inner()
    return _bench.Runner(runner.impl, f"{runner.label} {arm_label(settings)}", call, runner.sync,
                         runner.gpu, runner.size, device_call=device_call)


#: an arm whose output differs from the peer's by more than this (max rel err) is not eligible
MAX_REL_ERR = 1e-3


def recommend(rows: dict) -> dict:
    """``{op: {"arm", "speedup", "per_case"}}`` from the rows of one run.

    ``speedup`` is the geometric mean over the op's cases of default time / arm time
    (> 1: the arm is faster); only arms timed on every case of the op, with no error
    and outputs within ``MAX_REL_ERR`` of the peer's, are eligible.  The default arm
    itself is eligible, so "keep the default" is a possible answer.
    """
    by_op: dict = {}
    for case_name, row in rows.items():
        by_op.setdefault(_cases.get(case_name).op, []).append(row)
    out = {}
    for op, op_rows in by_op.items():
        arms = op_rows[0]["arms"]
        default = arms[0]
        logs, per_case = {}, {}
        for arm in arms:
            total = 0.0
            for row in op_rows:
                ms, base = row["ms"].get(arm), row["ms"].get(default)
                bad = (arm in row["errors"] or not ms or not base
                       or row["max_rel_err"].get(arm, math.inf) > MAX_REL_ERR)
                if bad:
                    break
                total += math.log(base / ms)
                per_case.setdefault(arm, []).append(round(base / ms, 3))
            else:
                logs[arm] = total / len(op_rows)
        if logs:
            best = max(logs, key=logs.get)
            out[op] = {"arm": best, "speedup": round(math.exp(logs[best]), 3),
                       "per_case": per_case[best]}
    return out


def print_recommendations(rec: dict) -> None:
    print("\nrecommended defaults (geometric mean speed-up over the current default):")
    for op, r in rec.items():
        print(f"    {op:18s} {r['arm']:45s} x{r['speedup']}  per case {r['per_case']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--json", default=None)
    p.add_argument("--load", default=None, help="summarise a saved --json run instead")
    args = p.parse_args()
    if args.load:
        with open(args.load) as f:
            print_recommendations(recommend(json.load(f)["cases"]))
        return
    defaults = current()
    set_enabled(False)  # each arm runs as set, not as autotuning would choose
    env = _bench.GpuEnv.real()
    rows = {}
    try:
        for case_name in args.cases.split(","):
            case = _cases.get(case_name)
            arms = VARIANTS[case.op]
            inputs = case.inputs("full", 0)
            peer = _bench.make_runner(case, "torch:cuda", inputs=inputs)
            fc = _bench.make_runner(case, "fastconv:cupy", inputs=inputs)
            runners = {"peer": peer}
            runners.update({arm_label(arm): with_settings(fc, arm) for arm in arms})
            cs = [_bench.Contestant(k, r, _bench.GpuClock(r.sync, env.timer(r.gpu), env.delay))
                  for k, r in runners.items()]
            _bench.interleave(cs, args.repeat, 3)
            ms = {c.key: c.summary().get("ms") for c in cs}
            errors = {c.key: c.error for c in cs if c.error}
            err = {c.key: _bench.max_rel_err(c.output, cs[0].output)
                   for c in cs[1:] if c.output is not None and cs[0].output is not None}
            rows[case_name] = {"arms": [arm_label(a) for a in arms], "ms": ms,
                               "ratio": {k: v / ms["peer"] for k, v in ms.items()
                                         if v is not None and ms["peer"]},
                               "max_rel_err": err, "errors": errors}
            print(f"{case_name}: peer {ms['peer']} ms", flush=True)
            for k in rows[case_name]["arms"]:
                ratio = rows[case_name]["ratio"].get(k)
                print(f"    {k:40s} {ms.get(k)} ms  ratio {ratio}  err {err.get(k)}"
                      f"  {errors.get(k, '')}", flush=True)
            if args.json:  # after every case: a run cut short by a time limit keeps its cases
                with open(args.json, "w") as f:
                    json.dump({"cases": rows, "recommended": recommend(rows)}, f, indent=1)
    finally:
        apply(defaults)
    print_recommendations(recommend(rows))


if __name__ == "__main__":
    main()
