// One CUDA thread block on CPU threads, to check a kernel's logic where
// there is no GPU: each CUDA thread is a std::thread, __syncthreads is a
// barrier over the block, a warp shuffle exchanges values through a
// per-warp buffer between two warp barriers, __shared__ variables are
// function statics (shared by the block's threads; blocks run one after
// another), an `extern __shared__` array is rewritten to point at
// emu::dynamic_shared, and atomics are std::atomic_ref. The __d*_rn intrinsics are
// plain IEEE operations (compile with -ffp-contract=off), and half
// conversions _Float16's; cp.async copies land at the latest wait that
// allows (see below). What this does not model: the GPU's memory ordering,
// timing and occupancy; other inline PTX (compiled out, so kernels that
// use it cannot run here).
//
// Used by the `emulated` tests (choose.cu's kernels through
// choose_tokens.cpp, attention.cu's through attention.cpp, gemv.cu's
// through gemv.cpp); needs C++20 (<barrier>, std::atomic_ref).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 threadIdx;
inline Dim3 blockIdx, blockDim, gridDim;

#define WEFT_ON_CPU
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static
#define asm(...)

// common.cuh's half conversions, which use PTX on the GPU (round to
// nearest even, as cvt.rn.f16.f32).
inline float f16_to_f32(unsigned short h) {
    _Float16 x;
    memcpy(&x, &h, 2);
    return (float)x;
}
inline unsigned short f32_to_f16(float f) {
    const _Float16 x = (_Float16)f;
    unsigned short h;
    memcpy(&h, &x, 2);
    return h;
}

namespace emu {
// A kernel's `extern __shared__` array (the harness rewrites the
// declaration to point here; 64 KiB, as a launch may ask).
alignas(16) inline unsigned char dynamic_shared[64 << 10];
inline std::barrier<>* block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline uint64_t warp_values[32][32];

inline void warp_sync() { warp_barriers[threadIdx.x >> 5]->arrive_and_wait(); }

// Every lane publishes v; returns lane `from`'s value (or v when `from`
// is outside the warp).
template <class T>
T exchange(T v, int from) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    warp_sync();
    warp_values[warp][lane] = bits;
    warp_sync();
    T out = v;
    if (from >= 0 && from < 32) {
        const uint64_t got = warp_values[warp][from];
        memcpy(&out, &got, sizeof(T));
    }
    warp_sync();
    return out;
}

// The next `n` values of type T from stdin (a harness's input); exits on
// short input.
template <class T>
std::vector<T> read(size_t n) {
    std::vector<T> v(n);
    if (fread(v.data(), sizeof(T), n, stdin) != n) {
        fprintf(stderr, "emulator: short input\n");
        exit(2);
    }
    return v;
}

// Run `kernel` as block `block` of a grid `grid`, with `threads` threads
// (a last warp may be partial).
inline void run_block(Dim3 block, Dim3 grid, unsigned threads, const std::function<void()>& kernel) {
    blockIdx = block;
    gridDim = grid;
    blockDim = Dim3{threads, 1, 1};
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    warp_barriers.clear();
    for (unsigned w = 0; w * 32 < threads; w++)
        warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; t++)
        pool.emplace_back([&, t] {
            threadIdx.x = t;
            kernel();
        });
    for (auto& t : pool) t.join();
}

// Every block of `grid`, one after another.
inline void run_grid(Dim3 grid, unsigned threads, const std::function<void()>& kernel) {
    for (unsigned z = 0; z < std::max(grid.z, 1u); z++)
        for (unsigned y = 0; y < std::max(grid.y, 1u); y++)
            for (unsigned x = 0; x < std::max(grid.x, 1u); x++) run_block(Dim3{x, y, z}, grid, threads, kernel);
}
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_sync(); }

// CUDA's vector types, as the kernels load them (16-byte aligned).
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
#define __align__(n) __attribute__((aligned(n)))

// cp.async (gemv.cu's staged path) at its latest: a thread's 16-byte copies
// land only when a wait_group must see them, so a read of a buffer before
// its wait finds the bytes the buffer held before.
namespace emu {
struct AsyncCopy {
    void* dst;
    const void* src;
};
inline thread_local std::vector<AsyncCopy> uncommitted_copies;
inline thread_local std::vector<std::vector<AsyncCopy>> pending_groups;
}  // namespace emu
inline void cp_async16(void* dst, const void* src) { emu::uncommitted_copies.push_back({dst, src}); }
inline void cp_async_commit() {
    emu::pending_groups.push_back(std::move(emu::uncommitted_copies));
    emu::uncommitted_copies.clear();
}
template <int N>
void cp_async_wait() {
    while (emu::pending_groups.size() > (size_t)N) {
        for (const auto& c : emu::pending_groups.front()) memcpy(c.dst, c.src, 16);
        emu::pending_groups.erase(emu::pending_groups.begin());
    }
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int o) {
    return emu::exchange(v, (int)(threadIdx.x & 31) ^ o);
}
template <class T>
T __shfl_up_sync(unsigned, T v, int o) {
    const int lane = threadIdx.x & 31;
    return lane >= o ? emu::exchange(v, lane - o) : emu::exchange(v, -1);
}

inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; memcpy(&x, &f, 4); return x; }
inline int __float_as_int(float f) { int x; memcpy(&x, &f, 4); return x; }
inline double __longlong_as_double(long long x) { double d; memcpy(&d, &x, 8); return d; }
inline long long __double_as_longlong(double d) { long long x; memcpy(&x, &d, 8); return x; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline unsigned long long __double2ull_rn(double x) { return (unsigned long long)std::nearbyint(x); }
// Byte i of the result is byte (s >> 4i) & 7 of the pair (x low, y high).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t pair = (uint64_t)x | ((uint64_t)y << 32);
    unsigned out = 0;
    for (int i = 0; i < 4; i++) out |= (unsigned)((pair >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return out;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline unsigned atomicMin(unsigned* p, unsigned v) {
    std::atomic_ref<unsigned> a(*p);
    unsigned old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
using std::max;
using std::min;
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
