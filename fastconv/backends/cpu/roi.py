"""CPU ``roi_align`` and ``roi_pool``: separable per-RoI passes over channels-last rows.

Two paths per op, chosen by an estimate of the work (:func:`_use_channels_last`):

* **channels-last** (the fast path for detection heads, many RoIs): the images
  the boxes refer to are transposed once to channels-last ``(n_used, H*W*C)``.
  Then ``prange`` over RoIs; both ops use that their sampling grid is
  *separable*:

  - roi_align: the sample columns' clamp rule, corners and weights are
    computed once per RoI (:func:`._bilinear.clamp_axis`); per bin row, the
    bin's sample rows are interpolated vertically into one buffer
    ``vb[x, c] = sum_rows (hy*X[y_low, x, c] + ly*X[y_high, x, c])`` over the
    RoI's column range (long contiguous vectorised loops), then each bin is
    ``sum_cols ((hx/count)*vb[x_low, c] + (lx/count)*vb[x_high, c])`` (the division
    by the sample count folded into the column weights).  This reads a
    feature row segment once per sample row instead of once per sample corner,
    and sums torchvision's corner terms factored and in another order (equal up
    to rounding).
  - roi_pool: per bin row, the column-wise max over the bin's rows across the
    RoI's column range, then per bin the max over its columns.

  A RoI's bins are produced channels-last in a small buffer and transposed
  into ``out[k]`` (``(C, bins)``) at the end with 8 x 8 register transposes
  (:func:`_transpose8`); storing them straight into the ``(C, bins)`` layout
  strides across cache lines and measured slower, and LLVM does not
  vectorise a scalar transpose.  Outputs of 8 MiB and more (a detection head's
  25.7 MB) are written with non-temporal stores (:func:`_stream_copy`): the
  output is far larger than the caches, and streaming it skips reading every
  line before it is overwritten.  roi_align's row operations are one explicit
  64-byte vector loop each (:func:`_axpby`), which beat the auto-vectorised
  loops (256-bit, runtime alias checks on every short call); for roi_pool's
  max loops it did not, so they stay plain loops.  (Blocking the channels so
  one block of the maps stays in L2 was measured too; it lost, by shortening
  the vectorised loops.)

* **planar** (few RoIs on a large map, where the transpose would dominate):
  ``prange`` over RoIs, each channel plane read in place.  roi_align
  precomputes per RoI the samples' corner indices and weights once
  (torchvision's ``pre_calc``) with :func:`._bilinear.bilinear_clamp`;
  roi_pool runs the same separable max as its channels-last path, along the
  plane's rows.

Both follow torchvision's CPU kernels' geometry exactly (box start/size, bin
size, sample positions, ``ceil`` adaptive grid, C rounding of RoIPool corners,
all in the input's dtype and operation order); roi_align's sums and its
division by ``count`` agree with torchvision's up to rounding.  NaN data propagates
like torchvision: a roi_align sample inside the image reads all four corners
(a NaN corner gives NaN even at weight 0); a sample outside contributes
exactly 0 (torchvision's CPU kernel multiplies pixel (0, 0) by 0 there, its
CUDA kernel adds 0).  roi_pool keeps torchvision's ``v > max`` update from
``-FLT_MAX``, so NaNs are skipped (an all-NaN bin gives -FLT_MAX), and an
empty bin is 0.
"""

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._bilinear import bilinear_clamp, clamp_axis
from ._config import EXACT_JIT_OPTIONS, SERIAL_JIT_OPTIONS, parallel_kernel

_FLT_MAX = float(np.finfo(np.float32).max)
# Box coordinates are clamped to this magnitude before conversion to an integer
# (roi_pool), so absurd but finite boxes stay defined (they are clipped to the image).
_COORD_LIMIT = 1e15


# --------------------------------------------------------------------------- helpers


def count_bad_boxes(rois, batch):
    """How many rows of the ``(K, 5)`` float boxes ``rois`` have a non-finite coordinate
    or a batch index that is not an integer in ``[0, batch)``.

    The ``check_boxes`` test in one pass (the public wrapper words the error with
    ``_args.check_rois`` only when this finds a bad row); it compares what the kernels
    see, the boxes in the input's dtype, exactly as the GPU backends' check does.
    float16 boxes (the GPU backends' dtype, checked here when they come through the
    host) are widened first, which changes no value.
    """
    if rois.dtype not in (np.float32, np.float64):
        rois = rois.astype(np.float64)
    return _count_bad_boxes(rois, batch)


@numba.njit(**EXACT_JIT_OPTIONS)
def _count_bad_boxes(rois, batch):
    bad = 0
    for k in range(rois.shape[0]):
        n = rois[k, 0]
        # the range first: NaN and +-inf fail it, so the truncation only sees [0, batch)
        ok = n >= 0 and n < batch and np.trunc(n) == n
        for j in range(1, 5):
            ok = ok and np.isfinite(rois[k, j])
        if not ok:
            bad += 1
    return bad


