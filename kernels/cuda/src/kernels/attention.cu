// The paged KV cache: writing a step's keys and values into their slots,
// and attention of query rows over them, read through block tables.
//
// Cache layout (both K and V): [block][token in block][kv head][head_dim],
// stored as KV_T: f32 (default), IEEE half (-DWEFT_KV_F16) or FP8 E4M3
// (-DWEFT_KV_E4M3, no scale). Grouped-query attention: query head h reads kv
// head h / (n_heads / n_kv_heads). Query row r belongs to the sequence whose
// block table is row row_seq[r] and attends to its first lens[r] cached
// tokens (the row's own key included, so a decode token or a prefill token at
// position lens[r] - 1 is causal). The partitioned kernels take a subset of
// the rows: grid row i is query row row_ids[i] of q and out. Scores are scaled by `scale`
// (1/sqrt(head_dim)).
//
// Two kernels, flash-decoding style: paged_attn_partial splits each
// sequence into partitions of part_len tokens and writes, per (sequence,
// head, partition), the running max m, the sum of exp(s - m) and the
// unnormalised sum of exp(s - m) * v; paged_attn_reduce merges partitions
// with the usual log-sum-exp rescaling. Every exponent is taken after the
// maximum is subtracted, so no score overflows.
#include "common.cuh"

#define WEFT_MAX_GROUP 16
#define WEFT_MAX_HEAD_DIM 256

#if defined(WEFT_KV_F16)
typedef u16 KV_T;
__device__ __forceinline__ float kv_load(const KV_T* p, i64 i) { return f16_to_f32(p[i]); }
__device__ __forceinline__ KV_T kv_store(float f) { return f32_to_f16(f); }
#elif defined(WEFT_KV_E4M3)
typedef u8 KV_T;
__device__ __forceinline__ float kv_load(const KV_T* p, i64 i) { return e4m3_to_f32(p[i]); }
__device__ __forceinline__ KV_T kv_store(float f) { return f32_to_e4m3(f); }
#else
typedef float KV_T;
__device__ __forceinline__ float kv_load(const KV_T* p, i64 i) { return p[i]; }
__device__ __forceinline__ KV_T kv_store(float f) { return f; }
#endif

// kc[slots[t]], vc[slots[t]] = k[t], v[t] (kv_dim values each, converted to
// KV_T). grid: (tokens); block: any.
extern "C" __global__ void kv_write(const float* __restrict__ k, const float* __restrict__ v,
                                    const u32* __restrict__ slots, KV_T* __restrict__ kc,
                                    KV_T* __restrict__ vc, int kv_dim) {
    const i64 src = (i64)blockIdx.x * kv_dim, dst = (i64)slots[blockIdx.x] * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kc[dst + i] = kv_store(k[src + i]);
        vc[dst + i] = kv_store(v[src + i]);
    }
}

