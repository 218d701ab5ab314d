"""Random configurations of every op, shared by the tests and ``python -m fastconv check``.

A generator takes ``pick(lo, hi)`` (an inclusive integer choice: hypothesis's
``data.draw(integers(lo, hi))`` in the tests, so failures shrink; a NumPy
generator in ``check``) and a NumPy ``rng`` for the array values.  A case
holds the arrays (already in the dtype under test, sometimes as
non-contiguous or negative-stride views, sometimes with NaNs) and the
keyword arguments of the public call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPS = ("conv2d", "conv_transpose2d", "deform_conv2d", "roi_align", "roi_pool")

#: tolerance on ``max|out - ref| / max(1, max|ref|)`` per dtype
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4, np.dtype(np.float16): 1e-2}


@dataclass
class Case:
    op: str
    arrays: dict  # argument name -> array (or a list of arrays for boxes), None for absent
    params: dict  # the other keyword arguments of the public call

    def describe(self) -> str:
        def shape(a):
            if a is None:
                return None
            if isinstance(a, list):
                return [tuple(b.shape) for b in a]
            return f"{tuple(a.shape)} strides={a.strides}"

        arrays = {k: shape(v) for k, v in self.arrays.items()}
        return f"{self.op}(arrays={arrays}, params={self.params})"


def _layout(a: np.ndarray, pick) -> np.ndarray:
    """The same values as ``a``, as a contiguous, strided or negative-stride view."""
    how = pick(0, 3)
    if how == 1:  # every other element of a twice-as-wide buffer
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if how == 2:  # negative strides on the last axis (and the one before, if any)
        flip = (Ellipsis,) + (slice(None, None, -1),) * min(a.ndim, 2)
        return np.ascontiguousarray(a[flip])[flip]
    return a


def _data(rng, shape, dtype, pick, nan_ok=True, inf_ok=False) -> np.ndarray:
    """Random normal values; with ``nan_ok`` one NaN 1 time in 10, with ``inf_ok`` (the
    weights) one +-inf 1 time in 10 -- where a tap reaches the padding, the backends must
    agree with the oracle on multiplying its zero (NaN) or not."""
    a = rng.standard_normal(shape).astype(dtype)
    if nan_ok and a.size and pick(0, 9) == 0:
        a.flat[rng.integers(a.size)] = np.nan
    if inf_ok and a.size and pick(0, 9) == 0:
        a.flat[rng.integers(a.size)] = np.inf if pick(0, 1) else -np.inf
    return _layout(a, pick)


def with_infinite_taps(weight: np.ndarray) -> np.ndarray:
    """A copy of a conv weight with +inf at its first tap ``[0, 0, 0, 0]`` and -inf at its
    last ``[-1, -1, -1, -1]``: top-left and bottom-right taps, which reach the zero padding
    (or, transposed, the outside of the image) in some outputs.  The GPU kernel-path tests
    use it to check the backends' non-finite weight rule against the oracle."""
    weight = weight.copy()
    weight[0, 0, 0, 0] = np.inf
    weight[-1, -1, -1, -1] = -np.inf
    return weight


def conv2d_case(pick, rng, dtype) -> Case:
    groups, cpg, copg = pick(1, 3), pick(1, 3), pick(1, 3)
    kh, kw = pick(1, 4), pick(1, 4)
    dh, dw = pick(1, 3), pick(1, 3)
    mode = pick(0, 4)
    if mode == 0:
        stride, padding = (1, 1), "same"
        pads = (0, 0)
    else:
        stride = (pick(1, 3), pick(1, 3))
        pads = (0, 0) if mode == 1 else (pick(0, 3), pick(0, 3))
        padding = "valid" if mode == 1 else pads
    h = max(1, dh * (kh - 1) + 1 - 2 * pads[0]) + pick(0, 6)
    w = max(1, dw * (kw - 1) + 1 - 2 * pads[1]) + pick(0, 6)
    n = pick(0, 2)
    x = _data(rng, (n, groups * cpg, h, w), dtype, pick)
    weight = _data(rng, (groups * copg, cpg, kh, kw), dtype, pick, nan_ok=False, inf_ok=True)
    bias = _data(rng, (groups * copg,), dtype, pick, nan_ok=False) if pick(0, 1) else None
    params = dict(stride=stride, padding=padding, dilation=(dh, dw), groups=groups)
    return Case("conv2d", dict(input=x, weight=weight, bias=bias), params)


