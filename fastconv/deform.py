"""Public ``deform_conv2d`` (torchvision's DCNv1/DCNv2): validate, dispatch, return."""

from __future__ import annotations

from . import _args, _dispatch
from .conv import _shape


def deform_conv2d(
    input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None, *, backend=None
):
    """Deformable 2-D convolution (torchvision's ``deform_conv2d``), DCNv1 and DCNv2.

    Tap ``t = i*kW + j`` of offset group ``g`` samples the input bilinearly at
    ``(y*sH - pH + i*dH + dy, x*sW - pW + j*dW + dx)`` where ``dy, dx`` are
    ``offset[n, 2*(g*kH*kW + t)]`` and ``offset[n, 2*(g*kH*kW + t) + 1]`` at
    ``(y, x)``; the sample is multiplied by ``mask[n, g*kH*kW + t, y, x]`` when a
    mask is given (DCNv2). Bilinear sampling uses zero padding: a point with
    ``py <= -1``, ``py >= H``, ``px <= -1`` or ``px >= W`` is 0, otherwise only
    corners inside the image contribute.

    Parameters
    ----------
    input : array, shape (N, C_in, H, W)
    offset : array, shape (N, 2*G*kH*kW, H_out, W_out)
        ``G`` offset groups, ``C_in % G == 0``.
    weight : array, shape (C_out, C_in / groups, kH, kW)
        The weight groups are ``C_in / weight.shape[1]``.
    bias : array, shape (C_out,), optional
    stride, padding, dilation : int or (int, int)
    mask : array, shape (N, G*kH*kW, H_out, W_out), optional
        Modulation (DCNv2); omitted for DCNv1.
    backend : str, optional, keyword-only

    Returns
    -------
    out : array, shape (N, C_out, H_out, W_out)

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.random.default_rng(0).normal(size=(1, 4, 6, 6)).astype(np.float32)
    >>> w = np.ones((2, 4, 3, 3), np.float32)
    >>> off = np.zeros((1, 18, 6, 6), np.float32)   # zero offsets = plain conv2d
    >>> np.allclose(fastconv.deform_conv2d(x, off, w, padding=1),
    ...             fastconv.conv2d(x, w, padding=1), atol=1e-5)
    True
    """
    call = _dispatch.prepare(
        backend, input=input, offset=offset, weight=weight, bias=bias, mask=mask
    )
    a = call.arrays
    x, off, w, b, m = a["input"], a["offset"], a["weight"], a["bias"], a["mask"]
    spec = _args.deform_conv2d_spec(
        x.shape, off.shape, w.shape, _shape(b), _shape(m), stride, padding, dilation
    )
    if call.is_reference:
        from . import reference

        out = reference.deform_conv2d(x, off, w, b, stride, padding, dilation, m)
        return call.finish_reference(out)
    return call.run("deform_conv2d", x, off, w, b, m, **spec)