// grid: (n_kv_heads, n_rows, n_parts); block: max(128, head_dim) threads.
// dynamic shared memory: G * (head_dim + part_len + blockDim.x) floats.
extern "C" __global__ void paged_attn_partial(
    const float* __restrict__ q, const KV_T* __restrict__ kc, const KV_T* __restrict__ vc,
    const u32* __restrict__ block_tables, const u32* __restrict__ row_ids, const u32* __restrict__ row_seq,
    const u32* __restrict__ seq_lens,
    float* __restrict__ part_m, float* __restrict__ part_l, float* __restrict__ part_acc, int n_heads, int n_kv,
    int head_dim, int block_size, int max_blocks, int part_len, int n_parts, float scale) {
    const int kvh = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;  // seq: the query row
    const int G = n_heads / n_kv;
    const int len = (int)seq_lens[seq];
    const int t0 = part * part_len;
    if (t0 >= len) return;  // the reduce kernel reads only partitions below len
    const int t1 = min(len, t0 + part_len), n = t1 - t0;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;

    extern __shared__ float sm[];
    float* q_s = sm;                          // [G][head_dim], pre-scaled
    float* sc = q_s + G * head_dim;           // [G][part_len] scores, then probabilities
    float* red = sc + G * part_len;           // [G][blockDim.x] partial P.V sums

    const float* qh = q + ((i64)row_ids[seq] * n_heads + (i64)kvh * G) * head_dim;
    for (int i = tid; i < G * head_dim; i += blockDim.x) q_s[i] = qh[i] * scale;
    __syncthreads();

    const u32* table = block_tables + (i64)row_seq[seq] * max_blocks;
    const int per_lane = (head_dim + 31) >> 5;  // head_dim <= 256; lanes past it hold 0
    // Scores: a warp per token, lanes across head_dim (coalesced K rows).
    for (int t = t0 + warp; t < t1; t += nwarps) {
        const i64 blk = table[t / block_size];
        const KV_T* kp = kc + ((blk * block_size + t % block_size) * n_kv + kvh) * (i64)head_dim;
        float kr[WEFT_MAX_HEAD_DIM / 32];
#pragma unroll
        for (int i = 0; i < WEFT_MAX_HEAD_DIM / 32; i++)
            if (i < per_lane) kr[i] = lane + 32 * i < head_dim ? kv_load(kp, lane + 32 * i) : 0.f;
        for (int g = 0; g < G; g++) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < WEFT_MAX_HEAD_DIM / 32; i++)
                if (i < per_lane && lane + 32 * i < head_dim) s = fmaf(q_s[g * head_dim + lane + 32 * i], kr[i], s);
            s = warp_sum(s);
            if (lane == 0) sc[g * part_len + (t - t0)] = s;
        }
    }
    __syncthreads();

    // Softmax numerators per head, relative to the partition's maximum.
    const i64 out_base = ((i64)seq * n_heads + (i64)kvh * G) * n_parts + part;  // head stride n_parts
    for (int g = warp; g < G; g += nwarps) {
        float m = neg_inf();
        for (int i = lane; i < n; i += 32) m = fmaxf(m, sc[g * part_len + i]);
        m = warp_max(m);
        float l = 0.f;
        for (int i = lane; i < n; i += 32) {
            const float e = expf(sc[g * part_len + i] - m);
            sc[g * part_len + i] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            part_m[out_base + (i64)g * n_parts] = m;
            part_l[out_base + (i64)g * n_parts] = l;
        }
    }
    __syncthreads();

    // P.V: thread (sub, d) sums tokens sub, sub + nsub, ... for dimension d,
    // for every head of the group at once (V is read once per group).
    const int nsub = blockDim.x / head_dim;
    const int d = tid % head_dim, sub = tid / head_dim;
    float acc[WEFT_MAX_GROUP];
#pragma unroll
    for (int g = 0; g < WEFT_MAX_GROUP; g++) acc[g] = 0.f;
    if (sub < nsub) {
        for (int t = t0 + sub; t < t1; t += nsub) {
            const i64 blk = table[t / block_size];
            const float v = kv_load(vc, ((blk * block_size + t % block_size) * n_kv + kvh) * (i64)head_dim + d);
#pragma unroll
            for (int g = 0; g < WEFT_MAX_GROUP; g++)
                if (g < G) acc[g] = fmaf(sc[g * part_len + (t - t0)], v, acc[g]);
        }
    }
#pragma unroll
    for (int g = 0; g < WEFT_MAX_GROUP; g++)
        if (g < G) red[g * blockDim.x + tid] = acc[g];
    __syncthreads();
    for (int i = tid; i < G * head_dim; i += blockDim.x) {
        const int g = i / head_dim, dd = i - g * head_dim;
        float s = 0.f;
        for (int k = 0; k < nsub; k++) s += red[g * blockDim.x + k * head_dim + dd];
        part_acc[(out_base + (i64)g * n_parts) * head_dim + dd] = s;
    }
}

// out[seq, h, :] = merge of the partitions of (seq, h).
// grid: (n_heads, n_seqs); block: head_dim threads.
extern "C" __global__ void paged_attn_reduce(const float* __restrict__ part_m, const float* __restrict__ part_l,
                                             const float* __restrict__ part_acc, const u32* __restrict__ row_ids,
                                             const u32* __restrict__ seq_lens, float* __restrict__ out, int n_heads,
                                             int head_dim, int part_len, int n_parts) {
    const int h = blockIdx.x, seq = blockIdx.y, d = threadIdx.x;
    const int used = ((int)seq_lens[seq] + part_len - 1) / part_len;
    const i64 base = ((i64)seq * n_heads + h) * n_parts;
    float M = neg_inf();
    for (int p = 0; p < used; p++) M = fmaxf(M, part_m[base + p]);
    float L = 0.f, a = 0.f;
    for (int p = 0; p < used; p++) {
        const float w = expf(part_m[base + p] - M);
        L = fmaf(part_l[base + p], w, L);
        a = fmaf(part_acc[(base + p) * head_dim + d], w, a);
    }
    out[((i64)row_ids[seq] * n_heads + h) * head_dim + d] = a / L;
}