@numba.njit(**EXACT_JIT_OPTIONS)
def _scan_boxes(rois, n_b, h, w, scale, pooled_h, pooled_w, sampling_ratio, pool):
    """One pass over the boxes before a launch (it replaced five NumPy passes, about
    10 us of a small call's host time).  Returns

    * ``missing``: rows whose batch index names no image (``trunc(b)`` outside
      ``[0, n_b)``, or NaN); only possible with ``check_boxes=False``.  The kernels
      read such rows as image 0 (:func:`_launch_boxes`);
    * ``idx``, ``slot``: the images the boxes refer to (sorted), and each image's
      slot among them (-1 for the others), for the channels-last copy;
    * ``reads``: the feature reads per channel summed over the boxes, the cost
      estimate of :func:`_use_channels_last`.  roi_pool: each box's area clipped
      to the image; roi_align: 4 corners per sample, with the adaptive grid's mean
      sample count worked out from the box sizes (in float64: an estimate only).
    """
    used = np.zeros(n_b, np.bool_)
    missing = 0
    n_rois = rois.shape[0]
    sx = abs(scale)
    total = 0.0
    for k in range(n_rois):
        b = rois[k, 0]
        if b > -1 and b < n_b:
            used[int(b)] = True
        else:
            missing += 1
            used[0] = True
        bw = abs(np.float64(rois[k, 3]) - np.float64(rois[k, 1])) * sx
        bh = abs(np.float64(rois[k, 4]) - np.float64(rois[k, 2])) * sx
        if pool:
            total += min(max(bw + 1.0, 1.0), w) * min(max(bh + 1.0, 1.0), h)
        elif sampling_ratio <= 0:
            total += np.ceil(bh / pooled_h) * np.ceil(bw / pooled_w)
    if pool:
        reads = total
    elif sampling_ratio > 0:
        reads = 4.0 * n_rois * pooled_h * pooled_w * sampling_ratio * sampling_ratio
    else:
        reads = 4.0 * pooled_h * pooled_w * total
    slot = np.full(n_b, -1, np.int64)
    idx = np.empty(n_b, np.int64)
    n_used = 0
    for i in range(n_b):
        if used[i]:
            slot[i] = n_used
            idx[n_used] = i
            n_used += 1
    return missing, idx[:n_used], slot, reads


def _launch_boxes(rois, missing, n_b):
    """``(rois, has_image)``: the boxes the kernels read, and which rows name an image
    (``None`` when all do).

    With ``check_boxes=False``, boxes whose batch index names no image give zeros, as on
    the GPU backends, instead of a read outside ``x``: the kernels see a copy with those
    indices set to 0, and the caller zeroes their rows of the output.
    """
    if not missing:
        return rois, None
    b = rois[:, 0]
    has_image = (b > -1) & (b < n_b)  # trunc(b) in [0, N); NaN fails both
    safe = rois.copy()
    safe[~has_image, 0] = 0
    return safe, has_image


def _run_roi(x, rois, output_size, scale, sampling_ratio, crossover, channels_last, planar):
    """What both ops do around their kernels: scan the boxes, pick the path, allocate.

    ``sampling_ratio`` is None for roi_pool (whose cost estimate is the boxes' areas).
    ``channels_last(xt, slot, rois, out)`` and ``planar(x, rois, out)`` launch the
    op's kernels; the output is NumPy's (see ``_config``) and rows of boxes naming no
    image are zeroed after (:func:`_launch_boxes`).
    """
    n_b, c_in, h, w = x.shape
    pooled_h, pooled_w = output_size
    n_rois = rois.shape[0]
    if n_rois == 0 or c_in == 0:
        return np.zeros((n_rois, c_in, pooled_h, pooled_w), x.dtype)
    pool = sampling_ratio is None
    missing, idx, slot, reads = _scan_boxes(rois, n_b, h, w, scale, pooled_h, pooled_w,
                                            0 if pool else sampling_ratio, pool)
    rois, has_image = _launch_boxes(rois, missing, n_b)
    out = np.empty((n_rois, c_in, pooled_h, pooled_w), x.dtype)
    if _use_channels_last(idx.size, c_in, h, w, reads, x.dtype.itemsize, crossover):
        channels_last(_channels_last(x, idx), slot, rois, out)
    else:
        planar(x, rois, out)
    if has_image is not None:
        out[~has_image] = 0
    return out


#: reads per map pixel from which the channels-last path pays, for maps up to 32 MiB and
#: above (measured, 256 channels, 7 x 7 bins, 1 thread, 2026-11-23).  roi_align: 0.5-0.7
#: for maps of 3.5 and 14 MB, about 1.15 for a 61 MB map, whose copy runs at memory
#: bandwidth (15 ms, where the planar path costs about 14 ms per read per pixel).
#: roi_pool's planar path (a scalar max over each bin's pixels, channel by channel) is
#: dearer per read: 0.25-0.3 on both maps.
_ALIGN_CROSSOVER = (0.5, 1.2)
_POOL_CROSSOVER = (0.3, 0.3)


