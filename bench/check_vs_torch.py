"""Check a fastconv implementation against PyTorch/torchvision on many random cases.

Run with a Python that has torch + torchvision (CPU is enough) and fastconv importable::

    PYTHONPATH=/path/to/fastconv python bench/check_vs_torch.py --backend reference --n 300

``--backend reference`` calls :mod:`fastconv.reference` directly; any other name calls the
public API, ``fastconv.<op>(..., backend=NAME)``, with inputs of that backend's array type
(NumPy for ``cpu``; CuPy arrays for ``cupy``; numba device arrays for ``numba_cuda``).

Each op draws ``--n`` random configurations (the same ones for every dtype): asymmetric
stride/padding/dilation, non-square kernels, groups incl. depthwise, ``"same"``/``"valid"``,
output_padding, offset groups, masks, offsets pushing samples outside the image, boxes
partly or wholly outside, half-pixel corners, degenerate boxes, ``aligned``, every kind of
``sampling_ratio``, batch 0 and K = 0, non-contiguous/negative-stride inputs, both box
formats and, in some cases, NaN/Inf in the data.

Metric
------
For each output element ``err = |out - ref| / max(|ref|, 1)`` (absolute error for values
of magnitude <= 1, relative error above), and a case's error is the maximum over its
elements. Non-finite values must match exactly: NaN where torch has NaN and ±Inf with the
same sign where torch has ±Inf, otherwise the error is ``inf``. The shape must match, and
for the public API the dtype must be the input's. A case passes if its error is at most
1e-9 (float64) or 1e-4 (float32; torch computes in float32 there). Inputs must not be
written (checked for NumPy inputs).

Known, deliberate deviations from torch (not counted as failures)
---------------------------------------------------------------------
- ``conv2d`` with ``C_in = 0``: torch returns an ``(N, 0, H_out, W_out)`` array; the formula
  (and fastconv) gives ``(N, C_out, H_out, W_out)`` filled with the bias (or 0). Such cases
  are checked against that closed form instead of torch. torch raises for
  ``conv_transpose2d``/``deform_conv2d`` with ``C_in = 0``, so those are checked the same way.
- ``roi_align`` on the CPU: for a sample outside the image torchvision adds
  ``0 * input[b, c, 0, 0]``, so a NaN/Inf at pixel (0, 0) leaks into such bins; the contract
  (and torchvision's CUDA kernel) says such a sample is 0. The NaN/Inf cases therefore never
  put a non-finite value at pixel (0, 0).

Exit status is 1 if any case fails; the first failing configuration of each op and dtype
is printed in full, and ``--case I`` (with the same ``--seed``) reruns just that case.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback

import numpy as np

OPS = ("conv2d", "conv_transpose2d", "deform_conv2d", "roi_align", "roi_pool")
TOL = {"float64": 1e-9, "float32": 1e-4}


# --------------------------------------------------------------------------------------
# random data
# --------------------------------------------------------------------------------------


def _strided(rng, arr):
    """``arr`` as a non-contiguous or negative-stride view (same values), sometimes."""
    kind = rng.integers(0, 4)
    if arr.ndim < 2 or arr.size == 0 or kind == 0:
        return arr, "contiguous"
    if kind == 1:  # every other element of a twice-as-wide buffer
        big = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), dtype=arr.dtype)
        big[..., ::2] = arr
        return big[..., ::2], "strided"
    if kind == 2:  # negative strides
        flipped = np.ascontiguousarray(arr[..., ::-1, ::-1])
        return flipped[..., ::-1, ::-1], "negative-stride"
    return np.asfortranarray(arr), "fortran"


def _inject_nonfinite(rng, x, avoid_origin=False):
    """Put a few NaN/+Inf/-Inf into ``x`` (a float64 array, changed in place)."""
    if x.size == 0:
        return
    flat = x.reshape(-1)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, flat.size))
        if avoid_origin:
            idx = np.unravel_index(i, x.shape)
            if idx[-1] == 0 and idx[-2] == 0:
                continue
        flat[i] = rng.choice([np.nan, np.inf, -np.inf])


def gen_conv2d(rng):
    G = int(rng.choice([1, 1, 2, 3, 4]))
    depthwise = rng.random() < 0.15
    cin_g = 1 if depthwise else int(rng.integers(1, 4))
    cout_g = int(rng.integers(1, 3)) if depthwise else int(rng.integers(1, 4))
    if depthwise:
        G = int(rng.integers(2, 7))
    if rng.random() < 0.03:
        cin_g = 0  # C_in = 0
    C_in, C_out = G * cin_g, G * cout_g
    kH, kW = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    dH, dW = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    r = rng.random()
    if r < 0.15:
        padding = "same"
        sH = sW = 1
    elif r < 0.25:
        padding = "valid"
        sH, sW = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    else:
        padding = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        if rng.random() < 0.2:
            padding = padding[0]
        sH, sW = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    pH, pW = (0, 0) if isinstance(padding, str) else _pair(padding)
    effH, effW = dH * (kH - 1) + 1, dW * (kW - 1) + 1
    H = int(rng.integers(max(1, effH - 2 * pH), effH + 8))
    W = int(rng.integers(max(1, effW - 2 * pW), effW + 8))
    N = 0 if rng.random() < 0.05 else int(rng.integers(1, 4))
    x = rng.standard_normal((N, C_in, H, W))
    w = rng.standard_normal((C_out, cin_g, kH, kW))
    b = rng.standard_normal(C_out) if rng.random() < 0.5 else None
    nonfinite = rng.random() < 0.1
    if nonfinite:
        _inject_nonfinite(rng, x)
    args = dict(input=x, weight=w, bias=b)
    kw = dict(
        stride=_maybe_int(rng, sH, sW), padding=padding, dilation=_maybe_int(rng, dH, dW), groups=G
    )
    return args, kw, dict(nonfinite=nonfinite)


def gen_conv_transpose2d(rng):
    G = int(rng.choice([1, 1, 2, 3]))
    depthwise = rng.random() < 0.15
    if depthwise:
        G = int(rng.integers(2, 6))
    cin_g = 1 if depthwise else int(rng.integers(1, 4))
    cout_g = int(rng.integers(1, 4))
    if rng.random() < 0.03:
        cin_g = 0
    C_in = G * cin_g
    kH, kW = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    sH, sW = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dH, dW = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    H, W = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    while True:
        pH, pW = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        oH = int(rng.integers(0, max(sH, dH))) if rng.random() < 0.5 else 0
        oW = int(rng.integers(0, max(sW, dW))) if rng.random() < 0.5 else 0
        Ho = (H - 1) * sH - 2 * pH + dH * (kH - 1) + oH + 1
        Wo = (W - 1) * sW - 2 * pW + dW * (kW - 1) + oW + 1
        if Ho >= 1 and Wo >= 1:
            break
    N = 0 if rng.random() < 0.05 else int(rng.integers(1, 4))
    x = rng.standard_normal((N, C_in, H, W))
    w = rng.standard_normal((C_in, cout_g, kH, kW))
    b = rng.standard_normal(G * cout_g) if rng.random() < 0.5 else None
    nonfinite = rng.random() < 0.1
    if nonfinite:
        _inject_nonfinite(rng, x)
    args = dict(input=x, weight=w, bias=b)
    kw = dict(
        stride=_maybe_int(rng, sH, sW),
        padding=_maybe_int(rng, pH, pW),
        output_padding=_maybe_int(rng, oH, oW),
        groups=G,
        dilation=_maybe_int(rng, dH, dW),
    )
    return args, kw, dict(nonfinite=nonfinite)


def gen_deform_conv2d(rng):
    G = int(rng.choice([1, 1, 2, 3]))  # offset groups
    Gw = int(rng.choice([1, 1, 2]))  # weight groups
    c = int(rng.integers(1, 3))
    C_in = G * Gw * c
    if rng.random() < 0.03:
        C_in = 0
    C_w = C_in // Gw
    C_out = Gw * int(rng.integers(1, 4))
    kH, kW = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    sH, sW = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    pH, pW = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    dH, dW = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    effH, effW = dH * (kH - 1) + 1, dW * (kW - 1) + 1
    H = int(rng.integers(max(1, effH - 2 * pH), effH + 6))
    W = int(rng.integers(max(1, effW - 2 * pW), effW + 6))
    Ho = (H + 2 * pH - effH) // sH + 1
    Wo = (W + 2 * pW - effW) // sW + 1
    N = 0 if rng.random() < 0.05 else int(rng.integers(1, 3))
    x = rng.standard_normal((N, C_in, H, W))
    w = rng.standard_normal((C_out, C_w, kH, kW))
    b = rng.standard_normal(C_out) if rng.random() < 0.5 else None
    oshape = (N, 2 * G * kH * kW, Ho, Wo)
    kind = rng.choice(["small", "large", "integer", "half"])
    if kind == "small":
        off = rng.standard_normal(oshape)
    elif kind == "large":  # pushes many samples outside the image
        off = 3.0 * rng.standard_normal(oshape)
    elif kind == "integer":  # samples on pixel centres: weight-0 corners are still read
        off = rng.integers(-3, 4, oshape).astype(np.float64)
    else:
        off = rng.integers(-6, 7, oshape) * 0.5
    mkind = rng.choice(["none", "uniform", "normal"])
    if mkind == "none":
        mask = None
    elif mkind == "uniform":
        mask = rng.random((N, G * kH * kW, Ho, Wo))
    else:
        mask = rng.standard_normal((N, G * kH * kW, Ho, Wo))
    nonfinite = rng.random() < 0.1
    if nonfinite:
        _inject_nonfinite(rng, x)
        if mask is not None and rng.random() < 0.5:
            _inject_nonfinite(rng, mask)  # NaN offsets are undefined in torchvision: never
    args = dict(input=x, offset=off, weight=w, bias=b)
    kw = dict(
        stride=_maybe_int(rng, sH, sW),
        padding=_maybe_int(rng, pH, pW),
        dilation=_maybe_int(rng, dH, dW),
        mask=mask,
    )
    return args, kw, dict(nonfinite=nonfinite, offsets=str(kind), mask=str(mkind))


def _gen_boxes(rng, N, H, W, scale):
    """(K, 5) boxes in input coordinates (before spatial_scale), of many kinds."""
    K = 0 if rng.random() < 0.07 else int(rng.integers(1, 7))
    rows = []
    Hs, Ws = H / scale, W / scale  # image size in box coordinates
    for _ in range(K):
        kind = rng.choice(["inside", "partly", "outside", "half", "integer", "degenerate"])
        if kind == "inside":
            x1, x2 = np.sort(rng.uniform(0, Ws, 2))
            y1, y2 = np.sort(rng.uniform(0, Hs, 2))
        elif kind == "partly":
            x1, x2 = np.sort(rng.uniform(-0.5 * Ws, 1.5 * Ws, 2))
            y1, y2 = np.sort(rng.uniform(-0.5 * Hs, 1.5 * Hs, 2))
        elif kind == "outside":
            x1 = rng.uniform(1.05 * Ws + 2 / scale, 2 * Ws + 3 / scale)
            x2 = x1 + rng.uniform(0, Ws)
            y1, y2 = np.sort(rng.uniform(-Hs, 2 * Hs, 2))
            if rng.random() < 0.5:
                x1, x2 = -x2, -x1
        elif kind in ("half", "integer"):  # rounding ties and exact edges
            step = 0.5 if kind == "half" else 1.0
            x1, x2 = np.sort(rng.integers(-2, int(2 * W + 4), 2) * step / scale)
            y1, y2 = np.sort(rng.integers(-2, int(2 * H + 4), 2) * step / scale)
        else:  # zero size or x2 < x1
            x1, y1 = rng.uniform(-1, Ws + 1), rng.uniform(-1, Hs + 1)
            if rng.random() < 0.5:
                x2, y2 = x1, y1
            else:
                x2, y2 = x1 - rng.uniform(0, 3), y1 - rng.uniform(0, 3)
        rows.append([int(rng.integers(0, N)), x1, y1, x2, y2])
    return np.array(rows, dtype=np.float64).reshape(K, 5)


def _gen_roi_common(rng):
    N = int(rng.integers(1, 4))
    C = int(rng.integers(1, 5))
    if rng.random() < 0.03:
        C = 0
    H, W = int(rng.integers(1, 13)), int(rng.integers(1, 13))
    scale = float(rng.choice([1.0, 1.0, 0.5, 0.25, 1 / 16, 0.7, 1 / 3]))
    boxes = _gen_boxes(rng, N, H, W, scale)
    if boxes.shape[0] == 0 and rng.random() < 0.5:
        N = 0
    out = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    if rng.random() < 0.3:
        out = out[0]
    x = rng.standard_normal((N, C, H, W))
    nonfinite = rng.random() < 0.1
    if nonfinite:
        _inject_nonfinite(rng, x, avoid_origin=True)
    list_form = rng.random() < 0.25
    return x, boxes, out, scale, list_form, nonfinite


def _to_list(boxes, N):
    """(K, 5) -> list of N (L_n, 4) arrays (rows regrouped by batch index)."""
    return [boxes[boxes[:, 0] == n, 1:].copy() for n in range(N)]


def gen_roi_align(rng):
    x, boxes, out, scale, list_form, nonfinite = _gen_roi_common(rng)
    sampling_ratio = int(rng.choice([-1, 0, 1, 2, 3]))
    aligned = bool(rng.random() < 0.5)
    args = dict(input=x, boxes=boxes)
    kw = dict(output_size=out, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    return args, kw, dict(nonfinite=nonfinite, list_boxes=list_form)


def gen_roi_pool(rng):
    x, boxes, out, scale, list_form, nonfinite = _gen_roi_common(rng)
    args = dict(input=x, boxes=boxes)
    kw = dict(output_size=out, spatial_scale=scale)
    return args, kw, dict(nonfinite=nonfinite, list_boxes=list_form)


GEN = {
    "conv2d": gen_conv2d,
    "conv_transpose2d": gen_conv_transpose2d,
    "deform_conv2d": gen_deform_conv2d,
    "roi_align": gen_roi_align,
    "roi_pool": gen_roi_pool,
}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _maybe_int(rng, a, b):
    return a if a == b and rng.random() < 0.5 else (a, b)


# --------------------------------------------------------------------------------------
# running torch and fastconv
# --------------------------------------------------------------------------------------


def run_torch(op, args, kw, meta):
    import torch
    import torch.nn.functional as F
    import torchvision.ops as tvo

    def t(a):
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a))

    if op == "conv2d":
        r = F.conv2d(t(args["input"]), t(args["weight"]), t(args["bias"]), **kw)
    elif op == "conv_transpose2d":
        r = F.conv_transpose2d(t(args["input"]), t(args["weight"]), t(args["bias"]), **kw)
    elif op == "deform_conv2d":
        kw = dict(kw, mask=t(kw["mask"]))
        r = tvo.deform_conv2d(
            t(args["input"]), t(args["offset"]), t(args["weight"]), t(args["bias"]), **kw
        )
    else:
        boxes = args["boxes"]
        if meta.get("list_boxes") and args["input"].shape[0] > 0:  # torch rejects []
            boxes = [t(b) for b in _to_list(boxes, args["input"].shape[0])]
        else:
            boxes = t(boxes)
        fn = tvo.roi_align if op == "roi_align" else tvo.roi_pool
        r = fn(t(args["input"]), boxes, **kw)
    return r.numpy().astype(np.float64)


def closed_form_empty_channels(op, args, kw):
    """The result when C_in = 0 (torch cannot serve as the peer there): the bias or 0."""
    x, w, b = args["input"], args["weight"], args["bias"]
    N, _, H, W = x.shape
    if op == "conv_transpose2d":
        sH, sW = _pair(kw["stride"])
        pH, pW = _pair(kw["padding"])
        oH, oW = _pair(kw["output_padding"])
        dH, dW = _pair(kw["dilation"])
        kH, kW = w.shape[2:]
        C_out = w.shape[1] * kw["groups"]
        Ho = (H - 1) * sH - 2 * pH + dH * (kH - 1) + oH + 1
        Wo = (W - 1) * sW - 2 * pW + dW * (kW - 1) + oW + 1
    else:
        C_out, _, kH, kW = w.shape
        sH, sW = _pair(kw["stride"])
        dH, dW = _pair(kw["dilation"])
        pad = kw["padding"]
        if pad == "same":
            Ho, Wo = H, W
        else:
            pH, pW = (0, 0) if pad == "valid" else _pair(pad)
            Ho = (H + 2 * pH - dH * (kH - 1) - 1) // sH + 1
            Wo = (W + 2 * pW - dW * (kW - 1) - 1) // sW + 1
    out = np.zeros((N, C_out, Ho, Wo))
    if b is not None:
        out += np.asarray(b, dtype=np.float64).reshape(1, -1, 1, 1)
    return out


class Backend:
    """Calls one fastconv implementation on arrays of its own type."""

    def __init__(self, name):
        self.name = name
        if name == "reference":
            import fastconv.reference as ref

            self.module = ref
        else:
            import fastconv

            self.module = fastconv
        if name == "cupy":
            import cupy

            self.to_dev = cupy.asarray
            self.to_host = cupy.asnumpy
        elif name == "numba_cuda":
            from numba import cuda

            self.to_dev = cuda.to_device
            self.to_host = lambda a: a.copy_to_host()
        else:
            self.to_dev = lambda a: a
            self.to_host = np.asarray

    def __call__(self, op, args, kw, meta, rng):
        """Returns (result as NumPy, description of the layouts used)."""
        layouts = {}

        def dev(name, a):
            if a is None:
                return None
            if self.name in ("reference", "cpu"):
                a, layouts[name] = _strided(rng, a)
            return self.to_dev(a)

        call_args = {k: dev(k, v) for k, v in args.items() if k != "boxes"}
        call_kw = dict(kw)
        if "mask" in call_kw:
            call_kw["mask"] = dev("mask", call_kw["mask"])
        if "boxes" in args:
            boxes = args["boxes"]
            if meta.get("list_boxes"):
                call_args["boxes"] = [
                    self.to_dev(b) for b in _to_list(boxes, args["input"].shape[0])
                ]
            else:
                call_args["boxes"] = dev("boxes", boxes)
        fn = getattr(self.module, op)
        extra = {} if self.name == "reference" else {"backend": self.name}
        # positional in the documented order for the tensors, keywords for the rest
        order = {
            "conv2d": ("input", "weight", "bias"),
            "conv_transpose2d": ("input", "weight", "bias"),
            "deform_conv2d": ("input", "offset", "weight", "bias"),
            "roi_align": ("input", "boxes"),
            "roi_pool": ("input", "boxes"),
        }[op]
        before = {
            k: np.array(v, copy=True) for k, v in call_args.items() if isinstance(v, np.ndarray)
        }
        out = fn(*[call_args[k] for k in order], **call_kw, **extra)
        for k, v in before.items():
            if not np.array_equal(v, call_args[k], equal_nan=True):
                raise AssertionError(f"input {k!r} was written")
        return self.to_host(out), layouts


def compare(out, ref):
    """Max of |out - ref| / max(|ref|, 1); inf if shapes or non-finite patterns differ."""
    out = np.asarray(out, dtype=np.float64)
    if out.shape != ref.shape:
        return math.inf, f"shape {out.shape} != torch's {ref.shape}"
    if out.size == 0:
        return 0.0, ""
    if not np.array_equal(np.isnan(out), np.isnan(ref)):
        return math.inf, "NaN positions differ"
    ref_inf, out_inf = np.isinf(ref), np.isinf(out)
    if not np.array_equal(ref_inf, out_inf) or not np.array_equal(out[ref_inf], ref[ref_inf]):
        return math.inf, "Inf positions/signs differ"
    fin = np.isfinite(ref)
    if not fin.any():
        return 0.0, ""
    err = np.abs(out[fin] - ref[fin]) / np.maximum(np.abs(ref[fin]), 1.0)
    return float(err.max()), ""


def _describe(args, kw, meta, layouts=None):
    lines = []
    for k, v in args.items():
        lines.append(f"    {k}: {'None' if v is None else f'shape {v.shape}'}")
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            v = f"array shape {v.shape}"
        lines.append(f"    {k}={v!r}")
    for k, v in meta.items():
        lines.append(f"    [{k}] {v}")
    if layouts:
        lines.append(f"    [layouts] {layouts}")
    if "boxes" in args and args["boxes"].size:
        lines.append(
            "    boxes =\n" + np.array2string(args["boxes"], precision=17, max_line_width=200)
        )
    return "\n".join(lines)


def case_rng(seed, op, i):
    return np.random.default_rng([seed, OPS.index(op), i])


def run_case(backend, op, dtype, seed, i):
    rng = case_rng(seed, op, i)
    args, kw, meta = GEN[op](rng)
    # the same values in the dtype under test, for torch and fastconv alike
    cast = lambda a: None if a is None else np.asarray(a, dtype=dtype)  # noqa: E731
    args = {k: cast(v) for k, v in args.items()}
    if "mask" in kw:
        kw["mask"] = cast(kw["mask"])
    empty_channels = op != "roi_align" and op != "roi_pool" and args["input"].shape[1] == 0
    if empty_channels:
        ref = closed_form_empty_channels(op, args, kw)
    else:
        ref = run_torch(op, args, kw, meta)
    layouts = None
    try:
        out, layouts = backend(op, args, kw, meta, np.random.default_rng([seed, 99, i]))
    except Exception:  # a crash is a failure with a traceback
        return math.inf, "raised:\n" + traceback.format_exc(), args, kw, meta, layouts
    if backend.name != "reference" and np.dtype(out.dtype) != np.dtype(dtype):
        return math.inf, f"dtype {out.dtype} != {dtype}", args, kw, meta, layouts
    err, why = compare(out, ref)
    if empty_channels:
        why = (why + " " if why else "") + "(C_in = 0: checked against the bias)"
    return err, why, args, kw, meta, layouts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--backend", default="reference", choices=["reference", "cpu", "cupy", "numba_cuda"]
    )
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated, default all")
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--n", type=int, default=300, help="cases per op and dtype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", type=int, default=None, help="run only this case index")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args(argv)

    import warnings

    import torch

    warnings.filterwarnings("ignore", message="Using padding='same'")
    torch.set_num_threads(a.threads)
    backend = Backend(a.backend)
    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    for op in ops:
        if op not in OPS:
            p.error(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    dtypes = [d.strip() for d in a.dtypes.split(",")]
    cases = [a.case] if a.case is not None else range(a.n)

    print(
        f"fastconv backend {a.backend!r} vs torch {torch.__version__}, seed {a.seed}, "
        f"metric max |out-ref|/max(|ref|,1)"
    )
    rows, failures = [], []
    for op in ops:
        for dtype in dtypes:
            t0 = time.perf_counter()
            worst, n_fail, first = 0.0, 0, None
            for i in cases:
                err, why, args, kw, meta, layouts = run_case(backend, op, dtype, a.seed, i)
                if not (err <= TOL[dtype]):
                    n_fail += 1
                    if first is None:
                        first = (i, err, why, _describe(args, kw, meta, layouts))
                worst = max(worst, err)
            rows.append((op, dtype, len(cases), worst, n_fail, time.perf_counter() - t0))
            if first is not None:
                failures.append((op, dtype) + first)

    print(
        f"\n{'op':<18}{'dtype':<9}{'cases':>6}{'max err':>11}{'tol':>9}{'fails':>7}"
        f"{'time':>8}  result"
    )
    for op, dtype, n, worst, n_fail, dt in rows:
        print(
            f"{op:<18}{dtype:<9}{n:>6}{worst:>11.2e}{TOL[dtype]:>9.0e}{n_fail:>7}"
            f"{dt:>7.1f}s  {'PASS' if n_fail == 0 else 'FAIL'}"
        )
    for op, dtype, i, err, why, desc in failures:
        print(
            f"\nFIRST FAILURE {op} {dtype} case {i} (rerun: --ops {op} --dtypes {dtype} "
            f"--seed {a.seed} --case {i} --backend {a.backend}): err {err:.3e} {why}"
        )
        print(desc)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