// Prefill attention, flash style: a block takes one query head and a tile of
// up to PF_TQ consecutive query rows of one sequence (positions first_len-1,
// first_len, ...; row r attends to first_len + r tokens), walks the
// sequence's keys and values in tiles of PF_TK tokens staged once in shared
// memory for every row of the tile, and keeps each row's softmax online
// (running max, sum and weighted values in registers). A warp owns four
// rows; lanes split head_dim (at most 128 here).
//
// tiles: n_tiles × (table row, first query row, row count, first length).
// grid: (n_heads, n_tiles); block: 128 threads; dynamic shared memory:
// 2 * PF_TK * head_dim floats.
#define PF_TQ 16
#define PF_TK 32
#define PF_MAX_HEAD_DIM 128
extern "C" __global__ void paged_attn_prefill(const float* __restrict__ q, const KV_T* __restrict__ kc,
                                              const KV_T* __restrict__ vc, const u32* __restrict__ block_tables,
                                              const u32* __restrict__ tiles, float* __restrict__ out, int n_heads,
                                              int n_kv, int head_dim, int block_size, int max_blocks, float scale) {
    const int h = blockIdx.x;
    const u32* tile = tiles + 4 * (i64)blockIdx.y;
    const int table_row = (int)tile[0], first_row = (int)tile[1], count = (int)tile[2], first_len = (int)tile[3];
    const int kvh = h / (n_heads / n_kv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    extern __shared__ float sm[];
    float* ks = sm;                     // [PF_TK][head_dim]
    float* vs = sm + PF_TK * head_dim;  // [PF_TK][head_dim]
    const u32* table = block_tables + (i64)table_row * max_blocks;
    const int per_lane = (head_dim + 31) >> 5;

    float qr[4][PF_MAX_HEAD_DIM / 32], acc[4][PF_MAX_HEAD_DIM / 32], m[4], l[4];
    int len[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int r = warp * 4 + j;
        len[j] = r < count ? first_len + r : 0;  // 0: no row (warp-uniform)
        m[j] = neg_inf();
        l[j] = 0.f;
#pragma unroll
        for (int i = 0; i < PF_MAX_HEAD_DIM / 32; i++) {
            const int d = lane + 32 * i;
            acc[j][i] = 0.f;
            qr[j][i] = (len[j] > 0 && i < per_lane && d < head_dim)
                           ? q[((i64)(first_row + r) * n_heads + h) * head_dim + d] * scale
                           : 0.f;
        }
    }
    const int max_len = first_len + count - 1;
    for (int t0 = 0; t0 < max_len; t0 += PF_TK) {
        const int nt = min(PF_TK, max_len - t0);
        __syncthreads();  // the previous tile is no longer read
        for (int i = threadIdx.x; i < nt * head_dim; i += blockDim.x) {
            const int tt = i / head_dim, d = i - tt * head_dim, t = t0 + tt;
            const i64 blk = table[t / block_size];
            const i64 at = ((blk * block_size + t % block_size) * n_kv + kvh) * (i64)head_dim + d;
            ks[i] = kv_load(kc, at);
            vs[i] = kv_load(vc, at);
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int visible = min(nt, len[j] - t0);  // warp-uniform
            for (int tt = 0; tt < visible; tt++) {
                float s = 0.f;
#pragma unroll
                for (int i = 0; i < PF_MAX_HEAD_DIM / 32; i++) {
                    const int d = lane + 32 * i;
                    if (i < per_lane && d < head_dim) s = fmaf(qr[j][i], ks[tt * head_dim + d], s);
                }
                s = warp_sum(s);
                const float mn = fmaxf(m[j], s);
                const float c = expf(m[j] - mn), p = expf(s - mn);
                l[j] = fmaf(l[j], c, p);
#pragma unroll
                for (int i = 0; i < PF_MAX_HEAD_DIM / 32; i++) {
                    const int d = lane + 32 * i;
                    if (i < per_lane && d < head_dim) acc[j][i] = fmaf(acc[j][i], c, p * vs[tt * head_dim + d]);
                }
                m[j] = mn;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (len[j] == 0) continue;
        const int r = warp * 4 + j;
#pragma unroll
        for (int i = 0; i < PF_MAX_HEAD_DIM / 32; i++) {
            const int d = lane + 32 * i;
            if (i < per_lane && d < head_dim) out[((i64)(first_row + r) * n_heads + h) * head_dim + d] = acc[j][i] / l[j];
        }
    }
}
