"""Public ``roi_align`` and ``roi_pool`` (torchvision's): validate, dispatch, return."""

from __future__ import annotations

from . import _args, _dispatch


def _prepare(input, boxes, backend, output_size, spatial_scale, check_boxes):
    call = _dispatch.prepare(backend, input=input)
    x = call.arrays["input"]
    spec = _args.roi_spec(x.shape, output_size, spatial_scale)
    if not isinstance(check_boxes, (bool, int)):
        raise TypeError(f"check_boxes must be a bool, got {check_boxes!r}")
    rois = _dispatch.prepare_boxes(call, boxes, x.shape[0], bool(check_boxes))
    return call, x, rois, spec


def roi_align(
    input,
    boxes,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    check_boxes=True,
    backend=None,
):
    """Bilinear RoIAlign (torchvision's ``roi_align``), as in Mask R-CNN.

    Each box is split into ``output_size`` bins; each bin is the mean of a
    grid of bilinear samples (``sampling_ratio`` per axis, or
    ``ceil(roi_size / output_size)`` when ``sampling_ratio <= 0``).
    ``aligned=True`` shifts the box by -0.5 pixel (pixel-centre model);
    without it the box size is clamped to at least 1. Samples more than one
    pixel outside the image count as 0; samples within one pixel of it take
    the edge value (replicate edge).

    Parameters
    ----------
    input : array, shape (N, C, H, W)
    boxes : array, shape (K, 5), or list of N arrays of shape (L_n, 4)
        Rows ``(batch_index, x1, y1, x2, y2)``, or per-image ``(x1, y1, x2, y2)``,
        in input-image coordinates; converted to the input's dtype.
    output_size : int or (int, int)
        ``(pooled_h, pooled_w)``.
    spatial_scale : float, default 1.0
        Multiplies the box coordinates (e.g. 1/16 for a stride-16 feature map).
    sampling_ratio : int, default -1
    aligned : bool, default False
    check_boxes : bool, default True, keyword-only
        Check that the coordinates are finite and the batch indices are
        integers in ``[0, N)``. On a GPU the boxes, in either format, are
        assembled there and the check is one small kernel whose 4-byte answer
        is copied back (a sync). Pass False only if the
        boxes are known to be valid. Without the check, a box whose batch index
        names no image (``trunc(b)`` outside ``[0, N)``, or NaN) gives zeros on
        every backend, never a read outside ``input``.
    backend : str, optional, keyword-only

    Returns
    -------
    out : array, shape (K, C, pooled_h, pooled_w)

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    >>> boxes = np.array([[0, 0.0, 0.0, 4.0, 4.0]])
    >>> fastconv.roi_align(x, boxes, 1, aligned=True)   # mean over the box
    array([[[[7.5]]]])
    """
    sampling_ratio = _args.sampling_ratio_arg(sampling_ratio)
    aligned = _args.aligned_arg(aligned)
    call, x, rois, spec = _prepare(input, boxes, backend, output_size, spatial_scale, check_boxes)
    if call.is_reference:
        from . import reference

        out = reference.roi_align(
            x, rois, spec["output_size"], spec["spatial_scale"], sampling_ratio, aligned
        )
        return call.finish_reference(out)
    return call.run("roi_align", x, rois, sampling_ratio=sampling_ratio, aligned=aligned, **spec)


def roi_pool(input, boxes, output_size, spatial_scale=1.0, *, check_boxes=True, backend=None):
    """Max RoIPool (torchvision's ``roi_pool``), as in Fast R-CNN.

    Box corners are ``round(coord * spatial_scale)`` rounding half away from
    zero (C's ``round``, not NumPy's half-to-even); the box is end-inclusive
    with size at least 1; bin ``p`` covers ``[floor(p*bin), ceil((p+1)*bin))``
    clipped to the image; the output is the maximum over the bin, or 0 for an
    empty bin.

    Parameters
    ----------
    input : array, shape (N, C, H, W)
    boxes : array, shape (K, 5), or list of N arrays of shape (L_n, 4)
    output_size : int or (int, int)
    spatial_scale : float, default 1.0
    check_boxes : bool, default True, keyword-only
        As in :func:`roi_align`.
    backend : str, optional, keyword-only

    Returns
    -------
    out : array, shape (K, C, pooled_h, pooled_w)

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> fastconv.roi_pool(x, [np.array([[0.0, 0.0, 3.0, 3.0]])], 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]], dtype=float32)
    """
    call, x, rois, spec = _prepare(input, boxes, backend, output_size, spatial_scale, check_boxes)
    if call.is_reference:
        from . import reference

        out = reference.roi_pool(x, rois, spec["output_size"], spec["spatial_scale"])
        return call.finish_reference(out)
    return call.run("roi_pool", x, rois, **spec)
