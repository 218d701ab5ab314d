// deform_conv2d, first stage: deformable im2col.
//
// One thread per (image, offset group, tap, output pixel), output x fastest, so the
// offset/mask reads and the column writes are coalesced.  The thread reads its
// (dy, dx) and mask once, computes the bilinear corner offsets and weights once
// (zero-padding rule, bilinear.cuh) and applies them to every input channel of its
// offset group:
//
//   col[n, c*kH*kW + t, y, x] = mask * bilinear(x[n, c], py, px)
//
// The second stage is the conv2d GEMM of conv.cu on `col` as a 1x1 convolution
// with the weight viewed as (C_out, C_in/groups * kH * kW, 1, 1); the launcher
// (deform.py) processes the batch in chunks so that `col` stays bounded.
#include "common.cuh"
#include "bilinear.cuh"

namespace fc {

template <typename T>
__global__ void __launch_bounds__(256)
deform_im2col(const T* __restrict__ x, const T* __restrict__ offset, const T* __restrict__ mask,
              T* __restrict__ col, int n0, int nb, int C_in, int H, int W, int Ho, int Wo,
              int kH, int kW, int sH, int sW, int pH, int pW, int dH, int dW, int G,
              int has_mask) {
    typedef typename Acc<T>::type A;
    const int kHW = kH * kW;
    const int Cper = C_in / G;
    const i64 HW = (i64)H * W, HWo = (i64)Ho * Wo;
    const i64 colStride = (i64)kHW * HWo;  // between consecutive channels in col
    const i64 total = (i64)nb * G * kHW * HWo;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (i64)gridDim.x * blockDim.x) {
        const i64 yx = idx % HWo;
        i64 rest = idx / HWo;
        const int t = (int)(rest % kHW);
        rest /= kHW;
        const int g = (int)(rest % G);
        const i64 nl = rest / G;  // image within the chunk
        const i64 n = n0 + nl;
        const int y = (int)(yx / Wo), xo = (int)(yx - (i64)y * Wo);
        const int i = t / kW, j = t - i * kW;

        const i64 tap = (i64)g * kHW + t;  // offset group g, tap t
        const T* off = offset + (n * 2 * G * kHW + 2 * tap) * HWo + yx;
        const A dy = ld(off), dx = ld(off + HWo);
        const A m = has_mask ? ld(mask + (n * G * kHW + tap) * HWo + yx) : A(1);
        const A py = A(y * sH - pH + i * dH) + dy;
        const A px = A(xo * sW - pW + j * dW) + dx;

        BilinearTaps<A> b;
        const bool inside = bilinear_taps_zero_pad(py, px, H, W, b);
        const T* src = x + (n * C_in + (i64)g * Cper) * HW;
        T* dst = col + ((nl * C_in + (i64)g * Cper) * kHW + t) * HWo + yx;
        for (int cl = 0; cl < Cper; ++cl) {
            const A v = inside ? bilinear_apply(src + (i64)cl * HW, b) : A(0);
            dst[(i64)cl * colStride] = from_acc<T>(m * v);
        }
    }
}

}  // namespace fc
