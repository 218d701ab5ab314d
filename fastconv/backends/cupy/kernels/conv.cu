// conv2d and conv_transpose2d (NCHW), templates over the storage type T
// (float, double, __half; arithmetic in Acc<T>::type).
//
// Kernels (the launcher, conv.py, picks one per call):
//   conv2d_gemm<T, KSZ>          implicit GEMM for many output channels per group:
//                                out[k, p] = sum_r W[k, r] * im2col(x)[r, p] with
//                                r = (c, i, j) and p = (n, y, x); 64x128 tiles of
//                                (k, p) per block, 16-deep slices of r staged in shared
//                                memory (weights and gathered inputs), 8x4 register tile
//                                per thread, next slice prefetched into registers while
//                                the current one is multiplied.  KSZ = 1 or 3 fixes a
//                                square kernel size at compile time, 0 = any.  Split-K:
//                                with splits > 1 the reduction is cut into slices of
//                                r_slice rows (a multiple of 16), one work item each, and
//                                the partial sums go to part[s][n][k][y][x] (in Acc<T>);
//                                conv_sum_splits adds them up with the bias.  That fills
//                                the GPU when there are few (k, p) tiles and a long r.
//                                BM, VEC: gemm.cuh's GemmTile (64, false by default); the
//                                VEC tiles also order the reduction tap-major when C_in
//                                per group is a multiple of 16 (one tap per slice).
//   conv_sum_splits<T>           out = sum over s of part[s] (+ bias): the split-K epilogue.
//   conv2d_direct<T, KB>         few output channels per group (grouped convs): one
//                                thread per output pixel computing KB output channels;
//                                the group's weights are staged in shared memory in
//                                chunks of CB input channels.
//   conv2d_depthwise_tiled<T, KSZ, LOADS>  one input channel per group (depthwise,
//                                channel multiplier M = C_out / groups): a 32x32 output tile
//                                of one (n, k) plane per block; its input tile (with halo) and
//                                the kernel go to shared memory (LOADS loads in flight per
//                                thread), each thread computes 4 rows.
//   conv2d_depthwise_direct<T>   depthwise without shared memory (tiles that would not
//                                fit: large strides/dilations/kernels).
//   conv_transpose2d_gemm<T>     transposed conv as one implicit GEMM per output phase
//                                (sH x sW phases, each a stride-1 correlation with the
//                                taps that land on it), sharing conv2d_gemm's main loop.
//   conv_transpose2d_direct<T, KB>  transposed conv by gathering (no atomics): each thread
//                                owns one output pixel and KB output channels and sums the
//                                input pixels that land on it; only the taps with
//                                (y + pH - i*dH) % sH == 0 are visited (first tap found by
//                                search, then steps of sH / gcd(sH, dH)).
//
// All kernels: 1-D blocks, grid-stride loops over 64-bit work-item counters, and
// consecutive threads own consecutive output x (coalesced stores).  Work items are
// block-uniform, so every thread reaches every __syncthreads().
#include "common.cuh"
#include "gemm.cuh"