def _use_channels_last(n_used, c, h, w, per_channel_reads, itemsize, crossover):
    """True when transposing the used images costs less than the scalar reads it saves.

    ``per_channel_reads`` is the number of feature reads per channel summed over
    all boxes.  The planar path does them as scalar loads; the channels-last path
    pays one transpose of ``n_used*C*H*W`` elements, then reads vectors.
    ``crossover`` is the op's ``(small, large)`` pair of reads per map pixel from
    which that pays, for copies up to 32 MiB and above.
    """
    if c < 4:
        return False
    pixels = n_used * h * w
    per_pixel = crossover[0] if pixels * c * itemsize <= (32 << 20) else crossover[1]
    return per_channel_reads > per_pixel * pixels


@numba.njit(**EXACT_JIT_OPTIONS)
def _c_round(v, limit):
    """C's ``round`` (half away from zero) of a float, as an int (magnitude clamped)."""
    if v > limit:
        v = limit
    elif v < -limit:
        v = -limit
    t = np.trunc(v)
    if v - t >= 0.5:
        t += 1
    elif t - v >= 0.5:
        t -= 1
    return int(t)


# --------------------------------------------------------------------------- roi_align


@numba.njit(**EXACT_JIT_OPTIONS)
def _sample_pos(start, p, bin_size, i, grid, T):
    """Sample ``i`` of bin ``p``, in torchvision's operation order (no FMA, no reciprocal)."""
    return start + T(p) * bin_size + T(i + 0.5) * bin_size / T(grid)


@numba.njit(**EXACT_JIT_OPTIONS)
def _align_geometry(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, T):
    """torchvision's box start, bin size and sample grid for one RoI row."""
    offs = T(0.5) if aligned else T(0)
    start_w = roi[1] * spatial_scale - offs
    start_h = roi[2] * spatial_scale - offs
    end_w = roi[3] * spatial_scale - offs
    end_h = roi[4] * spatial_scale - offs
    roi_w = end_w - start_w
    roi_h = end_h - start_h
    if not aligned:
        roi_w = max(roi_w, T(1))
        roi_h = max(roi_h, T(1))
    bin_h = roi_h / T(pooled_h)
    bin_w = roi_w / T(pooled_w)
    if sampling_ratio > 0:
        grid_h = sampling_ratio
        grid_w = sampling_ratio
    else:
        grid_h = int(np.ceil(roi_h / T(pooled_h)))
        grid_w = int(np.ceil(roi_w / T(pooled_w)))
    return start_h, start_w, bin_h, bin_w, grid_h, grid_w


# shufflevector masks of the three butterfly rounds of an 8 x 8 transpose
_ROUNDS = (
    ((0, 8, 2, 10, 4, 12, 6, 14), (1, 9, 3, 11, 5, 13, 7, 15)),
    ((0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)),
    ((0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)),
)


@intrinsic
def _transpose8(typingctx, src, si, sj, dst, di, dj):
    """``dst[di + j, dj + i] = src[si + i, sj + j]`` for ``i, j < 8`` (2-D C-contiguous arrays).

    Eight vector loads, 24 shuffles, eight vector stores: LLVM does not vectorise a
    scalar transpose loop (strided loads), which costs 1-4 cycles per element here.
    The caller guarantees the 8 x 8 blocks are in bounds.
    """
    sig = types.void(src, si, sj, dst, di, dj)

    def codegen(context, builder, signature, args):
        src_v, si_v, sj_v, dst_v, di_v, dj_v = args
        s_ty, _, _, d_ty, _, _ = signature.args
        s_arr = context.make_array(s_ty)(context, builder, src_v)
        d_arr = context.make_array(d_ty)(context, builder, dst_v)
        elt = context.get_data_type(s_ty.dtype)
        align = context.get_abi_sizeof(elt)
        vec_ptr = ir.VectorType(elt, 8).as_pointer()
        intp = si_v.type

        def vptr(arr, ty, i, j, k):
            p = cgutils.get_item_pointer2(
                context, builder, data=arr.data, shape=cgutils.unpack_tuple(builder, arr.shape),
                strides=cgutils.unpack_tuple(builder, arr.strides), layout=ty.layout,
                inds=[builder.add(i, ir.Constant(intp, k)), j])
            return builder.bitcast(p, vec_ptr)

        def mask(m):
            return ir.Constant(ir.VectorType(ir.IntType(32), 8), list(m))

        v = [builder.load(vptr(s_arr, s_ty, si_v, sj_v, i), align=align) for i in range(8)]
        for dist, (lo, hi) in zip((1, 2, 4), _ROUNDS, strict=True):
            nxt = [None] * 8
            for i in range(8):
                if i & dist:
                    continue
                nxt[i] = builder.shuffle_vector(v[i], v[i + dist], mask(lo))
                nxt[i + dist] = builder.shuffle_vector(v[i], v[i + dist], mask(hi))
            v = nxt
        for j in range(8):
            builder.store(v[j], vptr(d_arr, d_ty, di_v, dj_v, j), align=align)
        return context.get_dummy_value()

    return sig, codegen


