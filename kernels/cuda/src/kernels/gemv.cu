// Matrix-vector products y = W x over weights kept in their GGUF block
// layout on the device, and embedding-row lookup from the same layouts.
//
// The host compiles this file once per weight type, with exactly one of
// WEFT_WT_F32, _F16, _BF16, _Q8_0, _Q4_0, _Q4_1, _Q4_K or _Q6_K defined, so a
// model only pays NVRTC time for the types it holds.
//
// Work split: a warp owns R consecutive rows; each lane walks the row in
// "chunks" (8 or 16 consecutive quantised values that one lane can load with
// a few narrow loads), so a warp instruction touches one contiguous span of
// the row. A chunk decodes into exact small-integer floats q, a scale s and
// an offset m per group of 4 elements: value = s * q + m. The dot product
// then costs one FMA per element and batch vector, the scale one FMA per
// group, and the offset (Q4_1, Q4_K) reuses the group's sum of x.
// Accumulation is f32; no activation is quantised, so the result differs
// from an exact dot product of the dequantised weights only by f32 rounding.
//
// Two paths: the direct one (every format, any alignment) loads chunks
// straight from global memory; the staged one (all but F32, 16-byte aligned
// rows) streams rows through a multi-stage shared-memory pipeline with
// 16-byte cp.async copies, which keeps more bytes in flight and needs far
// fewer and wider loads for blocks of 34, 18 or 210 bytes.
#include "common.cuh"

// ---------------------------------------------------------------- formats

struct F32W {
    static constexpr int CHUNK = 8, NG = 2;
    static constexpr bool SCALE = false, MIN = false;
    struct Raw { float4 a, b; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const float4* p = (const float4*)row + 2 * c;
        return Raw{p[0], p[1]};
    }
    static __device__ __forceinline__ void decode(const Raw& r, float* q, float* s, float* m) {
        q[0] = r.a.x; q[1] = r.a.y; q[2] = r.a.z; q[3] = r.a.w;
        q[4] = r.b.x; q[5] = r.b.y; q[6] = r.b.z; q[7] = r.b.w;
    }
    static __device__ __forceinline__ int xoff(int c, int g) { return 8 * c + 4 * g; }
};

struct F16W {
    static constexpr int CHUNK = 8, NG = 2, BLOCK_LEN = 1, BLOCK_BYTES = 2, STEP_CHUNKS = 128;
    static constexpr bool SCALE = false, MIN = false;
    typedef uint4 Raw;
    static __device__ __forceinline__ Raw load(const u8* row, int c) { return ((const uint4*)row)[c]; }
    static __device__ __forceinline__ void decode(const Raw& r, float* q, float* s, float* m) {
        const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            q[2 * i] = f16_to_f32((u16)(w[i] & 0xffffu));
            q[2 * i + 1] = f16_to_f32((u16)(w[i] >> 16));
        }
    }
    static __device__ __forceinline__ int xoff(int c, int g) { return 8 * c + 4 * g; }
};