namespace fc {

// ------------------------------------------------------------------ conv2d: implicit GEMM

template <typename T, int KSZ, int BM_, bool VEC>
__global__ void __launch_bounds__(256, (gemm_min_blocks<GemmTile<BM_, VEC>, T>))
conv2d_gemm(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
            T* __restrict__ out, int N, int C_in, int H, int W, int C_out, int Ho, int Wo,
            int kH_, int kW_, int sH, int sW, int pH, int pW, int dH, int dW, int groups,
            int has_bias, int splits, int r_slice, typename Acc<T>::type* __restrict__ part) {
    typedef typename Acc<T>::type A;
    typedef GemmTile<BM_, VEC> G;
    constexpr int BM = G::BM, BN = G::BN, BK = G::BK, TM = G::TM, TN = G::TN, AQ = G::AQ;
    __shared__ __align__(16) A As[BK][BM + 4];
    __shared__ __align__(16) A Bs[BK][BN];

    const int kH = KSZ ? KSZ : kH_, kW = KSZ ? KSZ : kW_;
    const int kHW = kH * kW;
    const int Cg = C_in / groups, Kg = C_out / groups;
    const int R = Cg * kHW;
    const i64 HW = (i64)H * W;
    const GemmWork<G> wk(N, Ho, Wo, Kg, groups, splits);
    const i64 HWo = wk.HWo, P = wk.P;
    const int a_r = wk.a_r, a_m = wk.a_m, b_p = wk.b_p, b_r = wk.b_r;

    for (i64 item = blockIdx.x; item < wk.items; item += gridDim.x) {
        const GemmItem<G> it(item, wk.pTiles, wk.mTiles, groups, r_slice, R);
        const int g = it.g;

        // The one output pixel whose column of im2col(x) this thread gathers.
        const i64 pb = it.p0 + b_p;
        const bool pb_ok = pb < P;
        int iy0 = 0, ix0 = 0;
        const T* xb = x;
        if (pb_ok) {
            const i64 n = pb / HWo;
            const i64 yx = pb - n * HWo;
            const int y = (int)(yx / Wo), xo = (int)(yx - (i64)y * Wo);
            iy0 = y * sH - pH;
            ix0 = xo * sW - pW;
            xb = x + ((i64)n * C_in + (i64)g * Cg) * HW;
        }
        const T* wg = w + (i64)g * Kg * R;  // rows of this group's output channels

        // B = im2col(x): element (c, t) is x[n, g*Cg + c] at this pixel's tap t (0 in the padding)
        auto load_slice = [&](int r0, A (&ra)[AQ], A (&rb)[8]) {
            conv_load_slice(ra, rb, wg, it.m0 + a_m, a_r, b_r, r0, Kg, R, kHW, pb_ok,
                            [&](int c, int t) {
                const int i = t / kW, j = t - i * kW;
                const int iy = iy0 + i * dH, ix = ix0 + j * dW;
                return (in_range(iy, H) && in_range(ix, W)) ? ld(xb + c * HW + (i64)iy * W + ix)
                                                            : A(0);
            });
        };

        A acc[TM][TN];
        bool tap_major = false;
        if constexpr (VEC) tap_major = Cg > 0 && Cg % BK == 0;
        if (tap_major) {
            // Tap-major reduction order r = t * Cg + c: a 16-deep slice (and a split-K
            // slice, r_slice % 16 == 0) is 16 channels of one tap, so the tap, its input
            // offset and its padding test are worked out once per slice instead of once per
            // element; the 8 elements are then 8 channels 2*HW apart.
            auto load_tap_major = [&](int r0, A (&ra)[AQ], A (&rb)[8]) {
                const int t = r0 / Cg, c0 = r0 - t * Cg;  // the same for the whole block
                const int i = t / kW, j = t - i * kW;
                const T* wr = wg + (i64)(it.m0 + a_m) * R + (i64)(c0 + a_r) * kHW + t;
#pragma unroll
                for (int q = 0; q < AQ; ++q)
                    ra[q] = it.m0 + a_m + 16 * q < Kg ? ld(wr + (i64)(16 * q) * R) : A(0);
                load_tap_column(rb, xb, c0 + b_r, HW, iy0 + i * dH, ix0 + j * dW, H, W, pb_ok);
            };
            gemm_mainloop<G>(acc, As, Bs, it.r_begin, it.r_end, load_tap_major);
        } else {
            gemm_mainloop<G>(acc, As, Bs, it.r_begin, it.r_end, load_slice);
        }
        gemm_store_nchw<G>(out, part, acc, it, P, HWo, C_out, Kg, splits, bias, has_bias);
    }
}

template <typename T>
__global__ void __launch_bounds__(256)
conv_sum_splits(const typename Acc<T>::type* __restrict__ part, const T* __restrict__ bias,
                T* __restrict__ out, i64 total, int C_out, i64 HWo, int splits, int has_bias) {
    typedef typename Acc<T>::type A;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        A v = has_bias ? ld(bias + (int)((e / HWo) % C_out)) : A(0);
        for (int s = 0; s < splits; ++s) v += part[(i64)s * total + e];
        out[e] = from_acc<T>(v);
    }
}

// ------------------------------------------------------------------ conv2d: direct

