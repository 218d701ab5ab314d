// The implicit-GEMM main loop and epilogue shared by conv.cu (conv2d_gemm,
// conv_transpose2d_gemm) and deform.cu (deform_conv2d_gemm).  Each kernel supplies
// its own `load` functor, which says how to fetch the A (weight) and B (gathered
// input) elements of one 16-deep slice of the reduction.
#pragma once

#include "common.cuh"

namespace fc {

// A tile shape: BM (k) x 128 (p) per block of 256 threads, 16-deep slices of the
// reduction; each thread loads AQ = BM/16 weight elements and 8 gathered input elements
// per slice (gemm_mainloop's load roles, the same for every shape), and accumulates a
// TM x TN register tile: acc[i][j] is output row row(ty, i), column col(tx, j) of the tile.
//
// VEC = false (Gemm = GemmTile<64>, the default of every GEMM kernel; 32 rows for
// conv_transpose2d_gemm's narrow groups): thread (ty, tx) = (tid / 32, tid % 32) owns rows
// ty + 8i (TM = BM/8) and columns tx + 32j (TN = 4).  Each multiply-add step reads TM + 4
// scalars from shared memory for 4*TM FMAs: 12 loads for 32 FMAs at BM = 64, which
// bounds the kernel by shared-memory bandwidth (one 32-bit wavefront per load per warp)
// at about 2/3 of the FMA peak.
//
// VEC = true: 4-wide fragments.  A thread owns MI groups of 4 consecutive rows
// (ty*4 + 4-row group, groups BM/2 apart) and NI groups of 4 consecutive columns
// (tx*4 + ..., groups 64 apart), read with one 128-bit shared-memory load per group.
// A warp spans 4 values of ty and 8 of tx, so each of those loads is one wavefront
// (4 and 8 distinct 16-byte words): 128 x 128 (MI = NI = 2) does 64 FMAs per 4 loads,
// 64 x 128 (NI = 2) 32 per 3, 32 x 128 16 per 2.  Columns come in runs of 4, which
// gemm_store_nchw writes as one vector where the output's layout allows.
template <int BM_, bool VEC_ = false>
struct GemmTile {
    static constexpr int BM = BM_, BN = 128, BK = 16, AQ = BM_ / 16;
    static constexpr bool VEC = VEC_;
    static constexpr int MI = (VEC_ && BM_ >= 128) ? 2 : 1;  // 4-row fragments (VEC)
    static constexpr int NI = (VEC_ && BM_ >= 64) ? 2 : 1;   // 4-column fragments (VEC)
    static constexpr int TM = VEC_ ? 4 * MI : BM_ / 8, TN = VEC_ ? 4 * NI : 4;
    static constexpr int TXS = VEC_ ? BN / (4 * NI) : 32;  // threads along the columns
    // resident blocks per SM the kernel is built for (__launch_bounds__'s second argument;
    // 0 = none given): 2 caps the 64-row VEC tile at 128 registers per thread, so two blocks
    // fit in an SM's 64K registers; the 128-row tile's 64 accumulators need ~170 (one block)
    static constexpr int MIN_BLOCKS = (VEC_ && BM_ < 128) ? 2 : 0;
    static_assert(BM_ % 16 == 0 && (BM_ / TM) * (BN / TN) == 256, "256 threads per tile");

