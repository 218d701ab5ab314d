// A CUDA C emulator header: lets g++ compile fastconv's kernels (kernels/*.cu) for the CPU.
//
// Force-included (-include cuda_emu.h) before each expanded .cu file.  Every CUDA thread
// of a block is one OS thread; blocks run one after the other, each OS thread looping
// over the grid with its own threadIdx.  __syncthreads() is a barrier over the block's
// threads that also checks that every thread reached the *same* barrier (a thread that
// leaves the kernel while others wait at a __syncthreads() is reported as divergence).
// __shared__ arrays become function statics (one copy, seen by all threads of the
// running block); dynamic shared memory is a heap buffer of exactly the launch's size.
// Both are refilled with 0xFF bytes (NaN for float/double/half) before every block (the
// statics from their first use: register_shared), so a read of shared memory that no
// thread of the block wrote shows up as NaN in the output.
//
// What this proves: the indexing, the tiling logic, the barriers, the launch-argument
// types and the bounds of every memory access (built with AddressSanitizer) -- on the
// CPU.  What it does not: GPU timing, the memory model between blocks, warp behaviour,
// NVRTC itself (tests/test_cupy_nvrtc.py compiles the same sources with NVRTC).
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>

struct uint3 {
    unsigned x, y, z;
};

namespace fcemu {
extern thread_local uint3 thread_idx;
extern thread_local uint3 block_idx;
extern uint3 block_dim;
extern uint3 grid_dim;
void syncthreads();
int syncthreads_or(int predicate);
unsigned char* dynamic_smem();
// Called after each static __shared__ declaration (emulator.py adds the call): the array is
// refilled with 0xFF bytes before every block, from the first call on.
void register_shared(void* array, std::size_t bytes);
}  // namespace fcemu

#define threadIdx (fcemu::thread_idx)
#define blockIdx (fcemu::block_idx)
#define blockDim (fcemu::block_dim)
#define gridDim (fcemu::grid_dim)
#define __syncthreads() fcemu::syncthreads()
#define __syncthreads_or(predicate) fcemu::syncthreads_or(predicate)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define FC_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(fcemu::dynamic_smem())

// IEEE binary16 storage (GCC's _Float16 converts with round-to-nearest-even, as __float2half_rn).
struct __half {
    _Float16 v;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }

// CUDA's 16-byte vector types, as aligned as on the GPU: a vector load or store through a
// pointer that is not 16-byte aligned is undefined behaviour, which UBSan's alignment check
// reports (on the GPU it is a misaligned-address fault).
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(16))) double2 {
    double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

// A store with the default (write-back) cache policy; kernels use it for vector stores.
template <typename T>
inline void __stwb(T* p, T v) {
    *p = v;
}

// Built with -ffp-contract=off, so these are the separately rounded operations they name.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