template <typename T, int KB>
__global__ void __launch_bounds__(256)
conv2d_direct(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
              T* __restrict__ out, int N, int C_in, int H, int W, int C_out, int Ho, int Wo,
              int kH, int kW, int sH, int sW, int pH, int pW, int dH, int dW, int groups,
              int has_bias, int CB) {
    typedef typename Acc<T>::type A;
    FC_DYNAMIC_SMEM(A, ws);  // [CB][kH][kW][KB]

    const int kHW = kH * kW;
    const int Cg = C_in / groups, Kg = C_out / groups;
    const int kChunks = (Kg + KB - 1) / KB;
    const i64 HW = (i64)H * W, HWo = (i64)Ho * Wo;
    const i64 P = (i64)N * HWo;
    const int bs = blockDim.x, tid = threadIdx.x;
    const i64 pTiles = (P + bs - 1) / bs;
    const i64 items = pTiles * kChunks * groups;

    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        const i64 pt = item % pTiles;
        const i64 rest = item / pTiles;
        const int kc = (int)(rest % kChunks), g = (int)(rest / kChunks);
        const int k0 = kc * KB;

        const i64 p = pt * bs + tid;
        const bool ok = p < P;
        i64 n = 0, yx = 0;
        int iy0 = 0, ix0 = 0;
        if (ok) {
            n = p / HWo;
            yx = p - n * HWo;
            const int y = (int)(yx / Wo), xo = (int)(yx - (i64)y * Wo);
            iy0 = y * sH - pH;
            ix0 = xo * sW - pW;
        }
        const T* xb = x + ((i64)n * C_in + (i64)g * Cg) * HW;

        A acc[KB];
#pragma unroll
        for (int kb = 0; kb < KB; ++kb) acc[kb] = A(0);

        for (int c0 = 0; c0 < Cg; c0 += CB) {
            const int cn = imin(CB, Cg - c0);
            const int total = cn * kHW * KB;
            __syncthreads();
            for (int e = tid; e < total; e += bs) {
                const int kb = e % KB, ct = e / KB;  // ct = cl * kHW + t
                const int k = k0 + kb;
                ws[e] = (k < Kg) ? ld(w + ((i64)(g * Kg + k) * Cg + c0) * kHW + ct) : A(0);
            }
            __syncthreads();
            if (!ok) continue;
            for (int cl = 0; cl < cn; ++cl) {
                const T* plane = xb + (i64)(c0 + cl) * HW;
                const A* wc = ws + cl * kHW * KB;
                for (int i = 0; i < kH; ++i) {
                    const int iy = iy0 + i * dH;
                    const bool row_in = in_range(iy, H);
                    const T* row = plane + (i64)(row_in ? iy : 0) * W;
                    const A* wr = wc + i * kW * KB;
                    for (int j = 0; j < kW; ++j) {
                        const int ix = ix0 + j * dW;
                        // a padding tap multiplies a zero (not skipped): 0 * inf = NaN, as
                        // in the oracle and the GEMM path
                        const A v = (row_in && in_range(ix, W)) ? ld(row + ix) : A(0);
                        const A* wt = wr + j * KB;
#pragma unroll
                        for (int kb = 0; kb < KB; ++kb) acc[kb] += v * wt[kb];
                    }
                }
            }
        }
        if (ok) {
            T* ob = out + ((i64)n * C_out + (i64)g * Kg + k0) * HWo + yx;
#pragma unroll
            for (int kb = 0; kb < KB; ++kb) {
                if (k0 + kb < Kg) {
                    const A bv = has_bias ? ld(bias + g * Kg + k0 + kb) : A(0);
                    ob[(i64)kb * HWo] = from_acc<T>(acc[kb] + bv);
                }
            }
        }
    }
}

// ------------------------------------------------------------------ conv2d: depthwise