    // this thread's (ty, tx)
    __device__ static __forceinline__ int ty() {
        const int tid = threadIdx.x;
        return VEC_ ? ((tid >> 5) / (TXS / 8)) * 4 + ((tid & 31) >> 3) : tid >> 5;
    }
    __device__ static __forceinline__ int tx() {
        const int tid = threadIdx.x;
        return VEC_ ? ((tid >> 5) % (TXS / 8)) * 8 + (tid & 7) : tid & 31;
    }
    // the tile row of acc[i][.] and the tile column of acc[.][j]
    __device__ static __forceinline__ int row(int ty, int i) {
        return VEC_ ? ty * 4 + (i & 3) + (i >> 2) * (BM_ / 2) : ty + 8 * i;
    }
    __device__ static __forceinline__ int col(int tx, int j) {
        return VEC_ ? tx * 4 + (j & 3) + (j >> 2) * (BN / 2) : tx + 32 * j;
    }
};
typedef GemmTile<64> Gemm;

// __launch_bounds__'s minimum blocks per SM for tile G over storage type T: the tile's
// MIN_BLOCKS for 4-byte accumulators; none for double, whose tiles never fit two blocks
template <typename G, typename T>
constexpr int gemm_min_blocks = sizeof(typename Acc<T>::type) == 4 ? G::MIN_BLOCKS : 0;

// r[0..3] = p[0..3] from shared memory; p is 16-byte aligned: one 128-bit load for float,
// two for double
__device__ __forceinline__ void lds4(float* r, const float* p) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x;
    r[1] = v.y;
    r[2] = v.z;
    r[3] = v.w;
}
__device__ __forceinline__ void lds4(double* r, const double* p) {
    const double2 u = *reinterpret_cast<const double2*>(p);
    const double2 v = *reinterpret_cast<const double2*>(p + 2);
    r[0] = u.x;
    r[1] = u.y;
    r[2] = v.x;
    r[3] = v.y;
}

