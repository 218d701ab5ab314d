"""Argument normalisation, validation and output-size arithmetic, once for every backend.

Everything here works on shapes, dtypes and Python scalars only, so it runs
before any kernel and never touches array data (the box checks in
``check_rois`` read a host copy of the boxes).  Messages name the argument
and the value that was given.
"""

from __future__ import annotations

import functools
import numbers
import operator

import numpy as np

Pair = tuple[int, int]

#: dtypes every backend accepts; float16 is added by the GPU backends.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
HALF = np.dtype(np.float16)


def _as_int(value, name: str) -> int:
    # bool is an int subclass, but stride=True is surely a mistake.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return operator.index(value)


def pair(value, name: str) -> Pair:
    """``int`` or a length-2 sequence of ints -> ``(int, int)``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, (tuple, list, np.ndarray)):
        items = list(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else list(value)
        if len(items) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return (_as_int(items[0], name), _as_int(items[1], name))
    v = _as_int(value, name)
    return (v, v)


def positive_pair(value, name: str) -> Pair:
    p = pair(value, name)
    if p[0] < 1 or p[1] < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return p


def nonnegative_pair(value, name: str) -> Pair:
    p = pair(value, name)
    if p[0] < 0 or p[1] < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return p


def positive_int(value, name: str) -> int:
    v = _as_int(value, name)
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return v


# ------------------------------------------------------------------- memoised specs

def memoised_spec(shapes: int):
    """Memoise a ``*_spec`` function whose first ``shapes`` arguments are array shapes.

    A spec depends only on shapes and Python scalars, so a repeated call (the same
    layer run again) can skip the validation arithmetic, a good part of the per-call
    host overhead.  The other arguments are keyed with their types (and a tuple's
    with its items' types): ``stride=True`` or ``stride=2.0`` must raise, not hit the
    entry of ``stride=1`` or ``2``, which compare equal.  Unhashable arguments (a list,
    an array) take the uncached path; errors are never cached; each caller gets its
    own copy of the result.
    """

    def decorate(spec):
        cached = functools.lru_cache(maxsize=4096)(lambda key, args: spec(*args))

        @functools.wraps(spec)
        def wrapper(*args):
            try:
                hash(args)
            except TypeError:  # a list or an array among the parameters
                return spec(*args)
            types = tuple([type(a) if type(a) is not tuple else tuple(map(type, a))
                           for a in args[shapes:]])
            return dict(cached((args[:shapes], types), args))

        wrapper.cache_clear = cached.cache_clear
        wrapper.cache_info = cached.cache_info
        return wrapper

    return decorate


# ----------------------------------------------------------------------------- arrays


def check_ndim(shape: tuple, ndim: int, name: str, layout: str) -> None:
    if len(shape) != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D {layout}, got an array of shape {tuple(shape)}"
        )


def common_float_dtype(arrays: dict, allow_half: bool, backend: str) -> np.dtype:
    """The one floating dtype shared by the named arrays (None entries skipped)."""
    dtype = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        dt = np.dtype(a.dtype)
        ok = dt in FLOAT_DTYPES or (allow_half and dt == HALF)
        if not ok:
            allowed = "float16, float32 or float64" if allow_half else "float32 or float64"
            extra = (
                "" if dt != HALF else f" (float16 runs only on the GPU backends, not {backend!r})"
            )
            raise TypeError(f"{name} must have dtype {allowed}, got {dt}{extra}")
        if dtype is None:
            dtype, first = dt, name
        elif dt != dtype:
            raise TypeError(
                f"{name} has dtype {dt} but {first} has dtype {dtype}; "
                "all arrays must have the same dtype"
            )
    return dtype


# ----------------------------------------------------------------------------- conv2d


def conv_out_size(size: int, k: int, s: int, p_total: int, d: int) -> int:
    return (size + p_total - d * (k - 1) - 1) // s + 1


@memoised_spec(shapes=3)
def conv2d_spec(x_shape, w_shape, b_shape, stride, padding, dilation, groups) -> dict:
    """Validate conv2d arguments; return the normalised keyword arguments for a backend."""
    check_ndim(x_shape, 4, "input", "(N, C_in, H, W)")
    check_ndim(w_shape, 4, "weight", "(C_out, C_in / groups, kH, kW)")
    groups = positive_int(groups, "groups")
    stride = positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    n, c_in, h, w = x_shape
    c_out, c_per_group, kh, kw = w_shape
    if kh < 1 or kw < 1:
        raise ValueError(f"weight must have a non-empty kernel, got shape {tuple(w_shape)}")
    if c_per_group * groups != c_in:
        raise ValueError(
            f"weight.shape[1] * groups must equal input channels: weight shape {tuple(w_shape)}, "
            f"groups={groups}, input shape {tuple(x_shape)} ({c_per_group} * {groups} != {c_in})"
        )
    if c_out % groups != 0:
        raise ValueError(
            f"weight.shape[0] (output channels, {c_out}) must be divisible by groups={groups}"
        )
    _check_bias(b_shape, c_out)

    if isinstance(padding, str):
        if padding == "valid":
            pad_hw = ((0, 0), (0, 0))
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            # total d(k-1); the odd extra pixel goes at the end (bottom/right), as in PyTorch.
            tot = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
            pad_hw = ((tot[0] // 2, tot[0] - tot[0] // 2), (tot[1] // 2, tot[1] - tot[1] // 2))
        else:
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        p = nonnegative_pair(padding, "padding")
        pad_hw = ((p[0], p[0]), (p[1], p[1]))

    h_out = conv_out_size(h, kh, stride[0], sum(pad_hw[0]), dilation[0])
    w_out = conv_out_size(w, kw, stride[1], sum(pad_hw[1]), dilation[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"output size is empty ({h_out} x {w_out}): input {h} x {w} is too small for kernel "
            f"{kh} x {kw} with padding={padding!r}, dilation={dilation}, stride={stride}"
        )
    return dict(
        stride=stride,
        padding=(pad_hw[0][0], pad_hw[1][0]),
        dilation=dilation,
        groups=groups,
        out_hw=(h_out, w_out),
    )


def _check_bias(b_shape, c_out: int) -> None:
    if b_shape is not None and tuple(b_shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},), got {tuple(b_shape)}")


# ----------------------------------------------------------------------------- conv_transpose2d


@memoised_spec(shapes=3)
def conv_transpose2d_spec(
    x_shape, w_shape, b_shape, stride, padding, output_padding, groups, dilation
) -> dict:
    check_ndim(x_shape, 4, "input", "(N, C_in, H, W)")
    check_ndim(w_shape, 4, "weight", "(C_in, C_out / groups, kH, kW)")
    groups = positive_int(groups, "groups")
    stride = positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose2d padding must be an int or a pair, got {padding!r}")
    padding = nonnegative_pair(padding, "padding")
    output_padding = nonnegative_pair(output_padding, "output_padding")
    n, c_in, h, w = x_shape
    w_c_in, c_out_per_group, kh, kw = w_shape
    if kh < 1 or kw < 1:
        raise ValueError(f"weight must have a non-empty kernel, got shape {tuple(w_shape)}")
    if w_c_in != c_in:
        raise ValueError(
            f"weight.shape[0] must equal input channels: weight shape {tuple(w_shape)}, "
            f"input shape {tuple(x_shape)}"
        )
    if c_in % groups != 0:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups={groups}")
    for axis in range(2):
        if output_padding[axis] >= max(stride[axis], dilation[axis]):
            raise ValueError(
                f"output_padding must be smaller than stride or dilation on each axis, got "
                f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
            )
    c_out = c_out_per_group * groups
    _check_bias(b_shape, c_out)
    out_hw = tuple(
        (size - 1) * stride[a] - 2 * padding[a] + dilation[a] * (k - 1) + output_padding[a] + 1
        for a, (size, k) in enumerate(((h, kh), (w, kw)))
    )
    if out_hw[0] < 1 or out_hw[1] < 1:
        raise ValueError(
            f"output size is empty ({out_hw[0]} x {out_hw[1]}) for input {h} x {w}, kernel "
            f"{kh} x {kw}, stride={stride}, padding={padding}, dilation={dilation}, "
            f"output_padding={output_padding}"
        )
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups, out_hw=out_hw)


# ----------------------------------------------------------------------------- deform_conv2d


@memoised_spec(shapes=5)
def deform_conv2d_spec(x_shape, off_shape, w_shape, b_shape, m_shape, stride, padding, dilation):
    check_ndim(x_shape, 4, "input", "(N, C_in, H, W)")
    check_ndim(off_shape, 4, "offset", "(N, 2 * offset_groups * kH * kW, H_out, W_out)")
    check_ndim(w_shape, 4, "weight", "(C_out, C_in / groups, kH, kW)")
    stride = positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    padding = nonnegative_pair(padding, "padding")
    n, c_in, h, w = x_shape
    c_out, c_per_group, kh, kw = w_shape
    if kh < 1 or kw < 1:
        raise ValueError(f"weight must have a non-empty kernel, got shape {tuple(w_shape)}")
    if c_in == 0 and c_per_group == 0:
        groups = 1  # no input channels: the output is the bias, whatever the grouping
    elif c_per_group < 1 or c_in % c_per_group != 0:
        raise ValueError(
            f"input channels ({c_in}) must be a multiple of weight.shape[1] ({c_per_group}); "
            f"weight shape {tuple(w_shape)}"
        )
    else:
        groups = c_in // c_per_group
    if c_out % groups != 0:
        raise ValueError(
            f"weight.shape[0] ({c_out}) must be divisible by the weight groups "
            f"(input channels / weight.shape[1] = {groups})"
        )
    _check_bias(b_shape, c_out)
    h_out = conv_out_size(h, kh, stride[0], 2 * padding[0], dilation[0])
    w_out = conv_out_size(w, kw, stride[1], 2 * padding[1], dilation[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"output size is empty ({h_out} x {w_out}): input {h} x {w} is too small for kernel "
            f"{kh} x {kw} with padding={padding}, dilation={dilation}, stride={stride}"
        )
    taps = kh * kw
    if off_shape[1] == 0 or off_shape[1] % (2 * taps) != 0:
        raise ValueError(
            f"offset.shape[1] must be a positive multiple of 2 * kH * kW = {2 * taps}, "
            f"got offset shape {tuple(off_shape)}"
        )
    offset_groups = off_shape[1] // (2 * taps)
    if c_in % offset_groups != 0:
        raise ValueError(
            f"input channels ({c_in}) must be divisible by the offset groups "
            f"(offset.shape[1] / (2 * kH * kW) = {offset_groups})"
        )
    expected = (n, 2 * offset_groups * taps, h_out, w_out)
    if tuple(off_shape) != expected:
        raise ValueError(f"offset must have shape {expected}, got {tuple(off_shape)}")
    if m_shape is not None:
        expected_m = (n, offset_groups * taps, h_out, w_out)
        if tuple(m_shape) != expected_m:
            raise ValueError(f"mask must have shape {expected_m}, got {tuple(m_shape)}")
    return dict(
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        offset_groups=offset_groups,
        out_hw=(h_out, w_out),
    )


# ----------------------------------------------------------------------------- RoI ops


@memoised_spec(shapes=1)
def roi_spec(x_shape, output_size, spatial_scale) -> dict:
    check_ndim(x_shape, 4, "input", "(N, C, H, W)")
    output_size = positive_pair(output_size, "output_size")
    if isinstance(spatial_scale, (bool, np.bool_)) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"spatial_scale must be a real number, got {spatial_scale!r}")
    spatial_scale = float(spatial_scale)
    if not np.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be finite and positive, got {spatial_scale!r}")
    return dict(output_size=output_size, spatial_scale=spatial_scale)


def sampling_ratio_arg(value) -> int:
    return _as_int(value, "sampling_ratio")


def aligned_arg(value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"aligned must be a bool, got {value!r}")
    return bool(value)


def check_box_shapes(boxes_shapes, is_list: bool) -> None:
    """``(K, 5)`` for an array of boxes; ``(L, 4)`` for each array of a list."""
    if is_list:
        for i, shape in enumerate(boxes_shapes):
            if len(shape) != 2 or shape[1] != 4:
                raise ValueError(
                    f"boxes[{i}] must have shape (L, 4) when boxes is a list, got {tuple(shape)}"
                )
    else:
        (shape,) = boxes_shapes
        if len(shape) != 2 or shape[1] != 5:
            raise ValueError(
                f"boxes must have shape (K, 5) with rows (batch_index, x1, y1, x2, y2), "
                f"or be a list of (L, 4) arrays; got shape {tuple(shape)}"
            )


def check_rois(rois_host: np.ndarray, batch: int) -> None:
    """Finite coordinates and integral batch indices in ``[0, batch)``."""
    if rois_host.shape[0] == 0:
        return
    if not np.isfinite(rois_host[:, 1:]).all():
        bad = int(np.flatnonzero(~np.isfinite(rois_host[:, 1:]).all(axis=1))[0])
        raise ValueError(f"boxes must be finite, row {bad} is {rois_host[bad].tolist()}")
    idx = rois_host[:, 0]
    ok = np.isfinite(idx) & (idx == np.floor(idx)) & (idx >= 0) & (idx < batch)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"boxes batch index must be an integer in [0, {batch}), row {bad} has "
            f"{rois_host[bad, 0].item()!r}"
        )