def _vec_loop(builder, n, lanes, body):
    """``body(k, width)`` for ``k`` in vectors of ``lanes``, then the scalar tail."""
    i64 = ir.IntType(64)
    n_vec = builder.udiv(n, ir.Constant(i64, lanes))
    with cgutils.for_range(builder, n_vec) as loop:
        body(builder.mul(loop.index, ir.Constant(i64, lanes)), lanes)
    k0 = builder.mul(n_vec, ir.Constant(i64, lanes))
    with cgutils.for_range(builder, builder.sub(n, k0)) as loop:
        body(builder.add(k0, loop.index), 1)


def _axpby_codegen(context, builder, sig, args):
    dst_ty, _, src_ty = sig.args[:3]
    dst = context.make_array(dst_ty)(context, builder, args[0])
    src = context.make_array(src_ty)(context, builder, args[2])
    d_off, oa, ob, n = (context.cast(builder, v, t, types.int64)
                        for v, t in zip((args[1], *args[3:6]), (sig.args[1], *sig.args[3:6]),
                                        strict=True))
    wa, wb, accumulate = args[6], args[7], args[8]
    elt = context.get_data_type(dst_ty.dtype)
    esize = context.get_abi_sizeof(elt)
    lanes = 64 // esize
    pd = builder.gep(dst.data, [d_off])
    pa = builder.gep(src.data, [oa])
    pb = builder.gep(src.data, [ob])
    i32 = ir.IntType(32)

    def weights(width):
        if width == 1:
            return wa, wb
        vty = ir.VectorType(elt, width)
        mask = ir.Constant(ir.VectorType(i32, width), [0] * width)
        return tuple(
            builder.shuffle_vector(builder.insert_element(ir.Constant(vty, None), w,
                                                          ir.Constant(i32, 0)),
                                   ir.Constant(vty, None), mask)
            for w in (wa, wb))

    def ptr(p, k, width):
        q = builder.gep(p, [k])
        return q if width == 1 else builder.bitcast(q, ir.VectorType(elt, width).as_pointer())

    def emit(acc):
        def body(k, width):
            va, vb = weights(width)
            t = builder.fmul(va, builder.load(ptr(pa, k, width), align=esize))
            t = builder.fadd(t, builder.fmul(vb, builder.load(ptr(pb, k, width), align=esize)))
            if acc:
                t = builder.fadd(builder.load(ptr(pd, k, width), align=esize), t)
            builder.store(t, ptr(pd, k, width), align=esize)
        _vec_loop(builder, n, lanes, body)

    with builder.if_else(accumulate) as (then, otherwise):
        with then:
            emit(True)
        with otherwise:
            emit(False)
    return context.get_dummy_value()


@intrinsic
def _axpby(typingctx, dst, d_off, src, oa, ob, n, wa, wb, accumulate):
    """``dst.flat[d_off + k] (+)= wa*src.flat[oa + k] + wb*src.flat[ob + k]``, ``k < n``.

    ``=`` or ``+=`` by ``accumulate``.  C-contiguous arrays of one dtype addressed by
    flat element offsets the caller keeps in bounds; one explicit 64-byte vector loop
    (the auto-vectorised loop over slices paid slice set-up, runtime alias checks
    and 256-bit vectors on each of the many short calls: one per sample row / bin).
    """
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.layout == "C" and src.layout == "C" and dst.dtype == src.dtype):
        return None
    if not (all(isinstance(i, types.Integer) for i in (d_off, oa, ob, n))
            and wa == dst.dtype and wb == dst.dtype and isinstance(accumulate, types.Boolean)):
        return None
    sig = types.void(dst, d_off, src, oa, ob, n, wa, wb, accumulate)
    return sig, _axpby_codegen


_LINE = 64  # bytes per cache line (x86-64; on other machines only a vector width)


def _stream_copy_codegen(context, builder, sig, args):
    dst_ty, _, src_ty = sig.args[:3]
    dst = context.make_array(dst_ty)(context, builder, args[0])
    src = context.make_array(src_ty)(context, builder, args[2])
    i64 = ir.IntType(64)
    d_off, s_off, n = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 4))
    elt = context.get_data_type(dst_ty.dtype)
    esize = context.get_abi_sizeof(elt)
    lanes = _LINE // esize
    pd = builder.gep(dst.data, [d_off])
    ps = builder.gep(src.data, [s_off])

    def copy_scalars(start, count):
        with cgutils.for_range(builder, count) as loop:
            k = builder.add(start, loop.index)
            builder.store(builder.load(builder.gep(ps, [k]), align=esize),
                          builder.gep(pd, [k]), align=esize)

    # elements before dst's first cache-line boundary (dst is element-aligned)
    mis = builder.and_(builder.neg(builder.ptrtoint(pd, i64)), ir.Constant(i64, _LINE - 1))
    head = builder.udiv(mis, ir.Constant(i64, esize))
    head = builder.select(builder.icmp_unsigned("<", n, head), n, head)
    copy_scalars(ir.Constant(i64, 0), head)
    n_lines = builder.udiv(builder.sub(n, head), ir.Constant(i64, lanes))
    vty = ir.VectorType(elt, lanes)
    nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
    with cgutils.for_range(builder, n_lines) as loop:
        k = builder.add(head, builder.mul(loop.index, ir.Constant(i64, lanes)))
        v = builder.load(builder.bitcast(builder.gep(ps, [k]), vty.as_pointer()), align=esize)
        st = builder.store(v, builder.bitcast(builder.gep(pd, [k]), vty.as_pointer()),
                           align=_LINE)
        st.set_metadata("nontemporal", nontemporal)
    done = builder.add(head, builder.mul(n_lines, ir.Constant(i64, lanes)))
    copy_scalars(done, builder.sub(n, done))
    return context.get_dummy_value()