template <typename T, int KSZ, int LOADS>
__global__ void __launch_bounds__(256)
conv2d_depthwise_tiled(const T* __restrict__ x, const T* __restrict__ w,
                       const T* __restrict__ bias, T* __restrict__ out, int N, int C_in, int H,
                       int W, int C_out, int Ho, int Wo, int kH_, int kW_, int sH, int sW,
                       int pH, int pW, int dH, int dW, int groups, int has_bias) {
    typedef typename Acc<T>::type A;
    constexpr int TW = 32, TH = 32, ROWS = TH / 8;  // 256 threads = 32 (x) x 8 (y), 4 rows each
    FC_DYNAMIC_SMEM(A, tile);                       // [IH][IW] input tile, then [kH][kW] weights

    const int kH = KSZ ? KSZ : kH_, kW = KSZ ? KSZ : kW_;
    const int kHW = kH * kW;
    const int IW = (TW - 1) * sW + (kW - 1) * dW + 1;
    const int IH = (TH - 1) * sH + (kH - 1) * dH + 1;
    const int tileSize = IH * IW;
    A* wsh = tile + tileSize;
    const int M = C_out / groups;  // channel multiplier; input channel of output k is k / M
    const i64 HW = (i64)H * W;
    const int tilesX = (Wo + TW - 1) / TW, tilesY = (Ho + TH - 1) / TH;
    const i64 planes = (i64)N * C_out;
    const i64 items = planes * tilesY * tilesX;
    const int tid = threadIdx.x, tx = tid & 31, ty = tid >> 5;

    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        const int tX = (int)(item % tilesX);
        const i64 rest = item / tilesX;
        const int tY = (int)(rest % tilesY);
        const i64 plane = rest / tilesY;
        const i64 n = plane / C_out;
        const int k = (int)(plane - n * C_out);
        const int c = k / M;
        const int oy0 = tY * TH, ox0 = tX * TW;
        const int iy0 = oy0 * sH - pH, ix0 = ox0 * sW - pW;
        const T* src = x + ((i64)n * C_in + c) * HW;

        __syncthreads();  // the previous item's tile is no longer read
        // LOADS elements per thread are loaded into registers before any is stored: a store
        // waits for its load, so one element at a time costs one memory latency per 256
        // elements of the tile (5 in a row for a 34x34 tile) where LOADS = 4 costs 2
        if constexpr (LOADS == 1) {
            for (int e = tid; e < tileSize; e += 256) {
                const int ly = e / IW, lx = e - ly * IW;
                const int iy = iy0 + ly, ix = ix0 + lx;
                tile[e] = (in_range(iy, H) && in_range(ix, W)) ? ld(src + (i64)iy * W + ix)
                                                               : A(0);
            }
        } else {
            for (int e0 = tid; e0 < tileSize; e0 += 256 * LOADS) {
                A v[LOADS];
#pragma unroll
                for (int u = 0; u < LOADS; ++u) {
                    const int e = e0 + 256 * u;
                    const int ly = e / IW, lx = e - ly * IW;
                    const int iy = iy0 + ly, ix = ix0 + lx;
                    v[u] = (e < tileSize && in_range(iy, H) && in_range(ix, W))
                               ? ld(src + (i64)iy * W + ix) : A(0);
                }
#pragma unroll
                for (int u = 0; u < LOADS; ++u)
                    if (e0 + 256 * u < tileSize) tile[e0 + 256 * u] = v[u];
            }
        }
        for (int e = tid; e < kHW; e += 256) wsh[e] = ld(w + (i64)k * kHW + e);
        __syncthreads();

        const A bv = has_bias ? ld(bias + k) : A(0);
        const int ox = ox0 + tx;
        T* ob = out + plane * Ho * (i64)Wo;
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const int oyl = ty + 8 * r, oy = oy0 + oyl;
            if (ox < Wo && oy < Ho) {
                A acc = A(0);
                const A* t0 = tile + oyl * sH * IW + tx * sW;
#pragma unroll
                for (int i = 0; i < kH; ++i) {
                    const A* trow = t0 + i * dH * IW;
#pragma unroll
                    for (int j = 0; j < kW; ++j) acc += trow[j * dW] * wsh[i * kW + j];
                }
                ob[(i64)oy * Wo + ox] = from_acc<T>(acc + bv);
            }
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(256)
conv2d_depthwise_direct(const T* __restrict__ x, const T* __restrict__ w,
                        const T* __restrict__ bias, T* __restrict__ out, int N, int C_in, int H,
                        int W, int C_out, int Ho, int Wo, int kH, int kW, int sH, int sW, int pH,
                        int pW, int dH, int dW, int groups, int has_bias) {
    typedef typename Acc<T>::type A;
    const int M = C_out / groups;
    const int kHW = kH * kW;
    const i64 HW = (i64)H * W;
    const i64 total = (i64)N * C_out * Ho * Wo;
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (i64)gridDim.x * blockDim.x) {
        const int xo = (int)(idx % Wo);
        const i64 t = idx / Wo;
        const int y = (int)(t % Ho);
        const i64 plane = t / Ho;
        const i64 n = plane / C_out;
        const int k = (int)(plane - n * C_out);
        const T* src = x + ((i64)n * C_in + k / M) * HW;
        const T* wk = w + (i64)k * kHW;
        const int iy0 = y * sH - pH, ix0 = xo * sW - pW;
        A acc = A(0);
        for (int i = 0; i < kH; ++i) {
            const int iy = iy0 + i * dH;
            const bool row_in = in_range(iy, H);
            const T* row = src + (i64)(row_in ? iy : 0) * W;
            for (int j = 0; j < kW; ++j) {
                const int ix = ix0 + j * dW;
                // padding is a zero that is multiplied (0 * inf = NaN, as in the oracle)
                const A v = (row_in && in_range(ix, W)) ? ld(row + ix) : A(0);
                acc += v * ld(wk + i * kW + j);
            }
        }
        out[idx] = from_acc<T>(acc + (has_bias ? ld(bias + k) : A(0)));
    }
}

