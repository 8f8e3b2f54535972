// Top-k and log-softmax over vocabulary rows, on the device, so that a
// sampler sees k candidates and their log-probabilities without the full row
// being copied to the host.
//
// Stage 1 (grid: (chunks, rows), block 256): each block takes one chunk of a
// row into shared memory, computes the chunk's max and sum of exp(v - max),
// and extracts its k best (value descending, id ascending on ties) by k
// rounds of block-wide argmax. Each thread caches the best of its own
// elements and rescans only when that element was taken.
// Stage 2 (grid: rows, block 256): merges the chunks' candidates the same
// way and the chunks' (max, sum) pairs into log-sum-exp, and writes ids,
// logits and logits - logsumexp.
// NaN logits are never selected (every comparison with NaN is false).
#include "common.cuh"

#define WEFT_TOPK_THREADS 256
// Best element among this thread's slots tid, tid + blockDim, ... of vals.
__device__ __forceinline__ void local_best(const float* vals, const u32* ids, int n, float& bv, u32& bi,
                                           int& bslot) {
    bv = neg_inf(); bi = WEFT_NO_ID; bslot = -1;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const u32 id = ids ? ids[j] : (u32)j;
        if (better(vals[j], id, bv, bi)) { bv = vals[j]; bi = id; bslot = j; }
    }
}

// dynamic shared memory: chunk floats.
extern "C" __global__ void topk_stage1(const float* __restrict__ logits, int vocab, int chunk, int k,
                                       float* __restrict__ cand_v, u32* __restrict__ cand_i,
                                       float* __restrict__ chunk_m, float* __restrict__ chunk_s) {
    extern __shared__ float vals[];
    __shared__ float sv[32];
    __shared__ u32 si[32];
    const int row = blockIdx.y, ch = blockIdx.x, nch = gridDim.x;
    const int start = ch * chunk;
    const int n = min(chunk, vocab - start);
    const float* src = logits + (i64)row * vocab + start;
    float m = neg_inf();
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        vals[j] = src[j];
        m = fmaxf(m, vals[j]);
    }
    m = block_max(m, sv);
    float s = 0.f;
    if (m != neg_inf())
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(vals[j] - m);
    s = block_sum(s, sv);
    const i64 slot = (i64)row * nch + ch;
    if (threadIdx.x == 0) { chunk_m[slot] = m; chunk_s[slot] = s; }

    float bv; u32 bi; int bslot;
    local_best(vals, nullptr, n, bv, bi, bslot);
    for (int it = 0; it < k; it++) {
        float wv = bv; u32 wi = bi;
        block_best(wv, wi, sv, si);
        if (threadIdx.x == 0) {
            cand_v[slot * k + it] = wv;
            cand_i[slot * k + it] = wi == WEFT_NO_ID ? WEFT_NO_ID : wi + (u32)start;
        }
        if (wi != WEFT_NO_ID && wi == bi) {  // this thread owned the winner
            vals[bslot] = __int_as_float(0x7fffffff);  // NaN: never selected again
            local_best(vals, nullptr, n, bv, bi, bslot);
        }
    }
}

// dynamic shared memory: nch * k floats then nch * k u32.
extern "C" __global__ void topk_stage2(const float* __restrict__ cand_v, const u32* __restrict__ cand_i,
                                       const float* __restrict__ chunk_m, const float* __restrict__ chunk_s,
                                       int nch, int k, u32* __restrict__ out_ids, float* __restrict__ out_logits,
                                       float* __restrict__ out_logprobs, float* __restrict__ out_lse) {
    extern __shared__ float cv[];
    __shared__ float sv[32];
    __shared__ u32 si[32];
    const int row = blockIdx.x, n = nch * k;
    u32* ci = (u32*)(cv + n);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        cv[j] = cand_v[(i64)row * n + j];
        ci[j] = cand_i[(i64)row * n + j];
    }
    float M = neg_inf();
    for (int c = threadIdx.x; c < nch; c += blockDim.x) M = fmaxf(M, chunk_m[(i64)row * nch + c]);
    M = block_max(M, sv);
    float S = 0.f;
    if (M != neg_inf())
        for (int c = threadIdx.x; c < nch; c += blockDim.x)
            S = fmaf(chunk_s[(i64)row * nch + c], expf(chunk_m[(i64)row * nch + c] - M), S);
    S = block_sum(S, sv);
    const float lse = M == neg_inf() ? M : M + logf(S);
    if (threadIdx.x == 0) out_lse[row] = lse;
    __syncthreads();

    float bv; u32 bi; int bslot;
    local_best(cv, ci, n, bv, bi, bslot);
    for (int it = 0; it < k; it++) {
        float wv = bv; u32 wi = bi;
        block_best(wv, wi, sv, si);
        if (threadIdx.x == 0) {
            out_ids[(i64)row * k + it] = wi;
            out_logits[(i64)row * k + it] = wv;
            out_logprobs[(i64)row * k + it] = wv - lse;
        }
        if (wi != WEFT_NO_ID && wi == bi) {
            cv[bslot] = __int_as_float(0x7fffffff);
            local_best(cv, ci, n, bv, bi, bslot);
        }
    }
}
