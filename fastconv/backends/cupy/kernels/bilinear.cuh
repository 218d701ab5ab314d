// Bilinear sampling shared by deform_conv2d and roi_align.
//
// The weights and corner offsets of one sample point are computed once
// (bilinear_taps_zero_pad / bilinear_taps_clamp_edge) and then applied to as many
// channel planes as share that point (bilinear_apply), so the coordinate work is
// amortised over channels.  The two functions implement the two edge rules of the
// contract -- they differ on purpose:
//
//   zero padding (deform_conv2d, torchvision's deform bilinear):
//     the sample is 0 if py <= -1, py >= H, px <= -1 or px >= W; otherwise each of
//     the 4 corners contributes only if it lies inside the image.
//   replicate edge (roi_align, torchvision's roi_align bilinear):
//     the sample is 0 if y < -1, y > H, x < -1 or x > W; otherwise y, x in [-1, 0)
//     clamp to 0 and a low corner at >= H-1 (W-1) clamps to H-1 (W-1).
//
// Corners that do not contribute are not loaded (their value is 0, not weight 0),
// so NaN/Inf in the data propagate exactly as in torchvision.
#pragma once

#include "common.cuh"

namespace fc {

template <typename A>
struct BilinearTaps {
    i64 o1, o2, o3, o4;  // offsets of the corners (y_lo,x_lo) (y_lo,x_hi) (y_hi,x_lo) (y_hi,x_hi)
    A w1, w2, w3, w4;    // their weights
    bool v1, v2, v3, v4; // whether each corner is loaded
    int yl, xl;          // zero-padding rule only: the unclamped low corner, in [-1, H-1] x
                         // [-1, W-1], so a loaded corner is at (yl*W + xl) + {0, 1, W, W+1}
};

// deform_conv2d rule.  Returns false when the sample is exactly 0 (nothing to load).
template <typename A>
__device__ __forceinline__ bool bilinear_taps_zero_pad(A py, A px, int H, int W,
                                                       BilinearTaps<A>& b) {
    if (py <= A(-1) || py >= A(H) || px <= A(-1) || px >= A(W)) return false;
    if (!(py == py) || !(px == px)) {  // NaN coordinate: the result is NaN, load nothing
        b.w1 = b.w2 = b.w3 = b.w4 = py + px;
        b.o1 = b.o2 = b.o3 = b.o4 = 0;
        b.v1 = b.v2 = b.v3 = b.v4 = false;
        b.yl = b.xl = 0;
        return true;
    }
    const A fy = fl(py), fx = fl(px);
    const int yl = (int)fy, xl = (int)fx;  // in [-1, H-1], [-1, W-1]
    const int yh = yl + 1, xh = xl + 1;
    b.yl = yl; b.xl = xl;
    const A ly = py - fy, lx = px - fx;
    const A hy = A(1) - ly, hx = A(1) - lx;
    b.w1 = hy * hx; b.w2 = hy * lx; b.w3 = ly * hx; b.w4 = ly * lx;
    const bool yl_ok = yl >= 0, yh_ok = yh <= H - 1, xl_ok = xl >= 0, xh_ok = xh <= W - 1;
    b.v1 = yl_ok && xl_ok; b.v2 = yl_ok && xh_ok; b.v3 = yh_ok && xl_ok; b.v4 = yh_ok && xh_ok;
    const i64 ryl = (i64)imax(yl, 0) * W, ryh = (i64)imin(yh, H - 1) * W;
    const int cxl = imax(xl, 0), cxh = imin(xh, W - 1);
    b.o1 = ryl + cxl; b.o2 = ryl + cxh; b.o3 = ryh + cxl; b.o4 = ryh + cxh;
    return true;
}

// roi_align rule.  Returns false when the sample contributes 0 (it still counts).
template <typename A>
__device__ __forceinline__ bool bilinear_taps_clamp_edge(A y, A x, int H, int W,
                                                         BilinearTaps<A>& b) {
    if (y < A(-1) || y > A(H) || x < A(-1) || x > A(W)) return false;
    if (y <= A(0)) y = A(0);
    if (x <= A(0)) x = A(0);
    int yl = (int)y, xl = (int)x, yh, xh;
    if (yl >= H - 1) { yh = yl = H - 1; y = (A)yl; } else { yh = yl + 1; }
    if (xl >= W - 1) { xh = xl = W - 1; x = (A)xl; } else { xh = xl + 1; }
    const A ly = y - (A)yl, lx = x - (A)xl;
    const A hy = A(1) - ly, hx = A(1) - lx;
    b.w1 = hy * hx; b.w2 = hy * lx; b.w3 = ly * hx; b.w4 = ly * lx;
    b.v1 = b.v2 = b.v3 = b.v4 = true;
    const i64 ryl = (i64)yl * W, ryh = (i64)yh * W;
    b.o1 = ryl + xl; b.o2 = ryl + xh; b.o3 = ryh + xl; b.o4 = ryh + xh;
    return true;
}

// The interpolated value of one channel plane at the point described by `b`.
template <typename T, typename A>
__device__ __forceinline__ A bilinear_apply(const T* __restrict__ plane, const BilinearTaps<A>& b) {
    const A v1 = b.v1 ? ld(plane + b.o1) : A(0);
    const A v2 = b.v2 ? ld(plane + b.o2) : A(0);
    const A v3 = b.v3 ? ld(plane + b.o3) : A(0);
    const A v4 = b.v4 ? ld(plane + b.o4) : A(0);
    return b.w1 * v1 + b.w2 * v2 + b.w3 * v3 + b.w4 * v4;
}

}  // namespace fc