struct BF16W {
    static constexpr int CHUNK = 8, NG = 2, BLOCK_LEN = 1, BLOCK_BYTES = 2, STEP_CHUNKS = 128;
    static constexpr bool SCALE = false, MIN = false;
    typedef uint4 Raw;
    static __device__ __forceinline__ Raw load(const u8* row, int c) { return ((const uint4*)row)[c]; }
    static __device__ __forceinline__ void decode(const Raw& r, float* q, float* s, float* m) {
        const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            q[2 * i] = __uint_as_float(w[i] << 16);
            q[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
    static __device__ __forceinline__ int xoff(int c, int g) { return 8 * c + 4 * g; }
};

// Two 2-byte-aligned halfwords as one word (blocks of 34, 18 and 210 bytes
// are only 2-byte aligned).
__device__ __forceinline__ u32 ld_u32_a2(const u8* p) {
    const u16* h = (const u16*)p;
    return (u32)h[0] | ((u32)h[1] << 16);
}

// Q8_0: 34-byte blocks [f16 d, 32 x i8]; value = d * q. Chunk = 8 values.
struct Q8_0W {
    static constexpr int CHUNK = 8, NG = 2, BLOCK_LEN = 32, BLOCK_BYTES = 34, STEP_CHUNKS = 128;
    static constexpr bool SCALE = true, MIN = false;
    struct Raw { u32 d, w0, w1; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + 34 * (c >> 2) + 2 + 8 * (c & 3);
        return Raw{(u32) * (const u16*)(row + 34 * (c >> 2)), ld_u32_a2(b), ld_u32_a2(b + 4)};
    }
    static __device__ __forceinline__ void decode(const Raw& r, float* q, float* s, float* m) {
        // Flip the sign bit so the byte reads as q + 128, then remove 2^23 + 128.
        const u32 a = r.w0 ^ 0x80808080u, b = r.w1 ^ 0x80808080u;
        const float off = 8388736.0f;
        q[0] = byte_magic<0>(a) - off; q[1] = byte_magic<1>(a) - off;
        q[2] = byte_magic<2>(a) - off; q[3] = byte_magic<3>(a) - off;
        q[4] = byte_magic<0>(b) - off; q[5] = byte_magic<1>(b) - off;
        q[6] = byte_magic<2>(b) - off; q[7] = byte_magic<3>(b) - off;
        s[0] = s[1] = f16_to_f32((u16)r.d);
    }
    static __device__ __forceinline__ int xoff(int c, int g) { return 8 * c + 4 * g; }
};

__device__ __forceinline__ void nibbles(u32 w, float off, float* lo, float* hi) {
    const u32 l = w & 0x0F0F0F0Fu, h = (w >> 4) & 0x0F0F0F0Fu;
    lo[0] = byte_magic<0>(l) - off; lo[1] = byte_magic<1>(l) - off;
    lo[2] = byte_magic<2>(l) - off; lo[3] = byte_magic<3>(l) - off;
    hi[0] = byte_magic<0>(h) - off; hi[1] = byte_magic<1>(h) - off;
    hi[2] = byte_magic<2>(h) - off; hi[3] = byte_magic<3>(h) - off;
}

// Q4_0: 18-byte blocks [f16 d, 16 bytes]; byte j holds element j (low
// nibble) and j + 16 (high nibble); value = (q - 8) * d. A chunk is 4 bytes:
// group 0 = elements 4k..4k+3, group 1 = 16+4k..16+4k+3.
struct Q4_0W {
    static constexpr int CHUNK = 8, NG = 2, BLOCK_LEN = 32, BLOCK_BYTES = 18, STEP_CHUNKS = 128;
    static constexpr bool SCALE = true, MIN = false;
    struct Raw { u32 d, w; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + 18 * (c >> 2);
        return Raw{(u32) * (const u16*)b, ld_u32_a2(b + 2 + 4 * (c & 3))};
    }
    static __device__ __forceinline__ void decode(const Raw& r, float* q, float* s, float* m) {
        nibbles(r.w, 8388616.0f, q, q + 4);  // 2^23 + 8
        s[0] = s[1] = f16_to_f32((u16)r.d);
    }
    static __device__ __forceinline__ int xoff(int c, int g) { return 32 * (c >> 2) + 16 * g + 4 * (c & 3); }
};

// Q4_1: 20-byte blocks [f16 d, f16 m, 16 bytes]; value = q * d + m.
// Blocks are 4-byte aligned, so both loads are single words.
struct Q4_1W {
    static constexpr int CHUNK = 8, NG = 2, BLOCK_LEN = 32, BLOCK_BYTES = 20, STEP_CHUNKS = 128;
    static constexpr bool SCALE = true, MIN = true;
    struct Raw { u32 dm, w; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + 20 * (c >> 2);
        return Raw{*(const u32*)b, *(const u32*)(b + 4 + 4 * (c & 3))};
    }
    static __device__ __forceinline__ void decode(const Raw& r, float* q, float* s, float* m) {
        nibbles(r.w, 8388608.0f, q, q + 4);
        s[0] = s[1] = f16_to_f32((u16)(r.dm & 0xffffu));
        m[0] = m[1] = f16_to_f32((u16)(r.dm >> 16));
    }
    static __device__ __forceinline__ int xoff(int c, int g) { return 32 * (c >> 2) + 16 * g + 4 * (c & 3); }
};

__device__ __forceinline__ u32 byte_of3(u32 a, u32 b, u32 c, int k) {
    const u32 w = k < 4 ? a : (k < 8 ? b : c);
    return (w >> (8 * (k & 3))) & 0xffu;
}

// Q4_K: 144-byte superblocks of 256 = [f16 d, f16 dmin, 12 bytes of packed
// 6-bit scales and mins for 8 sub-blocks of 32, 128 bytes of nibbles]. Each
// 32-byte run of nibbles covers 64 values: low nibbles are sub-block 2j,
// high nibbles sub-block 2j+1; value = d*sc * q - dmin*mn. A chunk is 8
// nibble bytes: 16 values in four groups (8 low, 8 high).
struct Q4_KW {
    static constexpr int CHUNK = 16, NG = 4, BLOCK_LEN = 256, BLOCK_BYTES = 144, STEP_CHUNKS = 64;
    static constexpr bool SCALE = true, MIN = true;
    struct Raw { u32 dm, s0, s1, s2, w0, w1; int j; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* b = row + 144 * (c >> 4);
        const int cc = c & 15, j = cc >> 2, k = cc & 3;
        const u32* w = (const u32*)b;
        const u32* qs = (const u32*)(b + 16 + 32 * j + 8 * k);
        return Raw{w[0], w[1], w[2], w[3], qs[0], qs[1], j};
    }
    static __device__ __forceinline__ void scale_min(const Raw& r, int is, u32& sc, u32& mn) {
        if (is < 4) {
            sc = byte_of3(r.s0, r.s1, r.s2, is) & 63u;
            mn = byte_of3(r.s0, r.s1, r.s2, is + 4) & 63u;
        } else {
            sc = (byte_of3(r.s0, r.s1, r.s2, is + 4) & 0xFu) | ((byte_of3(r.s0, r.s1, r.s2, is - 4) >> 6) << 4);
            mn = (byte_of3(r.s0, r.s1, r.s2, is + 4) >> 4) | ((byte_of3(r.s0, r.s1, r.s2, is) >> 6) << 4);
        }
    }
    static __device__ __forceinline__ void decode(const Raw& r, float* q, float* s, float* m) {
        const float off = 8388608.0f;
        nibbles(r.w0, off, q, q + 8);
        nibbles(r.w1, off, q + 4, q + 12);
        const float d = f16_to_f32((u16)(r.dm & 0xffffu)), dmin = f16_to_f32((u16)(r.dm >> 16));
        u32 sc, mn;
        scale_min(r, 2 * r.j, sc, mn);
        s[0] = s[1] = d * (float)sc;
        m[0] = m[1] = -dmin * (float)mn;
        scale_min(r, 2 * r.j + 1, sc, mn);
        s[2] = s[3] = d * (float)sc;
        m[2] = m[3] = -dmin * (float)mn;
    }
    static __device__ __forceinline__ int xoff(int c, int g) {
        const int cc = c & 15;
        return 256 * (c >> 4) + 64 * (cc >> 2) + 8 * (cc & 3) + 32 * (g >> 1) + 4 * (g & 1);
    }
};

// Q6_K: 210-byte superblocks of 256 = [128 bytes ql (low 4 bits), 64 bytes
// qh (high 2 bits), 16 x i8 scales, f16 d]; value = d * sc * (q - 32). Each
// half (128 values) uses ql[64], qh[32] and sc[8]: for l < 32, ql[l] and
// ql[l+32] low nibbles give values l and l+32, their high nibbles l+64 and
// l+96, with qh[l] bits 0-1, 2-3, 4-5, 6-7 on top; the scale of value v in
// the half is sc[v / 16]. A chunk is 4 consecutive l: 16 values, 4 groups.
struct Q6_KW {
    static constexpr int CHUNK = 16, NG = 4, BLOCK_LEN = 256, BLOCK_BYTES = 210, STEP_CHUNKS = 128;
    static constexpr bool SCALE = true, MIN = false;
    struct Raw { u32 a, b, h, sc, d; };
    static __device__ __forceinline__ Raw load(const u8* row, int c) {
        const u8* blk = row + 210 * (c >> 4);
        const int cc = c & 15, n = cc >> 3, k = cc & 7;
        const u8* ql = blk + 64 * n + 4 * k;
        // Scales for l in [4k, 4k+4): sc[8n + k/4 + {0, 2, 4, 6}].
        const u8* sc = blk + 192 + 8 * n + (k >> 2);
        const u32 s = (u32)sc[0] | ((u32)sc[2] << 8) | ((u32)sc[4] << 16) | ((u32)sc[6] << 24);
        return Raw{ld_u32_a2(ql), ld_u32_a2(ql + 32), ld_u32_a2(blk + 128 + 32 * n + 4 * k), s,
                   (u32) * (const u16*)(blk + 208)};
    }
    static __device__ __forceinline__ void decode(const Raw& r, float* q, float* s, float* m) {
        const float off = 8388640.0f;  // 2^23 + 32
        const u32 g0 = (r.a & 0x0F0F0F0Fu) | ((r.h & 0x03030303u) << 4);
        const u32 g1 = (r.b & 0x0F0F0F0Fu) | ((r.h & 0x0C0C0C0Cu) << 2);
        const u32 g2 = ((r.a >> 4) & 0x0F0F0F0Fu) | (r.h & 0x30303030u);
        const u32 g3 = ((r.b >> 4) & 0x0F0F0F0Fu) | ((r.h >> 2) & 0x30303030u);
        const u32 g[4] = {g0, g1, g2, g3};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            q[4 * i + 0] = byte_magic<0>(g[i]) - off;
            q[4 * i + 1] = byte_magic<1>(g[i]) - off;
            q[4 * i + 2] = byte_magic<2>(g[i]) - off;
            q[4 * i + 3] = byte_magic<3>(g[i]) - off;
        }
        const float d = f16_to_f32((u16)r.d);
#pragma unroll
        for (int i = 0; i < 4; i++) s[i] = d * (float)(signed char)((r.sc >> (8 * i)) & 0xffu);
    }
    static __device__ __forceinline__ int xoff(int c, int g) {
        const int cc = c & 15;
        return 256 * (c >> 4) + 128 * (cc >> 3) + 32 * g + 4 * (cc & 7);
    }
};

#if defined(WEFT_WT_F32)
typedef F32W WT;
#elif defined(WEFT_WT_F16)
typedef F16W WT;
#define WEFT_STAGED
#elif defined(WEFT_WT_BF16)
typedef BF16W WT;
#define WEFT_STAGED
#elif defined(WEFT_WT_Q8_0)
typedef Q8_0W WT;
#define WEFT_STAGED
#elif defined(WEFT_WT_Q4_0)
typedef Q4_0W WT;
#define WEFT_STAGED
#elif defined(WEFT_WT_Q4_1)
typedef Q4_1W WT;
#define WEFT_STAGED
#elif defined(WEFT_WT_Q4_K)
typedef Q4_KW WT;
#define WEFT_STAGED
#elif defined(WEFT_WT_Q6_K)
typedef Q6_KW WT;
#define WEFT_STAGED
#else
#error "define one WEFT_WT_* weight type"
#endif

// ---------------------------------------------------------------- GEMV

// acc[r][b] += row r's chunk c (decoded from raw[r]) · x_b's matching values.
template <class T, int B, int R>
__device__ __forceinline__ void accumulate_chunk(const typename T::Raw* raw, int c, const float* __restrict__ X,
                                                 int cols, float (&acc)[R][B]) {
    float q[R][T::CHUNK], s[R][T::NG], m[R][T::NG];
#pragma unroll
    for (int r = 0; r < R; r++) T::decode(raw[r], q[r], s[r], m[r]);
#pragma unroll
    for (int b = 0; b < B; b++) {
        const float* xb = X + (i64)b * cols;
        float4 xv[T::NG];
        float xs[T::NG];
#pragma unroll
        for (int g = 0; g < T::NG; g++) {
            xv[g] = *(const float4*)(xb + T::xoff(c, g));
            if (T::MIN) xs[g] = (xv[g].x + xv[g].y) + (xv[g].z + xv[g].w);
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            float a = acc[r][b];
#pragma unroll
            for (int g = 0; g < T::NG; g++) {
                float d = q[r][4 * g] * xv[g].x;
                d = fmaf(q[r][4 * g + 1], xv[g].y, d);
                d = fmaf(q[r][4 * g + 2], xv[g].z, d);
                d = fmaf(q[r][4 * g + 3], xv[g].w, d);
                a = T::SCALE ? fmaf(s[r][g], d, a) : a + d;
                if (T::MIN) a = fmaf(m[r][g], xs[g], a);
            }
            acc[r][b] = a;
        }
    }
}

template <int B, int R>
__device__ __forceinline__ void write_rows(float (&acc)[R][B], float* __restrict__ Y, int row0, int rows) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float v = warp_sum(acc[r][b]);
            if (lane == 0 && row0 + r < rows) Y[(i64)b * rows + row0 + r] = v;
        }
}

