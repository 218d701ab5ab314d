// roi_align and roi_pool (torchvision semantics, forward only).
//
// One thread per (box k, chunk of CB channels, bin ph, bin pw), pw fastest, so the
// stores of a warp are consecutive.  The thread computes the box geometry and every
// sample position / bin limit once and applies it to its CB channels, which keeps
// CB independent loads in flight per sample.
//
// Two ways to hand out that work, chosen by the template flag BOX_GRID
// (for_each_roi_item):
//   false: one grid-stride loop over all K * ceil(C/CB) * PH * PW items, split by
//          64-bit divisions;
//   true:  blocks on grid y stride over the boxes, and grid x covers one box's
//          ceil(C/CB) * PH * PW items with 32-bit index arithmetic; every thread of
//          a block reads the same box row (a broadcast).
//
// Box geometry is computed in Acc<T> (the input's precision; float for __half),
// in torchvision's order of operations, with multiplies and adds that are never
// contracted into FMAs (mul_rn/add_rn), because it decides discrete things
// (sample counts, rounding, the outside-the-image tests).
#include "common.cuh"
#include "bilinear.cuh"

namespace fc {

// The image of a box: n = trunc(b) when it is in [0, N), and true; else n = 0 and false.
// check_boxes=True rejects such boxes before any launch; without the check the box's
// output is 0 (never a read outside x).  -1 < b < N is the test before the
// truncation; NaN fails it.
template <typename A>
__device__ __forceinline__ bool batch_image(A b, int N, int& n) {
    const bool ok = b > A(-1) && b < A(N);
    n = ok ? (int)b : 0;
    return ok;
}

// Calls body(k, cc, ph, pw) for each work item (box k, channel chunk cc, bin ph, bin pw)
// of this thread.
template <bool BOX_GRID, typename F>
__device__ __forceinline__ void for_each_roi_item(int K, int nCC, int PH, int PW, F&& body) {
    if constexpr (BOX_GRID) {
        // one box's items fit in 31 bits (the launcher checks): 32-bit divisions only
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= nCC * PH * PW) return;
#pragma unroll 1
        for (int k = blockIdx.y; k < K; k += gridDim.y) {
            // split inside the loop: one live value (i) across boxes instead of three
            const int pw = i % PW, rest = i / PW;
            body((i64)k, rest / PH, rest % PH, pw);
        }
    } else {
        const i64 total = (i64)K * nCC * PH * PW;
        for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
             idx += (i64)gridDim.x * blockDim.x) {
            const int pw = (int)(idx % PW);
            i64 rest = idx / PW;
            const int ph = (int)(rest % PH);
            rest /= PH;
            body(rest / nCC, (int)(rest % nCC), ph, pw);
        }
    }
}

template <typename T, int CB, bool BOX_GRID>
__global__ void __launch_bounds__(256)
roi_align(const T* __restrict__ x, const T* __restrict__ rois, T* __restrict__ out, int K,
          int N, int C, int H, int W, int PH, int PW, typename Acc<T>::type spatial_scale,
          int sampling_ratio, int aligned) {
    typedef typename Acc<T>::type A;
    const int nCC = (C + CB - 1) / CB;
    const i64 HW = (i64)H * W;
    for_each_roi_item<BOX_GRID>(K, nCC, PH, PW, [&](const i64 k, const int cc, const int ph,
                                                  const int pw) {
        const int c0 = cc * CB;

        const T* roi = rois + k * 5;
        int n;
        const bool has_image = batch_image(ld(roi), N, n);
        const A shift = aligned ? A(0.5) : A(0);
        const A start_w = mul_rn(ld(roi + 1), spatial_scale) - shift;
        const A start_h = mul_rn(ld(roi + 2), spatial_scale) - shift;
        const A end_w = mul_rn(ld(roi + 3), spatial_scale) - shift;
        const A end_h = mul_rn(ld(roi + 4), spatial_scale) - shift;
        A roi_w = end_w - start_w, roi_h = end_h - start_h;
        if (!aligned) {
            roi_w = roi_w > A(1) ? roi_w : A(1);
            roi_h = roi_h > A(1) ? roi_h : A(1);
        }
        const A bin_h = roi_h / A(PH), bin_w = roi_w / A(PW);
        // no image: no samples, so the bin is 0 (count stays >= 1)
        const int grid_h = !has_image ? 0 : sampling_ratio > 0 ? sampling_ratio
                                                               : (int)ce(roi_h / A(PH));
        const int grid_w = sampling_ratio > 0 ? sampling_ratio : (int)ce(roi_w / A(PW));
        const A count = A(imax(grid_h * grid_w, 1));
        const A y0 = add_rn(start_h, mul_rn(A(ph), bin_h));
        const A x0 = add_rn(start_w, mul_rn(A(pw), bin_w));

        const T* base = x + ((i64)n * C + c0) * HW;
        A acc[CB];
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) acc[cb] = A(0);

        for (int iy = 0; iy < grid_h; ++iy) {
            const A yy = add_rn(y0, mul_rn(A(iy + 0.5f), bin_h) / A(grid_h));
            for (int ix = 0; ix < grid_w; ++ix) {
                const A xx = add_rn(x0, mul_rn(A(ix + 0.5f), bin_w) / A(grid_w));
                BilinearTaps<A> b;
                if (!bilinear_taps_clamp_edge(yy, xx, H, W, b)) continue;
#pragma unroll
                for (int cb = 0; cb < CB; ++cb)
                    if (CB == 1 || c0 + cb < C) acc[cb] += bilinear_apply(base + cb * HW, b);
            }
        }
        T* ob = out + ((k * C + c0) * PH + ph) * (i64)PW + pw;
#pragma unroll
        for (int cb = 0; cb < CB; ++cb)
            if (CB == 1 || c0 + cb < C) ob[(i64)cb * PH * PW] = from_acc<T>(acc[cb] / count);
    });
}

