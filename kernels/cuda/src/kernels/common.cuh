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

#ifdef WEFT_ON_CPU
// kernels/cuda/emulator runs these sources on CPU threads, without PTX: its
// block.h supplies the same conversions.
#else
// IEEE half -> float; exact (every half is representable as a float).
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// float -> IEEE half, rounding to nearest even (as the CPU cache's f16).
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

// bfloat16 -> float; exact (bf16 is the high half of a float).
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

// Byte k of w, as the float (2^23 + byte). Subtracting 2^23 (plus any offset)
// afterwards gives the byte's integer value exactly, in two instructions
// instead of an integer-to-float conversion.
template <int K>
__device__ __forceinline__ float byte_magic(u32 w) {
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540 | K));
}

// OCP FP8 E4M3 (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no
// infinities, S.1111.111 is NaN, largest finite 448) -> float; exact.
__device__ __forceinline__ float e4m3_to_f32(u8 b) {
    const int e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 0) v = (float)m * 0.001953125f;  // subnormal: m * 2^-9
    else if (e == 15 && m == 7) v = __int_as_float(0x7fc00000);
    else v = ldexpf(1.0f + (float)m * 0.125f, e - 7);
    return (b & 0x80) ? -v : v;
}

// float -> E4M3, rounding to nearest even and saturating to +-448 (NaN stays
// NaN), as PTX cvt.rn.satfinite.e4m3x2 does.
__device__ __forceinline__ u8 f32_to_e4m3(float x) {
    const u8 sign = (__float_as_uint(x) >> 24) & 0x80;
    const float a = fabsf(x);
    if (a != a) return sign | 0x7f;
    if (a >= 448.0f) return sign | 0x7e;  // saturate (infinities too)
    if (a < 0.015625f) return sign | (u8)rintf(a * 512.0f);  // subnormals; 8 rounds up to 2^-6
    int e;
    const float fr = frexpf(a, &e);  // a = fr * 2^e, fr in [0.5, 1)
    float m = rintf(fr * 16.0f) - 8.0f;
    int E = e + 6;
    if (m == 8.0f) {
        m = 0.0f;
        E++;
    }
    if (E > 15 || (E == 15 && m > 6.0f)) return sign | 0x7e;
    return sign | (u8)(E << 3) | (u8)m;
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

// No token / no id (an unset index).
#define WEFT_NO_ID 0xffffffffu

// Better = larger value, then smaller id. NaN is never better.
__device__ __forceinline__ bool better(float v, u32 i, float bv, u32 bi) {
    return v > bv || (v == bv && i < bi);
}

// Block-wide argmax of (v, i); every thread gets the winner.
__device__ __forceinline__ void block_best(float& v, u32& i, float* sv, u32* si) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(WEFT_FULL_MASK, v, o);
        const u32 oi = __shfl_xor_sync(WEFT_FULL_MASK, i, o);
        if (better(ov, oi, v, i)) { v = ov; i = oi; }
    }
    __syncthreads();
    if (lane == 0) { sv[warp] = v; si[warp] = i; }
    __syncthreads();
    v = lane < nwarps ? sv[lane] : neg_inf();
    i = lane < nwarps ? si[lane] : WEFT_NO_ID;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(WEFT_FULL_MASK, v, o);
        const u32 oi = __shfl_xor_sync(WEFT_FULL_MASK, i, o);
        if (better(ov, oi, v, i)) { v = ov; i = oi; }
    }
}