def conv_transpose2d_case(pick, rng, dtype) -> Case:
    groups, cipg, copg = pick(1, 3), pick(1, 3), pick(1, 3)
    kh, kw = pick(1, 4), pick(1, 4)
    stride, dilation = (pick(1, 3), pick(1, 3)), (pick(1, 3), pick(1, 3))
    padding = (pick(0, 3), pick(0, 3))
    out_pad = tuple(pick(0, max(stride[a], dilation[a]) - 1) for a in range(2))
    size = [pick(1, 5), pick(1, 5)]
    for a, k in enumerate((kh, kw)):
        while (size[a] - 1) * stride[a] - 2 * padding[a] + dilation[a] * (k - 1) + out_pad[a] < 0:
            size[a] += 1
    n = pick(0, 2)
    x = _data(rng, (n, groups * cipg, *size), dtype, pick)
    weight = _data(rng, (groups * cipg, copg, kh, kw), dtype, pick, nan_ok=False, inf_ok=True)
    bias = _data(rng, (groups * copg,), dtype, pick, nan_ok=False) if pick(0, 1) else None
    params = dict(
        stride=stride, padding=padding, output_padding=out_pad, groups=groups, dilation=dilation
    )
    return Case("conv_transpose2d", dict(input=x, weight=weight, bias=bias), params)