@intrinsic
def _stream_copy(typingctx, dst, d_off, src, s_off, n):
    """``dst.flat[d_off + k] = src.flat[s_off + k]`` for ``k < n``, bypassing the caches.

    The whole cache lines of the destination are written with non-temporal stores
    (``movntps``: no read-for-ownership, the line goes to memory instead of
    evicting the caches); the partial lines at either end with plain stores.  The
    stores are weakly ordered: call :func:`_store_fence` before the data is
    handed to another thread.  C-contiguous arrays of one dtype, offsets in bounds.
    """
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.layout == "C" and src.layout == "C" and dst.dtype == src.dtype
            and all(isinstance(i, types.Integer) for i in (d_off, s_off, n))):
        return None
    return types.void(dst, d_off, src, s_off, n), _stream_copy_codegen


@intrinsic
def _store_fence(typingctx):
    """A full memory fence (``mfence`` on x86-64): orders the non-temporal stores before it."""

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


#: roi outputs of at least this size are written with non-temporal stores.  Measured on
#: the development VM, 2026-11-23, writing 25.7 MB: lines that have left the caches, 2.8-3.0
#: ms with plain stores, 1.1-1.2 streamed; lines we streamed before, 0.94 against 1.05;
#: lines still dirty in the caches (memory another call has just written and freed), 0.87
#: against 1.7-1.9, since each must be written back first.  Which case a new output meets
#: depends on the allocator: interleaved with torchvision (three bench runs each, 1 thread)
#: streaming took roi_pool_fpn 8.1-8.4 -> 5.7-5.9 ms and roi_align_fpn 6.6-8.2 -> 6.7-7.2,
#: but roi_align_mask 5.0-6.5 -> 6.1-7.0, its output landing on torchvision's freed one.
#: Outputs under 8 MiB are likely still cached when read, so they are never streamed.
_STREAM_MIN_BYTES = 8 << 20


def _streamed(out):
    """Whether the channels-last kernels write ``out`` with non-temporal stores."""
    return out.nbytes >= _STREAM_MIN_BYTES


# channels a streamed RoI output is staged in (32 x 49 bins: 6 KB, L1)
_STAGE_CHANNELS = 32


@numba.njit(**SERIAL_JIT_OPTIONS)
def _transpose_bins(ob, c0, cb, dst, d0):
    """``dst[d0 + c, b] = ob[b, c0 + c]`` for ``c < cb`` and every bin ``b`` (a transpose)."""
    nb = ob.shape[0]
    nb8 = nb // 8 * 8
    c8 = cb // 8 * 8
    for c in range(0, c8, 8):  # 8 x 8 blocks, each output row written contiguously
        for b0 in range(0, nb8, 8):
            _transpose8(ob, b0, c0 + c, dst, d0 + c, b0)
        for b in range(nb8, nb):
            for cc in range(c, c + 8):
                dst[d0 + cc, b] = ob[b, c0 + cc]
    for c in range(c8, cb):
        row = dst[d0 + c]
        for b in range(nb):
            row[b] = ob[b, c0 + c]


@numba.njit(**SERIAL_JIT_OPTIONS)
def _store_bins(ob, out, r, stream):
    """``out[r, c, ph, pw] = ob[ph*pooled_w + pw, c]`` (a transpose).

    With ``stream``, ``_STAGE_CHANNELS`` channels at a time are transposed into a
    small buffer and streamed to ``out`` (:func:`_stream_copy`), then fenced.
    """
    nb = ob.shape[0]
    c_in = out.shape[1]
    if not stream:
        _transpose_bins(ob, 0, c_in, out[r].reshape((c_in, nb)), 0)
        return
    flat = out.reshape(out.size)
    stage = np.empty((_STAGE_CHANNELS, nb), out.dtype)
    staged = stage.reshape(stage.size)
    for c0 in range(0, c_in, _STAGE_CHANNELS):
        cb = min(_STAGE_CHANNELS, c_in - c0)
        _transpose_bins(ob, c0, cb, stage, 0)
        _stream_copy(flat, (r * c_in + c0) * nb, staged, 0, cb * nb)
    _store_fence()