// ------------------------------------------------------------------ conv_transpose2d: gather

template <typename T, int KB>
__global__ void __launch_bounds__(256)
conv_transpose2d_direct(const T* __restrict__ x, const T* __restrict__ w,
                        const T* __restrict__ bias, T* __restrict__ out, int N, int C_in, int H,
                        int W, int C_out, int Ho, int Wo, int kH, int kW, int sH, int sW, int pH,
                        int pW, int dH, int dW, int groups, int has_bias, int stepH, int stepW,
                        int CB, const int* __restrict__ nonfinite, int guard_blocks) {
    typedef typename Acc<T>::type A;
    FC_DYNAMIC_SMEM(A, ws);  // [CB][kH][kW][KB]

    if (guard_blocks > 0) {
        // the exact pass after the phase GEMM (exact_if_nonfinite): runs only where
        // nonfinite_blocks found an inf/NaN weight (block-uniform exit).  The flag lives in
        // ws[0], not in a static __shared__ variable: the launcher gives ws up to the whole
        // 48 KiB a block may have without opting in, so any static byte would fail the
        // launch.  Every thread reads it before the first barrier of the loop below, after
        // which ws is staged over.
        if (threadIdx.x == 0) ws[0] = A(0);
        __syncthreads();
        if ((int)threadIdx.x < guard_blocks && nonfinite[threadIdx.x]) ws[0] = A(1);
        __syncthreads();
        if (ws[0] == A(0)) return;
    }

    const int kHW = kH * kW;
    const int Cg = C_in / groups, Kg = C_out / groups;  // weight is (C_in, Kg, kH, kW)
    const int kChunks = (Kg + KB - 1) / KB;
    const i64 HW = (i64)H * W, HWo = (i64)Ho * Wo;
    const i64 P = (i64)N * HWo;
    const int bs = blockDim.x, tid = threadIdx.x;
    const i64 pTiles = (P + bs - 1) / bs;
    const i64 items = pTiles * kChunks * groups;

    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        const i64 pt = item % pTiles;
        const i64 rest = item / pTiles;
        const int kc = (int)(rest % kChunks), g = (int)(rest / kChunks);
        const int k0 = kc * KB;

        const i64 p = pt * bs + tid;
        bool ok = p < P;
        i64 n = 0, yx = 0;
        int y = 0, xo = 0, i_first = -1, j_first = -1;
        if (ok) {
            n = p / HWo;
            yx = p - n * HWo;
            y = (int)(yx / Wo);
            xo = (int)(yx - (i64)y * Wo);
            // taps with (y + pH - i*dH) % sH == 0 are i_first + m * stepH
            const int ry = (y + pH) % sH, rx = (xo + pW) % sW;
            for (int i = 0; i < imin(stepH, kH); ++i)
                if ((i * dH) % sH == ry) { i_first = i; break; }
            for (int j = 0; j < imin(stepW, kW); ++j)
                if ((j * dW) % sW == rx) { j_first = j; break; }
        }
        const bool any = ok && i_first >= 0 && j_first >= 0;
        const T* xb = x + ((i64)n * C_in + (i64)g * Cg) * HW;

        A acc[KB];
#pragma unroll
        for (int kb = 0; kb < KB; ++kb) acc[kb] = A(0);

        for (int c0 = 0; c0 < Cg; c0 += CB) {
            const int cn = imin(CB, Cg - c0);
            const int total = cn * kHW * KB;
            __syncthreads();
            for (int e = tid; e < total; e += bs) {
                const int kb = e % KB, ct = e / KB;  // ct = cl * kHW + t
                const int cl = ct / kHW, t = ct - cl * kHW;
                const int k = k0 + kb;
                ws[e] = (k < Kg) ? ld(w + ((i64)(g * Cg + c0 + cl) * Kg + k) * kHW + t) : A(0);
            }
            __syncthreads();
            if (!any) continue;
            for (int i = i_first; i < kH; i += stepH) {
                const int ty_ = y + pH - i * dH;
                if (ty_ < 0) break;
                const int iy = ty_ / sH;
                if (iy >= H) continue;
                for (int j = j_first; j < kW; j += stepW) {
                    const int tx_ = xo + pW - j * dW;
                    if (tx_ < 0) break;
                    const int ix = tx_ / sW;
                    if (ix >= W) continue;
                    const T* src = xb + (i64)c0 * HW + (i64)iy * W + ix;
                    const A* wt = ws + (i * kW + j) * KB;
                    for (int cl = 0; cl < cn; ++cl) {
                        const A v = ld(src + (i64)cl * HW);
                        const A* wc = wt + cl * kHW * KB;
#pragma unroll
                        for (int kb = 0; kb < KB; ++kb) acc[kb] += v * wc[kb];
                    }
                }
            }
        }
        if (ok) {
            T* ob = out + ((i64)n * C_out + (i64)g * Kg + k0) * HWo + yx;
#pragma unroll
            for (int kb = 0; kb < KB; ++kb) {
                if (k0 + kb < Kg) {
                    const A bv = has_bias ? ld(bias + g * Kg + k0 + kb) : A(0);
                    ob[(i64)kb * HWo] = from_acc<T>(acc[kb] + bv);
                }
            }
        }
    }
}