// Direct path: each lane loads its chunks straight from global memory.
// Y[b, r] = sum_c W[r, c] * X[b, c] for b < B, r < rows.
// grid: ceil(rows / (4 * R)); block: 128 threads (4 warps).
template <class T, int B, int R>
__device__ __forceinline__ void gemv_body(const u8* __restrict__ W, const float* __restrict__ X,
                                          float* __restrict__ Y, int rows, int cols, i64 row_bytes) {
    // Chunks in flight per lane: enough loads outstanding to cover DRAM
    // latency at batch 1, fewer registers when the batch adds arithmetic.
    constexpr int U0 = (T::CHUNK == 8 ? 4 : 2) / B;
    constexpr int U = U0 > 0 ? U0 : 1;
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
    if (row0 >= rows) return;
    const int nchunks = cols / T::CHUNK;
    const u8* rp[R];
#pragma unroll
    for (int r = 0; r < R; r++) rp[r] = W + (i64)min(row0 + r, rows - 1) * row_bytes;
    float acc[R][B];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < B; b++) acc[r][b] = 0.f;

    for (int c0 = lane; c0 < nchunks; c0 += 32 * U) {
        typename T::Raw raw[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + 32 * u;
            if (c < nchunks) {
#pragma unroll
                for (int r = 0; r < R; r++) raw[u][r] = T::load(rp[r], c);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + 32 * u;
            if (c < nchunks) accumulate_chunk<T, B, R>(raw[u], c, X, cols, acc);
        }
    }
    write_rows<B, R>(acc, Y, row0, rows);
}