// p[0..3] = v[0..3] in global memory, p aligned to 4 elements: one vector store for float
// (16 bytes), two for double, four scalar stores for __half
__device__ __forceinline__ void st4(float* p, const float (&v)[4]) {
    __stwb(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
}
__device__ __forceinline__ void st4(double* p, const double (&v)[4]) {
    __stwb(reinterpret_cast<double2*>(p), make_double2(v[0], v[1]));
    __stwb(reinterpret_cast<double2*>(p + 2), make_double2(v[2], v[3]));
}
__device__ __forceinline__ void st4(__half* p, const float (&v)[4]) {
#pragma unroll
    for (int k = 0; k < 4; ++k) p[k] = from_acc<__half>(v[k]);
}

// acc = sum over r in [r_begin, r_end) of A[m, r] * B[r, p] for this thread's TM x TN
// (m, p) = (G::row(ty, i), G::col(tx, j)) of the block's BM x 128 tile.  load(r0, ra, rb)
// fetches this thread's share of the slice starting at r0: ra[q] = A[a_m + 16q, r0 + a_r]
// (q < AQ) and rb[q] = B[r0 + b_r + 2q, b_p] (a_r = tid % 16, a_m = tid / 16, b_p = tid %
// 128, b_r = tid / 128), zero outside the problem.  The next slice is loaded into registers
// while the current one, in shared memory, is multiplied.  Every thread must call it.
template <typename G = Gemm, typename A, typename Load>
__device__ __forceinline__ void gemm_mainloop(A (&acc)[G::TM][G::TN], A (*As)[G::BM + 4],
                                              A (*Bs)[G::BN], int r_begin, int r_end,
                                              Load load) {
    const int tid = threadIdx.x, tx = G::tx(), ty = G::ty();
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
            if constexpr (G::VEC) {
#pragma unroll
                for (int f = 0; f < G::MI; ++f) lds4(a + 4 * f, &As[kk][G::row(ty, 4 * f)]);
#pragma unroll
                for (int f = 0; f < G::NI; ++f) lds4(b + 4 * f, &Bs[kk][G::col(tx, 4 * f)]);
            } else {
#pragma unroll
                for (int i = 0; i < G::TM; ++i) a[i] = As[kk][G::row(ty, i)];
#pragma unroll
                for (int j = 0; j < G::TN; ++j) b[j] = Bs[kk][G::col(tx, j)];
            }
#pragma unroll
            for (int i = 0; i < G::TM; ++i)
#pragma unroll
                for (int j = 0; j < G::TN; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
}

// The epilogue of W output columns j0 .. j0 + W - 1 for this thread's rows
// m = m0 + G::row(ty, i) < Kg: ob[m * HWo + w] = acc[i][j0 + w] (+ bias_g[m]).  W = 1: one
// column, at ob; W = 4 (VEC tiles): a fragment whose 4 pixels lie next to each other in
// memory, ob aligned to 4 elements, one vector store per row.  ob points at the group's
// first output channel at the first column's pixel, bias_g at the group's first bias.
// (Split-K partial sums use it with O = A and no bias.)
template <typename G, int W, typename O, typename A, typename B>
__device__ __forceinline__ void gemm_store_columns(O* ob, const A (&acc)[G::TM][G::TN], int j0,
                                                   int m0, int Kg, i64 HWo, const B* bias_g,
                                                   int has_bias) {
    const int ty = G::ty();
#pragma unroll
    for (int i = 0; i < G::TM; ++i) {
        const int m = m0 + G::row(ty, i);
        if (m < Kg) {
            const A bv = has_bias ? ld(bias_g + m) : A(0);
            if constexpr (W == 1) {
                ob[(i64)m * HWo] = from_acc<O>(acc[i][j0] + bv);
            } else {
                static_assert(W == 4, "one column or a 4-column fragment");
                const A v[4] = {acc[i][j0] + bv, acc[i][j0 + 1] + bv, acc[i][j0 + 2] + bv,
                                acc[i][j0 + 3] + bv};
                st4(ob + (i64)m * HWo, v);
            }
        }
    }
}

// The work of conv2d_gemm / deform_conv2d_gemm: P = N*Ho*Wo output pixels (the GEMM's
// columns) in 128-wide tiles, the Kg output channels of each group in G::BM-row tiles, times
// the groups and the split-K slices.  Also this thread's load roles in gemm_mainloop.
template <typename G>
struct GemmWork {
    i64 HWo, P, pTiles, items;
    int mTiles;
    int a_r, a_m;  // weight loads: (k = a_m + 16q, r = a_r)
    int b_p, b_r;  // input loads:  (r = b_r + 2q, p = b_p)

    __device__ __forceinline__ GemmWork(int N, int Ho, int Wo, int Kg, int groups, int splits) {
        HWo = (i64)Ho * Wo;
        P = (i64)N * HWo;
        mTiles = (Kg + G::BM - 1) / G::BM;
        pTiles = (P + G::BN - 1) / G::BN;
        items = pTiles * mTiles * groups * splits;
        const int tid = threadIdx.x;
        a_r = tid & (G::BK - 1);
        a_m = tid >> 4;
        b_p = tid & (G::BN - 1);
        b_r = tid >> 7;
    }
};

// One work item of conv2d_gemm / deform_conv2d_gemm: a 128-column tile of p = (n, y, x)
// (fastest across consecutive items), a G::BM-row tile of the group's output channels, the
// group, and the slice [r_begin, r_end) of the reduction (split-K; r_slice % 16 == 0, so
// the 16-deep chunks never straddle two slices and `r < R` is the only bound).
template <typename G>
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
        p0 = pt * G::BN;
        m0 = mt * G::BM;
        r_begin = split * r_slice;
        r_end = r_begin + r_slice < R ? r_begin + r_slice : R;
    }
};

// This thread's share of a weight slice (gemm_mainloop's roles): ra[q] = wg[m + 16q, r] for
// m = m0 + a_m and r = r0 + a_r, 0 outside the group's Kg x R weight rows wg.  The caller
// computes a_m = tid / 16 and a_r = tid % 16 once, outside its load functor.
template <int AQ, typename A, typename T>
__device__ __forceinline__ void gemm_load_weights(A (&ra)[AQ], const T* __restrict__ wg, int m,
                                                  int r, int Kg, int R) {
#pragma unroll
    for (int q = 0; q < AQ; ++q)
        ra[q] = (m + 16 * q < Kg && r < R) ? ld(wg + (i64)(m + 16 * q) * R + r) : A(0);
}