// ------------------------------------------------------------------ non-finite weights

// Whether block b's share of the n values of w (b * blockDim.x + thread, strided by the
// grid) holds an inf or NaN: nonfinite[b] = 1 or 0.  Every block writes its entry, so the
// buffer needs no clearing.  The phase GEMM multiplies the zeros outside the image (its
// B tile is zero-filled), where the oracle's scatter multiplies only real inputs: the same
// unless a weight is infinite or NaN (0 * inf = NaN).  So after the GEMM these flags guard
// an exact pass of conv_transpose2d_direct that runs only where a weight is not finite.
template <typename T>
__global__ void __launch_bounds__(256)
nonfinite_blocks(const T* __restrict__ w, i64 n, int* __restrict__ nonfinite) {
    typedef typename Acc<T>::type A;
    int mine = 0;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        const A v = ld(w + i);
        mine |= !(v - v == A(0));  // inf - inf and NaN - NaN are NaN
    }
    // the block's OR without a shared flag that many threads would write at once (a race,
    // if a benign one, that compute-sanitizer's racecheck reports)
    const int found = __syncthreads_or(mine);
    if (threadIdx.x == 0) nonfinite[blockIdx.x] = found != 0 ? 1 : 0;
}

// ------------------------------------------------------------------ conv_transpose2d: GEMM