#define WEFT_GEMV(B, R)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) gemv_b##B##_r##R(                             \
        const u8* __restrict__ W, const float* __restrict__ X, float* __restrict__ Y, int rows,     \
        int cols, i64 row_bytes) {                                                                  \
        gemv_body<WT, B, R>(W, X, Y, rows, cols, row_bytes);                                        \
    }

WEFT_GEMV(1, 1)
WEFT_GEMV(1, 2)
WEFT_GEMV(1, 4)
WEFT_GEMV(2, 1)
WEFT_GEMV(2, 2)
WEFT_GEMV(2, 4)
WEFT_GEMV(4, 1)
WEFT_GEMV(4, 2)
WEFT_GEMV(4, 4)
WEFT_GEMV(8, 1)
WEFT_GEMV(8, 2)
WEFT_GEMV(8, 4)

// ---------------------------------------------------------------- staged GEMV

#if defined(WEFT_STAGED)
// Staged path for the block and 16-bit formats, used when every row starts
// 16-byte aligned (row_bytes % 16 == 0). Block sizes of 34, 18 or 210 bytes
// make per-lane loads narrow and misaligned; instead each warp copies
// "steps" of its rows (STEP_CHUNKS chunks: a whole number of blocks and of
// 16-byte units) into shared memory with 16-byte cp.async copies, several
// steps ahead, and decodes each step from shared memory once it has landed.
// Each warp owns its buffers, so only __syncwarp is needed.