template <typename T, int CB, bool BOX_GRID>
__global__ void __launch_bounds__(256)
roi_pool(const T* __restrict__ x, const T* __restrict__ rois, T* __restrict__ out, int K, int N,
         int C, int H, int W, int PH, int PW, typename Acc<T>::type spatial_scale) {
    typedef typename Acc<T>::type A;
    const int nCC = (C + CB - 1) / CB;
    const i64 HW = (i64)H * W;
    for_each_roi_item<BOX_GRID>(K, nCC, PH, PW, [&](const i64 k, const int cc, const int ph,
                                                  const int pw) {
        const int c0 = cc * CB;

        const T* roi = rois + k * 5;
        int n;
        const bool has_image = batch_image(ld(roi), N, n);
        const int start_w = (int)rnd(mul_rn(ld(roi + 1), spatial_scale));
        const int start_h = (int)rnd(mul_rn(ld(roi + 2), spatial_scale));
        const int end_w = (int)rnd(mul_rn(ld(roi + 3), spatial_scale));
        const int end_h = (int)rnd(mul_rn(ld(roi + 4), spatial_scale));
        const int roi_w = imax(end_w - start_w + 1, 1), roi_h = imax(end_h - start_h + 1, 1);
        const A bin_h = A(roi_h) / A(PH), bin_w = A(roi_w) / A(PW);
        int hs = (int)fl(mul_rn(A(ph), bin_h)), he = (int)ce(mul_rn(A(ph + 1), bin_h));
        int ws = (int)fl(mul_rn(A(pw), bin_w)), we = (int)ce(mul_rn(A(pw + 1), bin_w));
        hs = imin(imax(hs + start_h, 0), H);
        he = imin(imax(he + start_h, 0), H);
        ws = imin(imax(ws + start_w, 0), W);
        we = imin(imax(we + start_w, 0), W);
        if (!has_image) he = hs;  // no image: an empty bin, 0
        const bool empty = he <= hs || we <= ws;

        // torchvision: running max from -FLT_MAX, replaced only on `v > max` (NaN skipped)
        A best[CB];
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) best[cb] = empty ? A(0) : A(FC_NEG_FLT_MAX);
        const T* base = x + ((i64)n * C + c0) * HW;
        for (int h = hs; h < he; ++h) {
            const T* row = base + (i64)h * W;
            for (int wi = ws; wi < we; ++wi) {
#pragma unroll
                for (int cb = 0; cb < CB; ++cb) {
                    if (CB == 1 || c0 + cb < C) {
                        const A v = ld(row + cb * HW + wi);
                        if (v > best[cb]) best[cb] = v;
                    }
                }
            }
        }
        T* ob = out + ((k * C + c0) * PH + ph) * (i64)PW + pw;
#pragma unroll
        for (int cb = 0; cb < CB; ++cb)
            if (CB == 1 || c0 + cb < C) ob[(i64)cb * PH * PW] = from_acc<T>(best[cb]);
    });
}

// The box check of check_boxes=True on the GPU: writes to *bad the number of rows of
// rois (K x 5, C-contiguous) whose coordinates are not all finite or whose batch index
// is not an integer in [0, N).  One block (any size up to 1024 threads) strides over
// the rows and adds up its counts in shared memory, so the host reads back one int
// instead of copying the boxes (the wrapper then copies them only to word the error).
template <typename T>
__global__ void __launch_bounds__(1024)
roi_count_bad_boxes(const T* __restrict__ rois, int K, int N, int* __restrict__ bad) {
    typedef typename Acc<T>::type A;
    __shared__ int counts[1024];
    int mine = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const T* row = rois + (i64)k * 5;
        const A n = ld(row);
        bool ok = n >= A(0) && n < A(N) && n == fl(n);  // false for NaN and +-inf too
        for (int j = 1; j < 5; ++j) {
            const A v = ld(row + j);
            ok = ok && v - v == A(0);  // finite: inf - inf and NaN - NaN are NaN
        }
        mine += ok ? 0 : 1;
    }
    counts[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {  // at most 1024 adds, once per call
        int total = 0;
        for (unsigned t = 0; t < blockDim.x; ++t) total += counts[t];
        *bad = total;
    }
}

}  // namespace fc
