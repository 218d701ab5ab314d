"""Call every GPU kernel of fastconv once, for compute-sanitizer (memcheck / racecheck).

Run on a GPU machine, e.g.::

    compute-sanitizer --tool memcheck --error-exitcode 99 python bench/gpu_sanitize_driver.py

For the ``"cupy"`` backend the configurations below are chosen so that every
registered kernel instantiation (every name expression in
``fastconv.backends.cupy._module``) is launched at least once, for float32,
float64 and float16; the script checks that it was, and compares every result
with the NumPy oracle.  The ``"numba_cuda"`` backend (when usable) runs the same
configurations in float32 and float64.  Shapes are tiny: under the sanitizer each
launch is slow.  Exit status: 0 when all results match and every cupy kernel
ran, 1 otherwise (the sanitizer's own exit code reports memory errors).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fastconv
from fastconv import _dispatch, _random_cases, reference
from fastconv.backends.cupy import variants


def configs(rng):
    """(op, arrays, params) covering every cupy kernel variant (with :func:`cupy_configs`)."""
    R = rng.standard_normal

    def conv(n, cin, cout, g, kh, kw, h, w, **p):
        return ("conv2d", dict(input=R((n, cin, h, w)), weight=R((cout, cin // g, kh, kw)),
                               bias=R(cout)), dict(p, groups=g))

    def convt(n, cin, cout, g, kh, kw, h, w, **p):
        return ("conv_transpose2d", dict(input=R((n, cin, h, w)),
                                         weight=R((cin, cout // g, kh, kw)), bias=R(cout)),
                dict(p, groups=g))

    out = [
        # implicit GEMM: 3x3, 1x1, any (2x3); >= 32 output channels per group
        conv(2, 8, 64, 1, 3, 3, 9, 10, padding=1),
        conv(1, 8, 40, 1, 1, 1, 7, 9, stride=2),
        conv(1, 8, 64, 2, 2, 3, 8, 8, dilation=(2, 1), padding=(1, 0)),
        # depthwise: tiled 3x3, 5x5, any; direct (tile too large for shared memory)
        conv(1, 4, 8, 4, 3, 3, 40, 35, padding=1),
        conv(1, 3, 3, 3, 5, 5, 12, 12, padding=2, stride=(2, 1)),
        conv(1, 2, 2, 2, 2, 4, 9, 9, padding=(1, 2)),
        conv(1, 2, 2, 2, 7, 7, 60, 60, stride=2, dilation=8, padding=24),
    ]
    # direct grouped conv and transposed conv: 1, 2, 4, 8, 16 output channels per thread
    for kg in (1, 2, 3, 7, 12):
        out.append(conv(2, 4, 2 * kg, 2, 3, 2, 7, 6, padding=1))
        out.append(convt(2, 4, 2 * kg, 2, 3, 3, 4, 5, stride=2, padding=1, output_padding=1))
    # an inf weight: after a transposed GEMM (numba: 24 output channels per group take it;
    # cupy: the phase GEMM, forced in cupy_configs) the exact pass runs
    name, arrays, params = convt(2, 4, 48, 2, 3, 3, 4, 5, stride=2, padding=1)
    arrays["weight"][0, 0, 0, 0] = np.inf
    out.append((name, arrays, params))
    n, c, h, w = 2, 4, 7, 6
    out.append(("deform_conv2d", dict(
        input=R((n, c, h, w)), offset=R((n, 2 * 2 * 9, h, w)), weight=R((48, c, 3, 3)),
        bias=R(48), mask=rng.uniform(0, 1, (n, 2 * 9, h, w))), dict(padding=1)))
    out.append(("deform_conv2d", dict(
        input=R((n, c, h, w)), offset=R((n, 2 * 4, h - 1, w - 1)), weight=R((2, 2, 2, 2)),
        bias=None, mask=None), dict()))
    out.append(("deform_conv2d", dict(  # fits the fused kernel's table in float and half
        input=R((n, c, h, w)), offset=R((n, 2 * 9, h, w)), weight=R((40, c, 3, 3)),
        bias=R(40), mask=rng.uniform(0, 1, (n, 9, h, w))), dict(padding=1)))
    out.append(("deform_conv2d", dict(  # 3 taps: fits in double too
        input=R((n, c, h, w)), offset=R((n, 2 * 3, h, w - 2)), weight=R((36, c, 1, 3)),
        bias=None, mask=None), dict()))
    out.append(convt(2, 4, 66, 1, 3, 3, 4, 5, stride=2, padding=1))  # 64-row phase GEMM
    boxes = np.array([[0, 1, 1, 10, 8], [1, -3, 2, 30, 20], [1, 5.5, 4.5, 5.5, 9]], np.float64)
    for c in (1, 5, 9):  # 1, 4, 8 channels per thread
        x = R((2, c, 12, 15))
        out.append(("roi_align", dict(input=x, boxes=boxes),
                    dict(output_size=(3, 4), spatial_scale=0.75, sampling_ratio=-1, aligned=True)))
        out.append(("roi_pool", dict(input=x, boxes=boxes),
                    dict(output_size=(3, 2), spatial_scale=0.75)))
    return out


def cupy_configs(rng):
    """:func:`configs` and, appended, the optional paths (``variants``) forced:
    ``(op, arrays, params, settings)``."""
    cases = [c + ({},) for c in configs(rng)]
    vec = {"GEMM_VEC": True}
    forced = []
    for op, arrays, params, _ in cases:
        if op == "conv2d" and not forced:  # the first GEMM case, split 3 ways
            forced.append((op, arrays, params, {"SPLIT_K": 3}))
        if op == "conv2d" and arrays["weight"].shape[0] // params["groups"] >= 32:
            # the GEMM cases with the vector tiles (64 rows), and 128-row tiles (more than
            # 64 output channels per group), one of them split
            forced.append((op, arrays, params, vec))
            wide = dict(arrays, weight=rng.standard_normal((130, *arrays["weight"].shape[1:])),
                        bias=rng.standard_normal(130))
            forced.append((op, wide, params, vec))  # 130 / groups (1 or 2) > 64
        elif op == "conv2d" and params["groups"] == arrays["input"].shape[1]:
            forced.append((op, arrays, params, {"DEPTHWISE_TILED": False}))
            forced.append((op, arrays, params, {"DEPTHWISE_LOADS": 4}))
        elif op == "conv_transpose2d":  # the phase GEMM (32- and 64-row tiles), and split
            forced.append((op, arrays, params, {"TRANSPOSED_GEMM": True}))
            forced.append((op, arrays, params, {"TRANSPOSED_GEMM": True, "SPLIT_K": 3}))
            forced.append((op, arrays, params, {"TRANSPOSED_GEMM": True, **vec}))
        elif op == "deform_conv2d":  # the fused kernel where it applies, and split
            forced.append((op, arrays, params, {"DEFORM_FUSED": True}))
            forced.append((op, arrays, params, {"DEFORM_FUSED": True, "SPLIT_K": 3}))
            forced.append((op, arrays, params, {"DEFORM_FUSED": True, **vec}))
        elif op in ("roi_align", "roi_pool"):
            forced.append((op, arrays, params, {"ROI_BOX_GRID": True}))
    # the vector tiles' 64 rows in the phase GEMM (33 to 64 output channels per group)
    forced.append(("conv_transpose2d", dict(
        input=rng.standard_normal((2, 4, 4, 5)), weight=rng.standard_normal((4, 40, 3, 3)),
        bias=rng.standard_normal(40)), dict(stride=2, padding=1, groups=1),
        {"TRANSPOSED_GEMM": True, **vec}))
    return cases + forced


def to_device(a, backend):
    return _random_cases.to_backend(a, backend)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="cupy,numba_cuda")
    args = parser.parse_args(argv)
    launched = set()
    try:
        from fastconv.backends.cupy import _module

        real_run = _module.run

        def logging_run(launches):
            launches = list(launches)
            launched.update(name for name, *_ in launches)
            return real_run(launches)

        _module.run = logging_run
    except ImportError:
        _module = None

    failures = 0
    cupy_like = ("cupy", "cupy_emulated")  # the emulated backend: the same, on the CPU
    for backend in args.backends.split(","):
        ok, why = _dispatch.backend_status(backend)
        if not ok:
            print(f"{backend}: skipped ({why})")
            continue
        dtypes = ["float32", "float64"] + (["float16"] if backend in cupy_like else [])
        for dt in dtypes:
            dtype = np.dtype(dt)
            tol = _random_cases.TOLERANCE[dtype]
            t0 = time.perf_counter()
            rng = np.random.default_rng(0)
            cases = (cupy_configs(rng) if backend in cupy_like
                     else [c + ({},) for c in configs(rng)])
            for op, arrays, params, settings in cases:
                host = {k: None if v is None else np.asarray(v, dtype) for k, v in arrays.items()}
                dev = {k: to_device(v, backend) for k, v in host.items()}
                with variants.forced(settings):
                    out = _random_cases.to_host(
                        getattr(fastconv, op)(**dev, **params, backend=backend))
                ref = getattr(reference, op)(**host, **params)
                err = _random_cases.relative_error(out, ref)
                if err > tol:
                    failures += 1
                    print(f"FAIL {backend} {dt} {op} {params} {settings}: "
                          f"relative error {err:.3g}")
            # the box check's kernel, on every kind of bad row (the public calls above reach it
            # only with GPU-resident boxes)
            boxes, n_bad = _random_cases.boxes_with_every_defect(rng, dtype, batch=3)
            counted = _dispatch.get_backend(backend).count_bad_boxes(to_device(boxes, backend), 3)
            if counted != n_bad:
                failures += 1
                print(f"FAIL {backend} {dt} count_bad_boxes: {counted}, NumPy counts {n_bad}")
            print(f"{backend} {dt}: {len(cases)} calls "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)

    if _module is not None and set(cupy_like) & set(args.backends.split(",")) and launched:
        registered = {n for names in _module.all_name_expressions().values() for n in names}
        missing = sorted(registered - launched)
        print(f"cupy kernels launched: {len(launched)} of {len(registered)} registered")
        if missing:
            failures += 1
            print("cupy kernels never launched:", ", ".join(missing))
    print("FAILED" if failures else "all calls matched the oracle")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