#ifdef WEFT_ON_CPU
// kernels/cuda/emulator/block.h supplies cp.async for CPU threads.
#else
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#endif

// Pipeline depth: as many steps as fit in 12 KB per warp (48 KB per block of
// 4 warps), at least 2; deeper pipelines keep more bytes in flight per SM,
// which the short rows of the 4-bit formats need to cover DRAM latency.
template <class T, int R>
struct Staging {
    static constexpr int SC = T::STEP_CHUNKS;
    static constexpr int SB = SC * T::CHUNK / T::BLOCK_LEN * T::BLOCK_BYTES;
    static constexpr int FIT = 12288 / (R * SB);
    static constexpr int STAGES = FIT > 8 ? 8 : FIT;
    static_assert(SB % 16 == 0, "a step must be a whole number of 16-byte units");
};

template <class T, int B, int R>
__device__ __forceinline__ void gemv_staged_body(const u8* __restrict__ W, const float* __restrict__ X,
                                                 float* __restrict__ Y, int rows, int cols, i64 row_bytes) {
    typedef Staging<T, R> S;
    constexpr int SC = S::SC, SB = S::SB, ST = S::STAGES;
    static_assert(ST >= 2, "no room for two pipeline stages");
    __shared__ __align__(16) u8 stage[4][ST][R][SB];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + w) * R;
    if (row0 >= rows) return;
    const int nchunks = cols / T::CHUNK;
    const int nsteps = (nchunks + SC - 1) / SC;
    const u8* rp[R];
#pragma unroll
    for (int r = 0; r < R; r++) rp[r] = W + (i64)min(row0 + r, rows - 1) * row_bytes;
    float acc[R][B];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < B; b++) acc[r][b] = 0.f;

    // One commit group per step, empty past the end, so that "step s has
    // landed" is always "at most ST - 2 groups pending".
    auto issue = [&](int step) {
        if (step < nsteps) {
            const i64 off = (i64)step * SB;
            const int units = (int)(min((i64)SB, row_bytes - off) >> 4);
            const int buf = step % ST;
#pragma unroll
            for (int r = 0; r < R; r++)
                for (int j = lane; j < units; j += 32) cp_async16(&stage[w][buf][r][16 * j], rp[r] + off + 16 * j);
        }
        cp_async_commit();
    };

