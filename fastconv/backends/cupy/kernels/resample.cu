// fastconv resampling kernels (fastconv.upsample and fastconv.image), templates over
// float, double and __half.  The table conventions are those of
// fastconv/backends/cpu/resample.py: index tables are int64 (long long), -1 meaning
// "outside the image: read cval"; weight tables are in the accumulator type
// (float for float and __half, double for double).
//
// Every kernel is a grid-stride loop over the flattened NCHW output (consecutive
// threads write consecutive addresses); element counts are i64.
#include "common.cuh"

namespace fc {

// out[nc, y, x] = x[nc, iy[y], ix[x]]  (nearest-neighbour upsampling, boundary padding)
template <typename T>
__global__ void resample_gather(const T* __restrict__ x, const i64* __restrict__ iy,
                                const i64* __restrict__ ix, T* __restrict__ out, int NC,
                                int H, int W, int Ho, int Wo, typename Acc<T>::type cval) {
  const i64 total = (i64)NC * Ho * Wo;
  const T fill = from_acc<T>(cval);
  for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (i64)gridDim.x * blockDim.x) {
    const int xx = (int)(t % Wo);
    const i64 r = t / Wo;
    const int y = (int)(r % Ho);
    const i64 nc = r / Ho;
    const i64 sy = iy[y];
    const i64 sx = ix[xx];
    out[t] = (sy >= 0 && sx >= 0) ? x[(nc * H + sy) * W + sx] : fill;
  }
}

// Separable bilinear blend, PyTorch's order of operations:
// out = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
// iy, wy are (2, Ho); ix, wx are (2, Wo).
template <typename T>
__global__ void resample_lerp(const T* __restrict__ x, const i64* __restrict__ iy,
                              const typename Acc<T>::type* __restrict__ wy,
                              const i64* __restrict__ ix,
                              const typename Acc<T>::type* __restrict__ wx, T* __restrict__ out,
                              int NC, int H, int W, int Ho, int Wo,
                              typename Acc<T>::type cval) {
  typedef typename Acc<T>::type A;
  const i64 total = (i64)NC * Ho * Wo;
  for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (i64)gridDim.x * blockDim.x) {
    const int xx = (int)(t % Wo);
    const i64 r = t / Wo;
    const int y = (int)(r % Ho);
    const i64 nc = r / Ho;
    const T* plane = x + nc * H * W;
    const i64 y0 = iy[y], y1 = iy[Ho + y];
    const i64 x0 = ix[xx], x1 = ix[Wo + xx];
    const A v00 = (y0 >= 0 && x0 >= 0) ? ld(plane + y0 * W + x0) : cval;
    const A v01 = (y0 >= 0 && x1 >= 0) ? ld(plane + y0 * W + x1) : cval;
    const A v10 = (y1 >= 0 && x0 >= 0) ? ld(plane + y1 * W + x0) : cval;
    const A v11 = (y1 >= 0 && x1 >= 0) ? ld(plane + y1 * W + x1) : cval;
    const A b0 = wx[xx], b1 = wx[Wo + xx];
    out[t] = from_acc<T>(wy[y] * (b0 * v00 + b1 * v01) + wy[Ho + y] * (b0 * v10 + b1 * v11));
  }
}

// Correlation along H through a boundary table:
// out[nc, y, x] = sum_i w[i] * v(table[y + i*dil], x), v(-1) = cval.  out is (NC, Ho, W).
template <typename T>
__global__ void resample_filter_h(const T* __restrict__ x,
                                  const typename Acc<T>::type* __restrict__ w,
                                  const i64* __restrict__ table, T* __restrict__ out, int NC,
                                  int H, int W, int Ho, int taps, int dil,
                                  typename Acc<T>::type cval) {
  typedef typename Acc<T>::type A;
  const i64 total = (i64)NC * Ho * W;
  for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (i64)gridDim.x * blockDim.x) {
    const int xx = (int)(t % W);
    const i64 r = t / W;
    const int y = (int)(r % Ho);
    const i64 nc = r / Ho;
    const T* column = x + nc * H * W + xx;
    i64 s = table[y];
    A acc = w[0] * (s >= 0 ? ld(column + s * W) : cval);
    for (int i = 1; i < taps; ++i) {
      s = table[y + i * dil];
      acc += w[i] * (s >= 0 ? ld(column + s * W) : cval);
    }
    out[t] = from_acc<T>(acc);
  }
}

// Correlation along W through a boundary table.  out is (NC, H, Wo).
template <typename T>
__global__ void resample_filter_w(const T* __restrict__ x,
                                  const typename Acc<T>::type* __restrict__ w,
                                  const i64* __restrict__ table, T* __restrict__ out, int NC,
                                  int H, int W, int Wo, int taps, int dil,
                                  typename Acc<T>::type cval) {
  typedef typename Acc<T>::type A;
  const i64 total = (i64)NC * H * Wo;
  for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total;
       t += (i64)gridDim.x * blockDim.x) {
    const int xx = (int)(t % Wo);
    const i64 row = t / Wo;
    const T* line = x + row * W;
    i64 s = table[xx];
    A acc = w[0] * (s >= 0 ? ld(line + s) : cval);
    for (int i = 1; i < taps; ++i) {
      s = table[xx + i * dil];
      acc += w[i] * (s >= 0 ? ld(line + s) : cval);
    }
    out[t] = from_acc<T>(acc);
  }
}

}  // namespace fc
