"""Public ``conv2d`` and ``conv_transpose2d``: validate, dispatch, return."""

from __future__ import annotations

from . import _args, _dispatch


def _shape(a):
    return None if a is None else tuple(a.shape)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """2-D cross-correlation (PyTorch's ``conv2d``): dilated, strided, grouped, depthwise.

    ``out[n, k, y, x] = bias[k] + sum_{c, i, j} weight[k, c, i, j] *
    input[n, g*C_in/groups + c, y*sH - pH + i*dH, x*sW - pW + j*dW]`` with zeros
    outside the image, ``g = k // (C_out / groups)``.

    Parameters
    ----------
    input : array, shape (N, C_in, H, W)
        numpy (or array-like), cupy, numba device array, or any
        ``__cuda_array_interface__`` object (e.g. a PyTorch CUDA tensor).
    weight : array, shape (C_out, C_in / groups, kH, kW)
    bias : array, shape (C_out,), optional
    stride : int or (int, int), default 1
    padding : int, (int, int), "same" or "valid", default 0
        ``"same"`` needs stride 1 and pads ``dilation * (k - 1)`` in total,
        the odd pixel at the bottom/right (as PyTorch does).
    dilation : int or (int, int), default 1
        Spacing between kernel taps (atrous convolution).
    groups : int, default 1
        ``groups == C_in == C_out`` is a depthwise convolution.
    backend : {"cpu", "cupy", "numba_cuda", "reference"}, optional, keyword-only
        Chosen from the array type when omitted.

    Returns
    -------
    out : array, shape (N, C_out, H_out, W_out)
        Same array type, dtype and device as ``input``;
        ``H_out = (H + pad_top + pad_bottom - dH*(kH - 1) - 1) // sH + 1``.

    Raises
    ------
    ValueError
        Bad shapes or values (e.g. channels not matching ``groups``,
        non-positive stride, ``"same"`` with stride > 1, empty output).
    TypeError
        Non-float or mixed dtypes, mixed host/GPU arrays, bad argument types.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 2, 8, 8), np.float32)
    >>> w = np.ones((4, 2, 3, 3), np.float32)
    >>> fastconv.conv2d(x, w, padding=2, dilation=2).shape
    (1, 4, 8, 8)
    >>> float(fastconv.conv2d(x, w[:, :1], groups=2, padding="same")[0, 0, 4, 4])
    9.0
    """
    call = _dispatch.prepare(backend, input=input, weight=weight, bias=bias)
    x, w, b = call.arrays["input"], call.arrays["weight"], call.arrays["bias"]
    spec = _args.conv2d_spec(x.shape, w.shape, _shape(b), stride, padding, dilation, groups)
    if call.is_reference:
        from . import reference

        return call.finish_reference(reference.conv2d(x, w, b, stride, padding, dilation, groups))
    return call.run("conv2d", x, w, b, **spec)


def conv_transpose2d(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    *,
    backend=None,
):
    """2-D transposed convolution (PyTorch's ``conv_transpose2d``), the adjoint of ``conv2d``.

    Each input pixel ``in[n, c, iy, ix]`` times ``weight[c, k, i, j]`` is added at
    ``y = iy*sH - pH + i*dH``, ``x = ix*sW - pW + j*dW`` of output channel
    ``g*C_out/groups + k``. Note PyTorch's argument order: ``groups`` before
    ``dilation``.

    Parameters
    ----------
    input : array, shape (N, C_in, H, W)
    weight : array, shape (C_in, C_out / groups, kH, kW)
    bias : array, shape (C_out,), optional
    stride, padding, dilation : int or (int, int)
    output_padding : int or (int, int), default 0
        Extra rows/columns at the bottom/right; must be smaller than
        ``max(stride, dilation)`` on each axis.
    groups : int, default 1
    backend : str, optional, keyword-only

    Returns
    -------
    out : array, shape (N, C_out, H_out, W_out)
        ``H_out = (H - 1)*sH - 2*pH + dH*(kH - 1) + output_padding + 1``.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 3, 4, 4), np.float32)
    >>> w = np.ones((3, 2, 4, 4), np.float32)
    >>> fastconv.conv_transpose2d(x, w, stride=2, padding=1).shape   # 2x upsampling
    (1, 2, 8, 8)
    """
    call = _dispatch.prepare(backend, input=input, weight=weight, bias=bias)
    x, w, b = call.arrays["input"], call.arrays["weight"], call.arrays["bias"]
    spec = _args.conv_transpose2d_spec(
        x.shape, w.shape, _shape(b), stride, padding, output_padding, groups, dilation
    )
    if call.is_reference:
        from . import reference

        out = reference.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
        return call.finish_reference(out)
    return call.run("conv_transpose2d", x, w, b, **spec)
