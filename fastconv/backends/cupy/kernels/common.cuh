// fastconv CUDA kernels: shared definitions.
//
// Storage types are float, double and __half; arithmetic happens in Acc<T>::type
// (float for float and __half, double for double).  Sizes arrive as int (each
// dimension of an array fits in 31 bits; the launcher checks); every product that
// indexes an array that may exceed 2^31 elements is computed in long long (i64).
//
// The .cu files are expanded by fastconv/backends/cupy/_module.py: a line
// `#include "name.cuh"` is replaced by that file once, so NVRTC never needs an
// include path for these headers.
#pragma once

#include <cuda_fp16.h>

namespace fc {

typedef long long i64;

// -------------------------------------------------------------------- types

template <typename T> struct Acc { typedef T type; };
template <> struct Acc<__half> { typedef float type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }

// Read-only load (through the non-coherent/texture path) converted to the accumulator type.
template <typename T>
__device__ __forceinline__ typename Acc<T>::type ld(const T* p) { return to_acc(__ldg(p)); }

// ---------------------------------------------------------------- math helpers
// Overloads spelled out so float stays float (no silent promotion to double).

__device__ __forceinline__ float fl(float v) { return floorf(v); }
__device__ __forceinline__ double fl(double v) { return floor(v); }
__device__ __forceinline__ float ce(float v) { return ceilf(v); }
__device__ __forceinline__ double ce(double v) { return ceil(v); }
// C rounding: half away from zero (not banker's rounding)
__device__ __forceinline__ float rnd(float v) { return roundf(v); }
__device__ __forceinline__ double rnd(double v) { return round(v); }

// Rounded multiply/add that the compiler never contracts into an FMA: box geometry
// must round exactly like torchvision's (and the oracle's) separate operations,
// because it feeds discrete decisions (round, floor, ceil, outside-the-image tests).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// 0 <= v < n, one comparison
__device__ __forceinline__ bool in_range(int v, int n) { return (unsigned)v < (unsigned)n; }

// Most negative finite float: roi_pool's initial maximum (as torchvision, also for double).
#define FC_NEG_FLT_MAX (-3.402823466e+38f)

}  // namespace fc

// Dynamic shared memory of type `type`, named `name` (one raw buffer per kernel,
// reinterpreted, so templates over different types do not redeclare it).
#ifndef FC_DYNAMIC_SMEM
#define FC_DYNAMIC_SMEM(type, name)                                   \
    extern __shared__ __align__(16) unsigned char fc_dynamic_smem_[]; \
    type* name = reinterpret_cast<type*>(fc_dynamic_smem_)
#endif