#pragma unroll
    for (int p = 0; p < ST - 1; p++) issue(p);
    for (int step = 0; step < nsteps; step++) {
        cp_async_wait<ST - 2>();
        __syncwarp();
        // The buffer refilled here was consumed in the previous iteration,
        // which ended with __syncwarp.
        issue(step + ST - 1);
        const int cbase = step * SC;
        const int cn = min(SC, nchunks - cbase);
        const int buf = step % ST;
#pragma unroll
        for (int u = 0; u < SC / 32; u++) {
            const int cl = 32 * u + lane;
            if (cl < cn) {
                typename T::Raw raw[R];
#pragma unroll
                for (int r = 0; r < R; r++) raw[r] = T::load(stage[w][buf][r], cl);
                accumulate_chunk<T, B, R>(raw, cbase + cl, X, cols, acc);
            }
        }
        __syncwarp();
    }
    cp_async_wait<0>();
    write_rows<B, R>(acc, Y, row0, rows);
}

#define WEFT_GEMV_STAGED(B, R)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) gemvs_b##B##_r##R(                            \
        const u8* __restrict__ W, const float* __restrict__ X, float* __restrict__ Y, int rows,     \
        int cols, i64 row_bytes) {                                                                  \
        gemv_staged_body<WT, B, R>(W, X, Y, rows, cols, row_bytes);                                 \
    }

WEFT_GEMV_STAGED(1, 1)
WEFT_GEMV_STAGED(1, 2)
WEFT_GEMV_STAGED(2, 1)
WEFT_GEMV_STAGED(2, 2)
WEFT_GEMV_STAGED(4, 1)
WEFT_GEMV_STAGED(4, 2)
WEFT_GEMV_STAGED(8, 1)
WEFT_GEMV_STAGED(8, 2)
#if !defined(WEFT_WT_Q6_K) && !defined(WEFT_WT_F16) && !defined(WEFT_WT_BF16)
// Four rows of Q6_K (1680-byte) or 16-bit (2048-byte) steps leave no room
// for two stages in 12 KB.
WEFT_GEMV_STAGED(1, 4)
WEFT_GEMV_STAGED(2, 4)
WEFT_GEMV_STAGED(4, 4)
WEFT_GEMV_STAGED(8, 4)
#endif
#endif  // WEFT_STAGED

// ---------------------------------------------------------------- embedding

// Chunk c of the quantised row `src`, dequantised into the f32 row `o`.
__device__ __forceinline__ void dequant_chunk(const u8* __restrict__ src, int c, float* __restrict__ o) {
    const typename WT::Raw raw = WT::load(src, c);
    float q[WT::CHUNK], s[WT::NG], m[WT::NG];
    WT::decode(raw, q, s, m);
#pragma unroll
    for (int g = 0; g < WT::NG; g++) {
        const int base = WT::xoff(c, g);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float v = q[4 * g + e];
            if (WT::SCALE) v = WT::MIN ? fmaf(s[g], v, m[g]) : s[g] * v;
            o[base + e] = v;
        }
    }
}

// out[t, :] = dequantised row ids[t] of W. grid: (ceil(chunks / 128), tokens);
// block: 128. Ids were checked against the row count on the host.
extern "C" __global__ void embed_rows(const u8* __restrict__ W, const u32* __restrict__ ids,
                                      float* __restrict__ out, int cols, i64 row_bytes) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols / WT::CHUNK) return;
    dequant_chunk(W + (i64)ids[blockIdx.y] * row_bytes, c, out + (i64)blockIdx.y * cols);
}

// out[r - out_first_row] = dequantised row r of W, for r = first_row +
// blockIdx.y: panels of rows expanded to f32 for a cuBLAS GEMM over many
// tokens.
// grid: (ceil(cols / CHUNK / 128), rows in this launch); block: 128.
extern "C" __global__ void dequant_rows(const u8* __restrict__ W, float* __restrict__ out, int cols,
                                        i64 row_bytes, int first_row, int out_first_row) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols / WT::CHUNK) return;
    const i64 row = (i64)first_row + blockIdx.y;
    dequant_chunk(W + row * row_bytes, c, out + (row - out_first_row) * cols);
}