// floor(a / b) for b > 0 (C++ division truncates toward zero)
__device__ __forceinline__ int floordiv(int a, int b) {
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Transposed convolution as one implicit GEMM per output phase.  The outputs
// y = ay - pH + sH * u (one phase ay in [0, sH), likewise x) receive only the taps
// i = i0 + stepI * mi with (i * dH - ay) % sH == 0, from input row u - e(i), where
// e(i) = (i * dH - ay) / sH; so each of the sH * sW phases is a stride-1 correlation with
// nI x nJ taps: out[k, p] = sum over r = (c, mi, mj) of W[c, k, i, j] * x[c, u - e(i), .],
// with the batch folded into p as in conv2d_gemm.  Work items are (pixel tile, channel
// tile, group, phase, split); a phase smaller than the largest skips its last pixel tiles.
// Split-K as conv2d_gemm: split s reduces rows [s * r_slice, (s + 1) * r_slice) of its
// phase's R (none, for a phase with fewer rows: its partial sums are then 0) into
// part[s][n][k][y][x], and conv_sum_splits adds the slices and the bias.  BM = 32 or 64
// output channels per tile (GemmTile): 32 for narrow groups such as FCN's 21 classes.
// VEC: gemm.cuh's vector tiles (and 128 rows), with the reduction ordered tap-major when
// the input channels per group are a multiple of 16 (as conv2d_gemm).
template <typename T, int BM_, bool VEC>
__global__ void __launch_bounds__(256, (gemm_min_blocks<GemmTile<BM_, VEC>, T>))
conv_transpose2d_gemm(const T* __restrict__ x, const T* __restrict__ w,
                      const T* __restrict__ bias, T* __restrict__ out, int N, int C_in, int H,
                      int W, int C_out, int Ho, int Wo, int kH, int kW, int sH, int sW, int pH,
                      int pW, int dH, int dW, int groups, int has_bias, int stepI, int stepJ,
                      int splits, int r_slice, typename Acc<T>::type* __restrict__ part) {
    typedef typename Acc<T>::type A;
    typedef GemmTile<BM_, VEC> G;
    constexpr int BM = G::BM, BN = G::BN, BK = G::BK, TM = G::TM, TN = G::TN, AQ = G::AQ;
    __shared__ __align__(16) A As[BK][BM + 4];
    __shared__ __align__(16) A Bs[BK][BN];

    const int Cg = C_in / groups, Kg = C_out / groups;
    const int kHW = kH * kW;
    const i64 HW = (i64)H * W, HWo = (i64)Ho * Wo;
    const i64 pTiles = ((i64)N * ((Ho + sH - 1) / sH) * ((Wo + sW - 1) / sW) + BN - 1) / BN;
    const int mTiles = (Kg + BM - 1) / BM;
    const i64 items = pTiles * mTiles * groups * sH * sW * splits;

    const int tid = threadIdx.x, tx = G::tx();
    const int a_r = tid & (BK - 1), a_m = tid >> 4;  // weight loads: (k = a_m + 16q, r = a_r)
    const int b_p = tid & (BN - 1), b_r = tid >> 7;  // input loads:  (r = b_r + 2q, p = b_p)

    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        const i64 pt = item % pTiles;
        const i64 rest = item / pTiles;
        const int mt = (int)(rest % mTiles);
        const int gps = (int)(rest / mTiles);
        const int g = gps % groups, phase = (gps / groups) % (sH * sW);
        const int split = gps / groups / (sH * sW);
        const int ay = phase / sW, ax = phase - ay * sW;

        // this phase's taps and output rows/columns (uniform over the block)
        int i0 = 0, j0 = 0;
        while (i0 < kH && (i0 * dH - ay) % sH != 0) ++i0;
        while (j0 < kW && (j0 * dW - ax) % sW != 0) ++j0;
        const int nI = i0 < kH ? (kH - i0 + stepI - 1) / stepI : 0;
        const int nJ = j0 < kW ? (kW - j0 + stepJ - 1) / stepJ : 0;
        const int e0y = (i0 * dH - ay) / sH, esy = stepI * dH / sH;  // exact divisions
        const int e0x = (j0 * dW - ax) / sW, esx = stepJ * dW / sW;
        const int u0 = -floordiv(ay - pH, sH), v0 = -floordiv(ax - pW, sW);
        const int Hp = imax(floordiv(Ho - 1 + pH - ay, sH) - u0 + 1, 0);
        const int Wp = imax(floordiv(Wo - 1 + pW - ax, sW) - v0 + 1, 0);
        const i64 HWp = (i64)Hp * Wp;
        const i64 P = (i64)N * HWp;
        const i64 p0 = pt * BN;
        if (p0 >= P) continue;  // block-uniform, before any barrier
        const int m0 = mt * BM;
        const int nIJ = nI * nJ;
        const int R = Cg * nIJ;

        // The one output pixel of this phase whose column of B this thread gathers.
        const i64 pb = p0 + b_p;
        const bool pb_ok = pb < P;
        int iyb = 0, ixb = 0;
        const T* xb = x;
        if (pb_ok) {
            const i64 n = pb / HWp;
            const int uv = (int)(pb - n * HWp);
            const int u = uv / Wp, v = uv - u * Wp;
            iyb = u0 + u - e0y;
            ixb = v0 + v - e0x;
            xb = x + ((i64)n * C_in + (i64)g * Cg) * HW;
        }
        const T* wg = w + (i64)g * Cg * Kg * kHW;  // weight (C_in, Kg, kH, kW), this group

        auto load_slice = [&](int r0, A (&ra)[AQ], A (&rb)[8]) {
            const int ra_r = r0 + a_r;
            const bool ra_ok = ra_r < R;
            const T* wr = wg;
            if (ra_ok) {
                const int c = ra_r / nIJ, t = ra_r - c * nIJ;
                const int mi = t / nJ, mj = t - mi * nJ;
                wr = wg + (i64)c * Kg * kHW + (i0 + mi * stepI) * kW + (j0 + mj * stepJ);
            }
#pragma unroll
            for (int q = 0; q < AQ; ++q) {
                const int m = m0 + a_m + 16 * q;
                ra[q] = (ra_ok && m < Kg) ? ld(wr + (i64)m * kHW) : A(0);
            }
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                const int r = r0 + b_r + 2 * q;
                A v = A(0);
                if (pb_ok && r < R) {
                    const int c = r / nIJ, t = r - c * nIJ;
                    const int mi = t / nJ, mj = t - mi * nJ;
                    const int iy = iyb - mi * esy, ix = ixb - mj * esx;
                    if (in_range(iy, H) && in_range(ix, W)) v = ld(xb + c * HW + (i64)iy * W + ix);
                }
                rb[q] = v;
            }
        };

        A acc[TM][TN];
        const int r_begin = split * r_slice;  // may be >= R: then acc stays 0
        bool tap_major = false;
        if constexpr (VEC) tap_major = Cg > 0 && Cg % BK == 0;
        if (tap_major) {
            // Tap-major reduction order r = t * Cg + c, as conv2d_gemm's: a 16-deep slice
            // is 16 channels of one of the phase's taps t = (mi, mj)
            auto load_tap_major = [&](int r0, A (&ra)[AQ], A (&rb)[8]) {
                if (r0 >= R) {  // a split past this phase's reduction (uniform)
#pragma unroll
                    for (int q = 0; q < AQ; ++q) ra[q] = A(0);
#pragma unroll
                    for (int q = 0; q < 8; ++q) rb[q] = A(0);
                    return;
                }
                const int t = r0 / Cg, c0 = r0 - t * Cg;  // the same for the whole block
                const int mi = t / nJ, mj = t - mi * nJ;
                const T* wr = wg + (i64)(c0 + a_r) * Kg * kHW + (i0 + mi * stepI) * kW +
                              (j0 + mj * stepJ);
#pragma unroll
                for (int q = 0; q < AQ; ++q) {
                    const int m = m0 + a_m + 16 * q;
                    ra[q] = m < Kg ? ld(wr + (i64)m * kHW) : A(0);
                }
                load_tap_column(rb, xb, c0 + b_r, HW, iyb - mi * esy, ixb - mj * esx, H, W,
                                pb_ok);
            };
            gemm_mainloop<G>(acc, As, Bs, r_begin, imin(r_begin + r_slice, R), load_tap_major);
        } else {
            gemm_mainloop<G>(acc, As, Bs, r_begin, imin(r_begin + r_slice, R), load_slice);
        }

#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const i64 p = p0 + G::col(tx, j);
            if (p >= P) continue;
            const i64 n = p / HWp;
            const int uv = (int)(p - n * HWp);
            const int u = uv / Wp, v = uv - u * Wp;
            const int y = ay - pH + sH * (u0 + u), xo = ax - pW + sW * (v0 + v);
            const i64 o = ((i64)n * C_out + (i64)g * Kg) * HWo + (i64)y * Wo + xo;
            if (splits > 1)  // partial sums, no bias: conv_sum_splits finishes
                gemm_store_columns<G, 1>(part + (i64)split * N * C_out * HWo + o, acc, j, m0,
                                         Kg, HWo, bias, 0);
            else
                gemm_store_columns<G, 1>(out + o, acc, j, m0, Kg, HWo, bias + g * Kg,
                                         has_bias);
        }
    }
}

}  // namespace fc
