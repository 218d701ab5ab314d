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
//
// deform_conv2d_gemm does both stages in one kernel (no column buffer): see below.
#include "common.cuh"
#include "bilinear.cuh"
#include "gemm.cuh"

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

// deform_conv2d in one kernel: conv2d_gemm's implicit GEMM (gemm.cuh),
//   out[n, g*Kg + k, y, x] = sum over r = (c, t) of W[g*Kg + k, r] * B[r, p = (n, y, x)],
// with B[r, p] = mask * bilinear(x[n, g*Cg + c], py, px) sampled while the GEMM loads
// the slice, instead of written to a column buffer and read back.  Work items are
// (128-column tile of p, 64 output channels, group, split of the reduction), as in
// conv2d_gemm.  Each starts by tabulating in dynamic shared memory the sampling set-up of
// every (offset group of the group's channels, tap, column): the 4 corner weights times
// the mask, the low corner's offset yl*W + xl (int: the launcher checks H*W < 2^31) and
// which corners are loaded.  That is one offset/mask read and one bilinear set-up per
// entry, as in deform_im2col; a B element then costs one 128-bit shared-memory load of its
// 4 weights (float), its <= 4 global loads and 4 multiply-adds.
//
// Table layout (E = og_span * kH*kW * 128 entries, og_span = most offset groups one
// group's channels span): A weights[E][4] (mask * w1..w4), int low[E], uchar loaded[E].
template <typename T, int KSZ, bool VEC>
__global__ void __launch_bounds__(256)
deform_conv2d_gemm(const T* __restrict__ x, const T* __restrict__ offset,
                   const T* __restrict__ mask, const T* __restrict__ w,
                   const T* __restrict__ bias, T* __restrict__ out, int N, int C_in, int H,
                   int W, int C_out, int Ho, int Wo, int kH_, int kW_, int sH, int sW, int pH,
                   int pW, int dH, int dW, int groups, int G, int og_span, int has_mask,
                   int has_bias, int splits, int r_slice,
                   typename Acc<T>::type* __restrict__ part) {
    typedef typename Acc<T>::type A;
    typedef GemmTile<64, VEC> Tile;
    constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, TM = Tile::TM, TN = Tile::TN;
    __shared__ __align__(16) A As[BK][BM + 4];
    __shared__ __align__(16) A Bs[BK][BN];
    FC_DYNAMIC_SMEM(A, table);

    const int kH = KSZ ? KSZ : kH_, kW = KSZ ? KSZ : kW_;
    const int kHW = kH * kW;
    const int E = og_span * kHW * BN;
    A* const tw = table;                                                  // [E][4]
    int* const tlow = reinterpret_cast<int*>(table + 4 * E);              // [E]
    unsigned char* const tload = reinterpret_cast<unsigned char*>(tlow + E);  // [E]

    const int Cg = C_in / groups, Kg = C_out / groups, Cpo = C_in / G;
    const int R = Cg * kHW;
    const i64 HW = (i64)H * W;
    const GemmWork<Tile> wk(N, Ho, Wo, Kg, groups, splits);
    const i64 HWo = wk.HWo, P = wk.P;
    const int tid = threadIdx.x, a_r = wk.a_r, a_m = wk.a_m, b_p = wk.b_p, b_r = wk.b_r;

    for (i64 item = blockIdx.x; item < wk.items; item += gridDim.x) {
        const GemmItem<Tile> it(item, wk.pTiles, wk.mTiles, groups, r_slice, R);
        const int g = it.g;
        const i64 p0 = it.p0;
        const int og0 = (g * Cg) / Cpo;  // the offset group of the group's first channel

        // The table.  The previous item's last reads of it came before gemm_mainloop's
        // final __syncthreads, so it may be overwritten now.
        for (int e = tid; e < E; e += blockDim.x) {
            const int col = e % BN, rest_e = e / BN;
            const int t = rest_e % kHW, og = og0 + rest_e / kHW;
            const i64 p = p0 + col;
            BilinearTaps<A> b;
            bool inside = false;
            A m = A(0);
            if (p < P && og < G) {
                const i64 n = p / HWo;
                const i64 yx = p - n * HWo;
                const int y = (int)(yx / Wo), xo = (int)(yx - (i64)y * Wo);
                const int i = t / kW, j = t - i * kW;
                const i64 tap = (i64)og * kHW + t;
                const T* off = offset + (n * 2 * G * kHW + 2 * tap) * HWo + yx;
                const A dy = ld(off), dx = ld(off + HWo);
                m = has_mask ? ld(mask + (n * G * kHW + tap) * HWo + yx) : A(1);
                const A py = A(y * sH - pH + i * dH) + dy;
                const A px = A(xo * sW - pW + j * dW) + dx;
                inside = bilinear_taps_zero_pad(py, px, H, W, b);
            }
            if (!inside) {  // the sample is 0 (times the mask, as deform_im2col has it)
                b.w1 = b.w2 = b.w3 = b.w4 = A(0);
                b.v1 = b.v2 = b.v3 = b.v4 = false;
                b.yl = b.xl = 0;
            }
            tw[4 * e] = m * b.w1;  // the mask folded into the weights
            tw[4 * e + 1] = m * b.w2;
            tw[4 * e + 2] = m * b.w3;
            tw[4 * e + 3] = m * b.w4;
            tlow[e] = b.yl * W + b.xl;
            tload[e] = (unsigned char)((b.v1 ? 1 : 0) | (b.v2 ? 2 : 0) | (b.v3 ? 4 : 0) |
                                       (b.v4 ? 8 : 0));
        }
        __syncthreads();

        // The one output pixel whose column of B this thread loads.
        const i64 pb = p0 + b_p;
        const bool pb_ok = pb < P;
        const T* xb = x;
        if (pb_ok) xb = x + ((pb / HWo) * C_in + (i64)g * Cg) * HW;
        const T* wg = w + (i64)g * Kg * R;

        // B element (c, t): mask * bilinear(x[n, g*Cg + c]) at tap t, from the table
        auto load_slice = [&](int r0, A (&ra)[4], A (&rb)[8]) {
            conv_load_slice(ra, rb, wg, it.m0 + a_m, a_r, b_r, r0, Kg, R, kHW, pb_ok,
                            [&](int c, int t) {
                const int ogl = og_span == 1 ? 0 : (g * Cg + c) / Cpo - og0;
                const int e = (ogl * kHW + t) * BN + b_p;
                const unsigned loaded = tload[e];
                const T* src = xb + (c * HW + tlow[e]);
                // as bilinear_apply: corners not loaded are 0, not weight 0
                const A v1 = (loaded & 1) ? ld(src) : A(0);
                const A v2 = (loaded & 2) ? ld(src + 1) : A(0);
                const A v3 = (loaded & 4) ? ld(src + W) : A(0);
                const A v4 = (loaded & 8) ? ld(src + W + 1) : A(0);
                A wv[4];
                lds4(wv, tw + 4 * e);  // one 128-bit load (float), two for double
                return wv[0] * v1 + wv[1] * v2 + wv[2] * v3 + wv[3] * v4;
            });
        };

        A acc[TM][TN];
        gemm_mainloop<Tile>(acc, As, Bs, it.r_begin, it.r_end, load_slice);
        gemm_store_nchw<Tile>(out, part, acc, it, P, HWo, C_out, Kg, splits, bias, has_bias);
    }
}

}  // namespace fc