def deform_conv2d_case(pick, rng, dtype) -> Case:
    groups, offset_groups = pick(1, 2), pick(1, 2)
    c_in = groups * offset_groups * pick(1, 2)
    c_out = groups * pick(1, 2)
    kh, kw = pick(1, 3), pick(1, 3)
    stride, dilation = (pick(1, 2), pick(1, 2)), (pick(1, 2), pick(1, 2))
    padding = (pick(0, 2), pick(0, 2))
    h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]) + pick(0, 5)
    w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]) + pick(0, 5)
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    n = pick(0, 2)
    x = _data(rng, (n, c_in, h, w), dtype, pick)
    # offsets: small, large (many samples fall outside), or whole/half pixels (exact corners, edges)
    scale = (0.5, 2.0, 4.0)[pick(0, 2)]
    offset = rng.standard_normal((n, 2 * offset_groups * kh * kw, h_out, w_out)) * scale
    if pick(0, 3) == 0:
        offset = np.round(offset * 2) / 2
    offset = _layout(offset.astype(dtype), pick)
    mask = None
    if pick(0, 1):
        mask = rng.uniform(0, 1, (n, offset_groups * kh * kw, h_out, w_out))
        mask = _layout(mask.astype(dtype), pick)
    weight = _data(rng, (c_out, c_in // groups, kh, kw), dtype, pick, nan_ok=False, inf_ok=True)
    bias = _data(rng, (c_out,), dtype, pick, nan_ok=False) if pick(0, 1) else None
    params = dict(stride=stride, padding=padding, dilation=dilation)
    arrays = dict(input=x, offset=offset, weight=weight, bias=bias, mask=mask)
    return Case("deform_conv2d", arrays, params)


def _boxes(pick, rng, n, h, w, scale, dtype):
    """Boxes partly/wholly outside the image, half-pixel corners, degenerate boxes; both formats."""
    k = pick(0, 6) if n else 0
    span_x, span_y = (w + 4) / scale, (h + 4) / scale
    xy1 = rng.uniform(-2 / scale, [span_x, span_y], (k, 2))
    size = rng.uniform(0, [span_x, span_y], (k, 2))
    kind = pick(0, 3)
    if kind == 1:  # half-pixel (and whole-pixel) corners: ties for rounding
        xy1 = np.round(xy1 * scale * 2) / 2 / scale
        size = np.round(size * scale * 2) / 2 / scale
    elif kind == 2:  # degenerate boxes
        size[:, pick(0, 1)] = 0
    coords = np.concatenate([xy1, xy1 + size], axis=1)
    batch = rng.integers(0, n, k) if n else np.zeros(0, np.int64)
    if pick(0, 1):  # list of per-image (L, 4) arrays
        return [coords[batch == i].astype(dtype) for i in range(n)]
    return np.concatenate([batch[:, None].astype(np.float64), coords], axis=1).astype(dtype)


def _roi_common(pick, rng, dtype):
    n = pick(0, 2)
    c, h, w = pick(1, 3), pick(1, 8), pick(1, 8)
    scale = (1.0, 0.5, 0.25, 0.0625)[pick(0, 3)]
    x = _data(rng, (n, c, h, w), dtype, pick)
    boxes = _boxes(pick, rng, n, h, w, scale, dtype)
    return x, boxes, (pick(1, 4), pick(1, 4)), scale


def roi_align_case(pick, rng, dtype) -> Case:
    x, boxes, out, scale = _roi_common(pick, rng, dtype)
    params = dict(
        output_size=out, spatial_scale=scale, sampling_ratio=pick(-1, 3), aligned=bool(pick(0, 1))
    )
    return Case("roi_align", dict(input=x, boxes=boxes), params)


def roi_pool_case(pick, rng, dtype) -> Case:
    x, boxes, out, scale = _roi_common(pick, rng, dtype)
    return Case("roi_pool", dict(input=x, boxes=boxes), dict(output_size=out, spatial_scale=scale))


def boxes_with_every_defect(rng, dtype, batch: int, good: int = 300):
    """``(K, 5)`` boxes: ``good`` valid rows (more than one 256-thread block of the GPU box
    check) with every kind of bad row mixed in, and the number of bad rows, counted by NumPy."""
    rows = np.concatenate([rng.integers(0, batch, (good, 1)), rng.uniform(-5, 40, (good, 4))],
                          axis=1)
    bad = [[0, np.nan, 1, 2, 3], [1, 0, np.inf, 2, 3], [0, 0, 1, -np.inf, 3],
           [0.5, 0, 1, 2, 3], [-1, 0, 1, 2, 3], [batch, 0, 1, 2, 3], [np.nan, 0, 1, 2, 3],
           [np.inf, 0, 1, 2, 3], [-np.inf, 0, 1, 2, 3], [1e30, 0, 1, 2, 3]]
    with np.errstate(over="ignore"):  # 1e30 is inf in float16: still a bad row
        rows = np.concatenate([rows, np.array(bad)]).astype(dtype)
    rows = rows[rng.permutation(len(rows))]
    coords_ok = np.isfinite(rows[:, 1:].astype(np.float64)).all(axis=1)
    idx = rows[:, 0].astype(np.float64)
    with np.errstate(invalid="ignore"):
        idx_ok = np.isfinite(idx) & (idx == np.floor(idx)) & (idx >= 0) & (idx < batch)
    return rows, int((~(coords_ok & idx_ok)).sum())


def boxes_naming_no_image(rng, dtype, batch: int, good: int = 40):
    """``(K, 5)`` boxes with finite coordinates, some of whose batch indices name no image
    (``trunc(b)`` outside ``[0, batch)``, or NaN), and the mask of the rows that do.

    The good rows include fractional indices in ``(-1, 0)`` and ``(batch - 1, batch)``,
    which truncate to an image.  With ``check_boxes=False`` the ops give zeros for the
    other rows (what :func:`fastconv.reference.has_image` says).
    """
    index = np.concatenate([rng.integers(0, batch, good - 2), [-0.5, batch - 0.25]])
    bad = [batch, batch + 0.5, -1, -3.5, 1e9, -1e9, np.nan, np.inf, -np.inf]
    index = np.concatenate([index, bad])
    coords = rng.uniform(-3, 14, (len(index), 4))
    rows = np.concatenate([index[:, None], coords], axis=1).astype(dtype)
    rows = rows[rng.permutation(len(rows))]
    has_image = np.array([-1 < b < batch for b in rows[:, 0].astype(np.float64)])
    return rows, has_image


def check_boxes_naming_no_image(op, backend, dtype, **params):
    """With ``check_boxes=False``, boxes whose batch index names no image give zeros and
    the others what they give when checked (their index truncated); on ``backend``."""
    import fastconv

    rng = np.random.default_rng(17)
    x = rng.standard_normal((3, 5, 11, 13)).astype(dtype)
    boxes, has_image = boxes_naming_no_image(rng, dtype, batch=3)
    before = boxes.copy()
    fn = getattr(fastconv, op)

    def call(b, **kw):
        out = fn(to_backend(x, backend), to_backend(b, backend), (2, 3), 0.5, backend=backend,
                 **params, **kw)
        return to_host(out)

    got = call(boxes, check_boxes=False)
    np.testing.assert_array_equal(boxes, before)  # the caller's boxes are not touched
    assert (got[~has_image] == 0).all()
    good = boxes[has_image].copy()
    good[:, 0] = np.trunc(good[:, 0])
    np.testing.assert_allclose(got[has_image], call(good), rtol=1e-6, atol=1e-6)
    ref = getattr(fastconv.reference, op)(x, boxes, (2, 3), 0.5, **params)
    assert (ref[~has_image] == 0).all()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


GENERATORS = {
    "conv2d": conv2d_case,
    "conv_transpose2d": conv_transpose2d_case,
    "deform_conv2d": deform_conv2d_case,
    "roi_align": roi_align_case,
    "roi_pool": roi_pool_case,
}


# ----------------------------------------------------------------------------- running a case


def to_backend(a, backend: str):
    """A host test array (or list of them) as the array type that ``backend`` dispatches on."""
    from ._dispatch import BACKENDS

    if a is None or not BACKENDS[backend][1]:  # host backends take the numpy arrays
        return a
    if isinstance(a, list):
        return [to_backend(b, backend) for b in a]
    if backend == "cupy":
        import cupy

        base = cupy.asarray(np.ascontiguousarray(a))
    else:
        from numba import cuda

        base = cuda.to_device(np.ascontiguousarray(a))
    return base


def to_host(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    return a.get()


def oracle_output(case: Case) -> np.ndarray:
    """The float64 oracle on the same arrays the backend sees.

    The arrays go in with their dtype: the oracle computes data in float64 but
    box geometry in the input's precision, as torchvision does.
    """
    from . import reference

    return getattr(reference, case.op)(**case.arrays, **case.params)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """``max|out - ref| / max(1, max|ref|)`` over finite values; NaN/Inf must coincide."""
    out = np.asarray(out, np.float64)
    if out.shape != ref.shape:
        return float("inf")
    if out.size == 0:
        return 0.0
    finite = np.isfinite(ref)
    if not np.array_equal(np.isnan(out), np.isnan(ref)) or not np.array_equal(
        out[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)]
    ):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(1.0, float(np.abs(ref[finite]).max()))
    return float(np.abs(out[finite] - ref[finite]).max() / scale)


def run_case(case: Case, backend: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Run ``case`` on ``backend``; return (relative error, output on the host, oracle)."""
    import fastconv

    arrays = {k: to_backend(v, backend) for k, v in case.arrays.items()}
    out = to_host(getattr(fastconv, case.op)(**arrays, **case.params, backend=backend))
    ref = oracle_output(case)
    return relative_error(out, ref), out, ref