// gemm_mainloop's load for a convolution-like B whose rows r = c * kHW + t run over input
// channels c and taps t: the weights as gemm_load_weights (m = m0 + a_m, a_r), and
// rb[q] = element(c, t) for this thread's column and r = r0 + b_r + 2q, 0 where r >= R or
// the column lies outside the problem (!col_ok).
template <int AQ, typename A, typename T, typename Element>
__device__ __forceinline__ void conv_load_slice(A (&ra)[AQ], A (&rb)[8],
                                                const T* __restrict__ wg, int m, int a_r,
                                                int b_r, int r0, int Kg, int R, int kHW,
                                                bool col_ok, Element element) {
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

// The input share of a tap-major load (conv2d_gemm, conv_transpose2d_gemm: a 16-deep slice
// is 16 channels of one tap): rb[q] = xb[(c + 2q) * HW + iy * W + ix], this thread's
// column's input position (iy, ix) at the slice's tap, channels c + 2q; 0 where that
// position lies in the padding or the column outside the problem (!col_ok).
template <typename A, typename T>
__device__ __forceinline__ void load_tap_column(A (&rb)[8], const T* __restrict__ xb, int c,
                                                i64 HW, int iy, int ix, int H, int W,
                                                bool col_ok) {
    const bool ok = col_ok && in_range(iy, H) && in_range(ix, W);
    const T* xr = xb + (ok ? (i64)c * HW + (i64)iy * W + ix : 0);
#pragma unroll
    for (int q = 0; q < 8; ++q) rb[q] = ok ? ld(xr + (2 * q) * HW) : A(0);
}

// The epilogue of an item whose columns are NCHW output pixels p = (n, y, x): out (+ bias),
// or with splits > 1 the partial sums part[split][n][k][y][x] (no bias; conv_sum_splits
// adds the slices and the bias).  VEC tiles store each fragment's 4 pixels as one vector
// when Ho*Wo % 4 == 0: the fragment's first pixel is then a multiple of 4, so all 4 lie in
// one image, in one row of memory, aligned (and P % 4 == 0: all 4 exist if the first does).
template <typename G, typename T, typename A>
__device__ __forceinline__ void gemm_store_nchw(T* __restrict__ out, A* __restrict__ part,
                                                const A (&acc)[G::TM][G::TN],
                                                const GemmItem<G>& it, i64 P, i64 HWo,
                                                int C_out, int Kg, int splits,
                                                const T* __restrict__ bias, int has_bias) {
    const int tx = G::tx();
    if constexpr (G::VEC) {
        if ((HWo & 3) == 0) {
#pragma unroll
            for (int f = 0; f < G::NI; ++f) {
                const i64 p = it.p0 + G::col(tx, 4 * f);
                if (p >= P) continue;
                const i64 n = p / HWo;
                const i64 o = ((i64)n * C_out + (i64)it.g * Kg) * HWo + (p - n * HWo);
                if (splits > 1)
                    gemm_store_columns<G, 4>(part + (i64)it.split * P * C_out + o, acc, 4 * f,
                                             it.m0, Kg, HWo, bias, 0);
                else
                    gemm_store_columns<G, 4>(out + o, acc, 4 * f, it.m0, Kg, HWo,
                                             bias + it.g * Kg, has_bias);
            }
            return;
        }
    }
#pragma unroll
    for (int j = 0; j < G::TN; ++j) {
        const i64 p = it.p0 + G::col(tx, j);
        if (p >= P) continue;
        const i64 n = p / HWo;
        const i64 yx = p - n * HWo;
        const i64 o = ((i64)n * C_out + (i64)it.g * Kg) * HWo + yx;
        if (splits > 1)
            gemm_store_columns<G, 1>(part + (i64)it.split * P * C_out + o, acc, j, it.m0, Kg,
                                     HWo, bias, 0);
        else
            gemm_store_columns<G, 1>(out + o, acc, j, it.m0, Kg, HWo, bias + it.g * Kg,
                                     has_bias);
    }
}

}  // namespace fc