@parallel_kernel
def _to_nhwc(x, idx, xt):
    """``xt[:] = x[idx]`` channels-last, flattened per image: ``(len(idx), H*W*C)``.

    Element ``[s, (y*W + x)*C + c]`` is ``x[idx[s], c, y, x]``.  8 x 8 register
    transposes (:func:`_transpose8`) from the ``(C, W)`` slice of each row.
    """
    _, c_in, h, w = x.shape
    n_used = idx.shape[0]
    c8 = c_in // 8 * 8
    w8 = w // 8 * 8
    for job in numba.prange(n_used * h):
        s = job // h
        y = job - s * h
        src = x[idx[s], :, y, :]  # (C, W)
        dst = xt[s].reshape((h * w, c_in))
        r0 = y * w
        for c0 in range(0, c8, 8):
            for x0 in range(0, w8, 8):
                _transpose8(src, c0, x0, dst, r0 + x0, c0)
            for xx in range(w8, w):
                for c in range(c0, c0 + 8):
                    dst[r0 + xx, c] = src[c, xx]
        for c in range(c8, c_in):
            for xx in range(w):
                dst[r0 + xx, c] = src[c, xx]


def _channels_last(x, idx):
    """The images ``x[idx]``, channels-last in a new NumPy array (see :func:`_to_nhwc`)."""
    _, c_in, h, w = x.shape
    xt = np.empty((idx.size, h * w * c_in), x.dtype)
    _to_nhwc(x, idx, xt)
    return xt


@parallel_kernel
def _roi_align_nhwc(xt, slot, rois, out, stream, h, w, spatial_scale, sampling_ratio,
                    aligned):
    T = xt.dtype.type
    n_rois, c_in, pooled_h, pooled_w = out.shape
    scale = T(spatial_scale)
    for r in numba.prange(n_rois):
        roi = rois[r]
        s = slot[int(roi[0])]
        start_h, start_w, bin_h, bin_w, grid_h, grid_w = _align_geometry(
            roi, scale, pooled_h, pooled_w, sampling_ratio, aligned, T)
        inv_count = T(1) / T(max(grid_h * grid_w, 1))
        # sample columns: the x half of the clamp rule, once per RoI
        n_sx = max(pooled_w * grid_w, 1)
        x_idx = np.empty((n_sx, 3), np.int64)  # inside, x_low, x_high
        x_wt = np.empty((n_sx, 2), xt.dtype)  # hx, lx
        x_min = w
        x_max = -1
        for pw in range(pooled_w):
            for ix in range(grid_w):
                xx = _sample_pos(start_w, pw, bin_w, ix, grid_w, T)
                ok, lo, hi, lx, hx = clamp_axis(xx, w, T)
                k = pw * grid_w + ix
                x_idx[k, 0] = 1 if ok else 0
                x_idx[k, 1] = lo
                x_idx[k, 2] = hi
                x_wt[k, 0] = hx * inv_count  # 1/count folded in: no pass over the bins
                x_wt[k, 1] = lx * inv_count
                if ok:
                    x_min = min(x_min, lo)
                    x_max = max(x_max, hi)
        if x_max < 0 or grid_h == 0:
            for c in range(c_in):
                for ph in range(pooled_h):
                    for pw in range(pooled_w):
                        out[r, c, ph, pw] = T(0)
            continue
        seg = (x_max - x_min + 1) * c_in
        vb = np.empty(seg, xt.dtype)
        # this RoI's bins, channels-last; transposed into out at the end (direct
        # stores into out's (C, bins) layout would stride across cache lines)
        ob = np.empty((pooled_h * pooled_w, c_in), xt.dtype)
        for ph in range(pooled_h):
            # vertical pass: the bin row's sample rows, summed into vb
            n_rows = 0
            for iy in range(grid_h):
                yy = _sample_pos(start_h, ph, bin_h, iy, grid_h, T)
                ok, y_lo, y_hi, ly, hy = clamp_axis(yy, h, T)
                if not ok:
                    continue
                img = s * xt.shape[1]
                _axpby(vb, 0, xt, img + (y_lo * w + x_min) * c_in,
                       img + (y_hi * w + x_min) * c_in, seg, hy, ly, n_rows > 0)
                n_rows += 1
            # horizontal pass: each bin from its sample columns
            for pw in range(pooled_w):
                acc = ob[ph * pooled_w + pw]
                n_s = 0
                if n_rows > 0:
                    for ix in range(grid_w):
                        k = pw * grid_w + ix
                        if x_idx[k, 0] == 0:
                            continue
                        _axpby(ob, (ph * pooled_w + pw) * c_in, vb,
                               (x_idx[k, 1] - x_min) * c_in, (x_idx[k, 2] - x_min) * c_in,
                               c_in, x_wt[k, 0], x_wt[k, 1], n_s > 0)
                        n_s += 1
                if n_s == 0:
                    for c in range(c_in):
                        acc[c] = T(0)
        _store_bins(ob, out, r, stream)


