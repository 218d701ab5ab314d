// The implicit-GEMM main loop and epilogue shared by conv.cu (conv2d_gemm,
// conv_transpose2d_gemm) and deform.cu (deform_conv2d_gemm).  Each kernel supplies
// its own `load` functor, which says how to fetch the A (weight) and B (gathered
// input) elements of one 16-deep slice of the reduction.
#pragma once

#include "common.cuh"

namespace fc {

// A tile shape: BM (k) x 128 (p) per block of 256 threads (8 x 32), 16-deep slices of the
// reduction, a (BM/8) x 4 register tile per thread; each thread loads AQ = BM/16 weight
// elements per slice.  Gemm, 64 x 128, is the default of every GEMM kernel;
// conv_transpose2d_gemm also has 32 x 128 for 32 or fewer output channels per group.
template <int BM_>
struct GemmTile {
    static constexpr int BM = BM_, BN = 128, BK = 16, TM = BM_ / 8, TN = 4, AQ = BM_ / 16;
};
typedef GemmTile<64> Gemm;

// acc = sum over r in [r_begin, r_end) of A[m, r] * B[r, p] for this thread's TM x 4 (m, p):
// rows m = ty + 8i of the block's BM, columns p = tx + 32j of its 128.  load(r0, ra, rb)
// fetches this thread's share of the slice starting at r0: ra[q] = A[a_m + 16q, r0 + a_r]
// (q < AQ) and rb[q] = B[r0 + b_r + 2q, b_p] (a_r = tid % 16, a_m = tid / 16, b_p = tid %
// 128, b_r = tid / 128), zero outside the problem.  The next slice is loaded into registers
// while the current one, in shared memory, is multiplied.  Every thread must call it.
template <typename G = Gemm, typename A, typename Load>
__device__ __forceinline__ void gemm_mainloop(A (&acc)[G::TM][G::TN], A (*As)[G::BM + 4],
                                              A (*Bs)[G::BN], int r_begin, int r_end,
                                              Load load) {
    const int tid = threadIdx.x, tx = tid & 31, ty = tid >> 5;
    const int a_r = tid & (G::BK - 1), a_m = tid >> 4;
    const int b_p = tid & (G::BN - 1), b_r = tid >> 7;
#pragma unroll
    for (int i = 0; i < G::TM; ++i)
#pragma unroll
        for (int j = 0; j < G::TN; ++j) acc[i][j] = A(0);
    A ra[G::AQ], rb[8];
    load(r_begin, ra, rb);
    for (int r0 = r_begin; r0 < r_end; r0 += G::BK) {
#pragma unroll
        for (int q = 0; q < G::AQ; ++q) As[a_r][a_m + 16 * q] = ra[q];
#pragma unroll
        for (int q = 0; q < 8; ++q) Bs[b_r + 2 * q][b_p] = rb[q];
        __syncthreads();
        if (r0 + G::BK < r_end) load(r0 + G::BK, ra, rb);  // overlaps the multiply below
#pragma unroll
        for (int kk = 0; kk < G::BK; ++kk) {
            A a[G::TM], b[G::TN];
#pragma unroll
            for (int i = 0; i < G::TM; ++i) a[i] = As[kk][ty + 8 * i];
#pragma unroll
            for (int j = 0; j < G::TN; ++j) b[j] = Bs[kk][tx + 32 * j];
#pragma unroll
            for (int i = 0; i < G::TM; ++i)
#pragma unroll
                for (int j = 0; j < G::TN; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
}

// The epilogue of one output column j: ob[m * HWo] = acc[i][j] (+ bias_g[m]) for this
// thread's rows m = m0 + ty + 8i < Kg.  ob points at the group's first output channel at
// the column's pixel, bias_g at the group's first bias.  (Split-K partial sums use it
// with O = A and no bias.)
template <typename O, typename A, typename B, int TM, int TN>
__device__ __forceinline__ void gemm_store_column(O* ob, const A (&acc)[TM][TN], int j, int m0,
                                                  int Kg, i64 HWo, const B* bias_g,
                                                  int has_bias) {
    const int ty = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + ty + 8 * i;
        if (m < Kg) {
            const A bv = has_bias ? ld(bias_g + m) : A(0);
            ob[(i64)m * HWo] = from_acc<O>(acc[i][j] + bv);
        }
    }
}

// The work of conv2d_gemm / deform_conv2d_gemm: P = N*Ho*Wo output pixels (the GEMM's
// columns) in 128-wide tiles, the Kg output channels of each group in 64-row tiles, times
// the groups and the split-K slices.  Also this thread's load roles in gemm_mainloop.
struct GemmWork {
    i64 HWo, P, pTiles, items;
    int mTiles;
    int a_r, a_m;  // weight loads: (k = a_m + 16q, r = a_r)
    int b_p, b_r;  // input loads:  (r = b_r + 2q, p = b_p)

    __device__ __forceinline__ GemmWork(int N, int Ho, int Wo, int Kg, int groups, int splits) {
        HWo = (i64)Ho * Wo;
        P = (i64)N * HWo;
        mTiles = (Kg + Gemm::BM - 1) / Gemm::BM;
        pTiles = (P + Gemm::BN - 1) / Gemm::BN;
        items = pTiles * mTiles * groups * splits;
        const int tid = threadIdx.x;
        a_r = tid & (Gemm::BK - 1);
        a_m = tid >> 4;
        b_p = tid & (Gemm::BN - 1);
        b_r = tid >> 7;
    }
};

// One work item of conv2d_gemm / deform_conv2d_gemm: a 128-column tile of p = (n, y, x)
// (fastest across consecutive items), a 64-row tile of the group's output channels, the
// group, and the slice [r_begin, r_end) of the reduction (split-K; r_slice % 16 == 0, so
// the 16-deep chunks never straddle two slices and `r < R` is the only bound).
struct GemmItem {
    i64 p0;
    int m0, g, split, r_begin, r_end;

    __device__ __forceinline__ GemmItem(i64 item, i64 pTiles, int mTiles, int groups,
                                        int r_slice, int R) {
        const i64 pt = item % pTiles;
        const i64 rest = item / pTiles;
        const int mt = (int)(rest % mTiles), gs = (int)(rest / mTiles);
        g = gs % groups;
        split = gs / groups;
        p0 = pt * Gemm::BN;
        m0 = mt * Gemm::BM;
        r_begin = split * r_slice;
        r_end = r_begin + r_slice < R ? r_begin + r_slice : R;
    }
};

// This thread's share of a weight slice (gemm_mainloop's roles): ra[q] = wg[m + 16q, r] for
// m = m0 + a_m and r = r0 + a_r, 0 outside the group's Kg x R weight rows wg.  The caller
// computes a_m = tid / 16 and a_r = tid % 16 once, outside its load functor.
template <typename A, typename T>
__device__ __forceinline__ void gemm_load_weights(A (&ra)[4], const T* __restrict__ wg, int m,
                                                  int r, int Kg, int R) {
#pragma unroll
    for (int q = 0; q < 4; ++q)
        ra[q] = (m + 16 * q < Kg && r < R) ? ld(wg + (i64)(m + 16 * q) * R + r) : A(0);
}

// gemm_mainloop's load for a convolution-like B whose rows r = c * kHW + t run over input
// channels c and taps t: the weights as gemm_load_weights (m = m0 + a_m, a_r), and
// rb[q] = element(c, t) for this thread's column and r = r0 + b_r + 2q, 0 where r >= R or
// the column lies outside the problem (!col_ok).
template <typename A, typename T, typename Element>
__device__ __forceinline__ void conv_load_slice(A (&ra)[4], A (&rb)[8], const T* __restrict__ wg,
                                                int m, int a_r, int b_r, int r0, int Kg, int R,
                                                int kHW, bool col_ok, Element element) {
    gemm_load_weights(ra, wg, m, r0 + a_r, Kg, R);
#pragma unroll
    for (int q = 0; q < 8; ++q) {
        const int r = r0 + b_r + 2 * q;
        A v = A(0);
        if (col_ok && r < R) {
            const int c = r / kHW;
            v = element(c, r - c * kHW);
        }
        rb[q] = v;
    }
}

// The epilogue of an item whose columns are NCHW output pixels p = (n, y, x): out (+ bias),
// or with splits > 1 the partial sums part[split][n][k][y][x] (no bias; conv_sum_splits
// adds the slices and the bias).
template <typename T, typename A>
__device__ __forceinline__ void gemm_store_nchw(T* __restrict__ out, A* __restrict__ part,
                                                const A (&acc)[Gemm::TM][Gemm::TN],
                                                const GemmItem& it, i64 P, i64 HWo, int C_out,
                                                int Kg, int splits, const T* __restrict__ bias,
                                                int has_bias) {
    const int tx = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < Gemm::TN; ++j) {
        const i64 p = it.p0 + tx + 32 * j;
        if (p >= P) continue;
        const i64 n = p / HWo;
        const i64 yx = p - n * HWo;
        const i64 o = ((i64)n * C_out + (i64)it.g * Kg) * HWo + yx;
        if (splits > 1)
            gemm_store_column(part + (i64)it.split * P * C_out + o, acc, j, it.m0, Kg, HWo,
                              bias, 0);
        else
            gemm_store_column(out + o, acc, j, it.m0, Kg, HWo, bias + it.g * Kg, has_bias);
    }
}

}  // namespace fc
