// Paged attention for decode: one query token per sequence against its
// cached keys and values, read through a block table.
//
// Cache layout (both K and V): [block][token in block][kv head][head_dim],
// f32. Grouped-query attention: query head h reads kv head h / (n_heads /
// n_kv_heads). The query attends to every cached token of its sequence
// (positions 0 .. seq_len-1, the query's own K/V included, which is causal
// for the last token). Scores are scaled by `scale` (1/sqrt(head_dim)).
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

// grid: (n_kv_heads, n_seqs, n_parts); block: max(128, head_dim) threads.
// dynamic shared memory: G * (head_dim + part_len + blockDim.x) floats.
extern "C" __global__ void paged_attn_partial(
    const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc,
    const u32* __restrict__ block_tables, const u32* __restrict__ seq_lens, float* __restrict__ part_m,
    float* __restrict__ part_l, float* __restrict__ part_acc, int n_heads, int n_kv, int head_dim,
    int block_size, int max_blocks, int part_len, int n_parts, float scale) {
    const int kvh = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;
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

    const float* qh = q + ((i64)seq * n_heads + (i64)kvh * G) * head_dim;
    for (int i = tid; i < G * head_dim; i += blockDim.x) q_s[i] = qh[i] * scale;
    __syncthreads();

    const u32* table = block_tables + (i64)seq * max_blocks;
    const int per_lane = head_dim >> 5;  // head_dim is a multiple of 32, <= 256
    // Scores: a warp per token, lanes across head_dim (coalesced K rows).
    for (int t = t0 + warp; t < t1; t += nwarps) {
        const i64 blk = table[t / block_size];
        const float* kp = kc + ((blk * block_size + t % block_size) * n_kv + kvh) * (i64)head_dim;
        float kr[WEFT_MAX_HEAD_DIM / 32];
#pragma unroll
        for (int i = 0; i < WEFT_MAX_HEAD_DIM / 32; i++)
            if (i < per_lane) kr[i] = kp[lane + 32 * i];
        for (int g = 0; g < G; g++) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < WEFT_MAX_HEAD_DIM / 32; i++)
                if (i < per_lane) s = fmaf(q_s[g * head_dim + lane + 32 * i], kr[i], s);
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
            const float v = vc[((blk * block_size + t % block_size) * n_kv + kvh) * (i64)head_dim + d];
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
                                             const float* __restrict__ part_acc, const u32* __restrict__ seq_lens,
                                             float* __restrict__ out, int n_heads, int head_dim, int part_len,
                                             int n_parts) {
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
    out[((i64)seq * n_heads + h) * head_dim + d] = a / L;
}