@parallel_kernel
def _roi_align_planar(x, rois, out, spatial_scale, sampling_ratio, aligned):
    T = x.dtype.type
    _, c_in, h, w = x.shape
    n_rois, _, pooled_h, pooled_w = out.shape
    scale = T(spatial_scale)
    n_bins = pooled_h * pooled_w
    for r in numba.prange(n_rois):
        roi = rois[r]
        b = int(roi[0])
        start_h, start_w, bin_h, bin_w, grid_h, grid_w = _align_geometry(
            roi, scale, pooled_h, pooled_w, sampling_ratio, aligned, T)
        inv_count = T(1) / T(max(grid_h * grid_w, 1))
        n_s = max(n_bins * grid_h * grid_w, 1)
        pos = np.empty((n_s, 4), np.int64)
        wts = np.empty((n_s, 4), x.dtype)
        bin_end = np.empty(n_bins, np.int64)  # samples [bin_end[k-1], bin_end[k]) are bin k
        k = 0
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for iy in range(grid_h):
                    yy = _sample_pos(start_h, ph, bin_h, iy, grid_h, T)
                    for ix in range(grid_w):
                        xx = _sample_pos(start_w, pw, bin_w, ix, grid_w, T)
                        inside, i1, i2, i3, i4, w1, w2, w3, w4 = bilinear_clamp(yy, xx, h, w, T)
                        if inside:
                            pos[k, 0] = i1
                            pos[k, 1] = i2
                            pos[k, 2] = i3
                            pos[k, 3] = i4
                            wts[k, 0] = w1
                            wts[k, 1] = w2
                            wts[k, 2] = w3
                            wts[k, 3] = w4
                            k += 1
                bin_end[ph * pooled_w + pw] = k
        for c in range(c_in):
            plane = x[b, c].reshape(h * w)
            k0 = 0
            for bi in range(n_bins):
                k1 = bin_end[bi]
                v = T(0)
                for q in range(k0, k1):
                    v += (wts[q, 0] * plane[pos[q, 0]] + wts[q, 1] * plane[pos[q, 1]]
                          + wts[q, 2] * plane[pos[q, 2]] + wts[q, 3] * plane[pos[q, 3]])
                out[r, c, bi // pooled_w, bi % pooled_w] = v * inv_count
                k0 = k1


def roi_align(x, rois, *, output_size, spatial_scale, sampling_ratio, aligned):
    """Bilinear RoIAlign (torchvision's).

    See ``fastconv.backends`` for the argument contract.

    Returns
    -------
    out : numpy.ndarray, shape (K, C, pooled_h, pooled_w)
    """
    scale, sr, aligned = float(spatial_scale), int(sampling_ratio), bool(aligned)
    h, w = x.shape[2:]
    return _run_roi(
        x, rois, output_size, scale, sr, _ALIGN_CROSSOVER,
        channels_last=lambda xt, slot, rois, out: _roi_align_nhwc(
            xt, slot, rois, out, _streamed(out), h, w, scale, sr, aligned),
        planar=lambda x, rois, out: _roi_align_planar(x, rois, out, scale, sr, aligned))


# --------------------------------------------------------------------------- roi_pool


@numba.njit(**EXACT_JIT_OPTIONS)
def _pool_geometry(roi, spatial_scale, pooled_h, pooled_w, limit, T):
    """torchvision's rounded box corners and bin size for one RoI row."""
    start_w = _c_round(roi[1] * spatial_scale, limit)
    start_h = _c_round(roi[2] * spatial_scale, limit)
    end_w = _c_round(roi[3] * spatial_scale, limit)
    end_h = _c_round(roi[4] * spatial_scale, limit)
    roi_w = max(end_w - start_w + 1, 1)
    roi_h = max(end_h - start_h + 1, 1)
    bin_h = T(roi_h) / T(pooled_h)
    bin_w = T(roi_w) / T(pooled_w)
    return start_h, start_w, bin_h, bin_w


@numba.njit(**EXACT_JIT_OPTIONS)
def _bin_range(p, p1, bin_size, start, size):
    """Bin ``[floor(p*bin), ceil(p1*bin))`` shifted by ``start`` and clipped to ``[0, size]``."""
    lo = int(np.floor(p * bin_size)) + start
    hi = int(np.ceil(p1 * bin_size)) + start
    return min(max(lo, 0), size), min(max(hi, 0), size)


@numba.njit(**EXACT_JIT_OPTIONS)
def _pool_columns(start_w, bin_w, pooled_w, w, T):
    """Each bin column's ``[ws, we)`` and the RoI's column range ``[x_min, x_max)``
    over its non-empty bins (``x_max <= x_min`` when all are empty)."""
    ws = np.empty(pooled_w, np.int64)
    we = np.empty(pooled_w, np.int64)
    x_min = w
    x_max = 0
    for pw in range(pooled_w):
        ws[pw], we[pw] = _bin_range(T(pw), T(pw + 1), bin_w, start_w, w)
        if we[pw] > ws[pw]:
            x_min = min(x_min, ws[pw])
            x_max = max(x_max, we[pw])
    return ws, we, x_min, x_max


@numba.njit(inline="always", **SERIAL_JIT_OPTIONS)
def _row_max(vm, row, first, lowest):
    """``vm = max(vm, row)`` elementwise with torchvision's ``v > max`` rule (NaN never
    wins); ``first`` starts from ``lowest`` (-FLT_MAX) instead of ``vm``."""
    if first:
        for k in range(row.shape[0]):
            v = row[k]
            vm[k] = v if v > lowest else lowest
    else:
        for k in range(row.shape[0]):
            v = row[k]
            vm[k] = v if v > vm[k] else vm[k]


@parallel_kernel
def _roi_pool_nhwc(xt, slot, rois, out, stream, h, w, spatial_scale, limit):
    T = xt.dtype.type
    n_rois, c_in, pooled_h, pooled_w = out.shape
    scale = T(spatial_scale)
    lowest = T(-_FLT_MAX)
    for r in numba.prange(n_rois):
        roi = rois[r]
        s = slot[int(roi[0])]
        start_h, start_w, bin_h, bin_w = _pool_geometry(
            roi, scale, pooled_h, pooled_w, limit, T)
        ws, we, x_min, x_max = _pool_columns(start_w, bin_w, pooled_w, w, T)
        seg = max(x_max - x_min, 0) * c_in
        vm = np.empty(max(seg, 1), xt.dtype)
        ob = np.empty((pooled_h * pooled_w, c_in), xt.dtype)  # bins, channels-last
        for ph in range(pooled_h):
            hs, he = _bin_range(T(ph), T(ph + 1), bin_h, start_h, h)
            if he > hs and seg > 0:
                # vertical pass: column-wise max over the bin row's rows
                for yy in range(hs, he):
                    a = (yy * w + x_min) * c_in
                    _row_max(vm, xt[s, a:a + seg], yy == hs, lowest)
            for pw in range(pooled_w):
                acc = ob[ph * pooled_w + pw]
                if he <= hs or we[pw] <= ws[pw]:
                    for c in range(c_in):
                        acc[c] = T(0)
                    continue
                a = (ws[pw] - x_min) * c_in
                col = vm[a:a + c_in]
                for c in range(c_in):
                    acc[c] = col[c]
                for xx in range(ws[pw] + 1, we[pw]):
                    a = (xx - x_min) * c_in
                    col = vm[a:a + c_in]
                    for c in range(c_in):
                        v = col[c]
                        acc[c] = v if v > acc[c] else acc[c]
        _store_bins(ob, out, r, stream)


@parallel_kernel
def _roi_pool_planar(x, rois, out, spatial_scale, limit):
    # per channel plane, the same separable max as _roi_pool_nhwc: per bin row, the
    # column-wise max over its rows across the RoI's columns (contiguous loops along W),
    # then per bin the max over its columns
    T = x.dtype.type
    _, c_in, h, w = x.shape
    n_rois, _, pooled_h, pooled_w = out.shape
    scale = T(spatial_scale)
    lowest = T(-_FLT_MAX)
    for r in numba.prange(n_rois):
        roi = rois[r]
        b = int(roi[0])
        start_h, start_w, bin_h, bin_w = _pool_geometry(roi, scale, pooled_h, pooled_w, limit, T)
        hs = np.empty(pooled_h, np.int64)
        he = np.empty(pooled_h, np.int64)
        for ph in range(pooled_h):
            hs[ph], he[ph] = _bin_range(T(ph), T(ph + 1), bin_h, start_h, h)
        ws, we, x_min, x_max = _pool_columns(start_w, bin_w, pooled_w, w, T)
        seg = max(x_max - x_min, 0)
        vm = np.empty(max(seg, 1), x.dtype)
        for c in range(c_in):
            plane = x[b, c]
            for ph in range(pooled_h):
                if he[ph] <= hs[ph] or seg == 0:
                    for pw in range(pooled_w):
                        out[r, c, ph, pw] = T(0)
                    continue
                for yy in range(hs[ph], he[ph]):
                    _row_max(vm, plane[yy, x_min:x_max], yy == hs[ph], lowest)
                for pw in range(pooled_w):
                    if we[pw] <= ws[pw]:
                        out[r, c, ph, pw] = T(0)
                        continue
                    m = vm[ws[pw] - x_min]
                    for xx in range(ws[pw] + 1, we[pw]):
                        v = vm[xx - x_min]
                        m = v if v > m else m
                    out[r, c, ph, pw] = m


def roi_pool(x, rois, *, output_size, spatial_scale):
    """Max RoIPool (torchvision's).

    See ``fastconv.backends`` for the argument contract.

    Returns
    -------
    out : numpy.ndarray, shape (K, C, pooled_h, pooled_w)
    """
    scale = float(spatial_scale)
    h, w = x.shape[2:]
    return _run_roi(
        x, rois, output_size, scale, None, _POOL_CROSSOVER,
        channels_last=lambda xt, slot, rois, out: _roi_pool_nhwc(
            xt, slot, rois, out, _streamed(out), h, w, scale, _COORD_LIMIT),
        planar=lambda x, rois, out: _roi_pool_planar(x, rois, out, scale, _COORD_LIMIT))


__all__ = ["count_bad_boxes", "roi_align", "roi_pool"]
