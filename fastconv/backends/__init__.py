"""Backends: one sub-package per way of running the ops.

Every backend package (``cpu``, ``numba_cuda``, ``cupy``) exposes the same five
functions with the same names as the public API.  The public wrappers in
``fastconv.conv``, ``fastconv.deform`` and ``fastconv.roi`` have already
validated and normalised every argument, so a backend function may assume:

* arrays are C-contiguous, of the backend's native array type
  (``numpy.ndarray`` for ``cpu``, ``cupy.ndarray`` for ``cupy``, a numba
  ``DeviceNDArray`` for ``numba_cuda``), all of one floating dtype
  (float32/float64; float16 too on ``cupy``), on one device, and are never
  written to;
* pairs are tuples of two Python ints ``(along H, along W)``;
* the output spatial size ``out_hw`` has been computed (and is >= 1), and
  batch / channel / box counts may be 0;
* the backend allocates and returns the output (same dtype as ``x``).

Signatures (all arguments are passed by keyword except the arrays)::

    conv2d(x, weight, bias, *, stride, padding, dilation, groups, out_hw)
        x (N, C_in, H, W), weight (C_out, C_in // groups, kH, kW),
        bias (C_out,) or None; padding = (top, left) (bottom/right are
        implied by out_hw, "same" may be asymmetric).
        -> (N, C_out, H_out, W_out)

    conv_transpose2d(x, weight, bias, *, stride, padding, dilation, groups, out_hw)
        x (N, C_in, H, W), weight (C_in, C_out // groups, kH, kW);
        input pixel (iy, ix) and tap (i, j) land at
        y = iy*sH - pH + i*dH, x = ix*sW - pW + j*dW (dropped if outside
        [0, out_hw)).  -> (N, C_out, H_out, W_out)

    deform_conv2d(x, offset, weight, bias, mask, *, stride, padding, dilation,
                  groups, offset_groups, out_hw)
        offset (N, 2*offset_groups*kH*kW, H_out, W_out), mask None or
        (N, offset_groups*kH*kW, H_out, W_out); weight (C_out, C_in // groups, kH, kW).
        -> (N, C_out, H_out, W_out)

    roi_align(x, rois, *, output_size, spatial_scale, sampling_ratio, aligned)
        rois (K, 5) in x's dtype, rows (batch_index, x1, y1, x2, y2), checked
        (finite, integral batch index in [0, N)) unless check_boxes=False; then a
        row whose batch index truncates to no image (or is NaN) must give zeros.
        -> (K, C, pooled_h, pooled_w)

    roi_pool(x, rois, *, output_size, spatial_scale)
        -> (K, C, pooled_h, pooled_w)

Besides the five ops, each backend package's ``__init__`` provides the array
plumbing that ``fastconv._dispatch`` uses (GPU backends must import their GPU
library lazily, inside these functions, so ``import fastconv`` stays light)::

    check_available() -> None
        raise ``fastconv.BackendUnavailableError`` with a message that says what
        to install (or that no GPU was found) when the backend cannot run.
    as_native(obj) -> native array
        zero-copy view of an accepted array (numpy/array-like for ``cpu``; any
        object with ``__cuda_array_interface__`` -- cupy, numba device arrays,
        PyTorch CUDA tensors -- for the GPU backends).
    ascontiguous(a) -> native C-contiguous array (a copy on the same device
        when ``a`` is not contiguous; ``a`` itself otherwise).
    device_id(a) -> int | None   (None on the host)
    use_device(device_id) -> the context manager every op runs in: it makes that
        device current (GPU backends); the cpu backend's serialises launches where
        numba's threading layer is not thread-safe (workqueue)
    to_host(a) -> numpy.ndarray  (used for the box checks)

and the RoI boxes' check (cpu and the GPU backends; a backend without it has the
boxes checked by NumPy on the host)::

    count_bad_boxes(rois, batch) -> int   (rows failing the check_boxes test)

and the GPU backends the boxes' assembly on the device::

    stack_boxes(items, is_list, dtype) -> (K, 5) native array in dtype, from the
        list form's (L_n, 4) parts (row batch index n) or one (K, 5) array

GPU work is launched on the caller's current stream: CuPy's current stream,
and for ``numba_cuda`` ``cuda.external_stream(<cupy current stream>)`` when
CuPy is already imported, else numba's default stream.

Semantics: ``shared/DESIGN.md`` ("The semantic contract") and the oracle in
``fastconv.reference``.
"""
