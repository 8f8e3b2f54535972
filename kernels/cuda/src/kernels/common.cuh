// Shared helpers for Weft's CUDA kernels.
//
// Compiled by NVRTC at run time (the host passes this file as an in-memory
// header), and checkable offline with `nvcc --ptx -I kernels/cuda/src/kernels`.
// No CUDA headers are included: half and bfloat16 bits are converted with
// exact bit operations so that the sources do not depend on the toolkit's
// include directory being present at run time.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define WEFT_FULL_MASK 0xffffffffu

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// IEEE half -> float; exact (every half is representable as a float).
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// bfloat16 -> float; exact (bf16 is the high half of a float).
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

// Byte k of w, as the float (2^23 + byte). Subtracting 2^23 (plus any offset)
// afterwards gives the byte's integer value exactly, in two instructions
// instead of an integer-to-float conversion.
template <int K>
__device__ __forceinline__ float byte_magic(u32 w) {
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540 | K));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(WEFT_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(WEFT_FULL_MASK, v, o));
    return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds at
// least 32 floats. Contains __syncthreads, so every thread must call it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : neg_inf();
    return warp_max(v);
}
