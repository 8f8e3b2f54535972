// Choosing the samplers' tokens where the logits are (pick_rows,
// edit_rows, choose_rows): each pick's row is copied with its guide mask
// applied, its sparse edits are applied in order, and one block per pick
// draws the token with the host's rules: weights exp(l/T - top) computed bit for bit
// as the host computes them, min-p, top-k and top-p cuts, then the
// inverse-CDF draw summing in token-id order. The top-p mass is summed in
// fixed point (exact, so the same in any order) and the draw's sums in a
// fixed tree order: every choice is deterministic, but a cut or draw that
// lands within rounding of a boundary may differ from the host's.
#include "common.cuh"

#define WEFT_CHOOSE_THREADS 1024
#define WEFT_EDIT_ADD 0u
#define WEFT_EDIT_PENALIZE 1u

// grid (x-blocks, picks), block 256: work[p] = logits[rows[p]] with the
// tokens outside pick p's mask (if mask_at[p] != WEFT_NO_ID, words from
// masks[mask_at[p]]) and NaN set to -inf.
extern "C" __global__ void pick_rows(const float* __restrict__ logits, int vocab, const u32* __restrict__ rows,
                                     const u32* __restrict__ mask_at, const u32* __restrict__ masks,
                                     float* __restrict__ work) {
    const int p = blockIdx.y;
    const float* src = logits + (i64)rows[p] * vocab;
    float* dst = work + (i64)p * vocab;
    const u32 m = mask_at[p];
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < vocab; t += gridDim.x * blockDim.x) {
        float v = src[t];
        if (v != v) v = neg_inf();
        if (m != WEFT_NO_ID && !((masks[m + (t >> 5)] >> (t & 31)) & 1u)) v = neg_inf();
        dst[t] = v;
    }
}

// One thread per segment: the edits of one (pick, token), applied in order
// (kind 0: add, 1: CTRL penalty, otherwise ban). Segments name distinct
// (pick, token) pairs, so no two threads touch one logit.
extern "C" __global__ void edit_rows(float* __restrict__ work, int vocab, int segments, const u32* __restrict__ seg_pick,
                                     const u32* __restrict__ seg_token, const u32* __restrict__ seg_start,
                                     const u32* __restrict__ op_kind, const float* __restrict__ op_value) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= segments) return;
    float* x = work + (i64)seg_pick[s] * vocab + seg_token[s];
    float v = *x;
    for (u32 j = seg_start[s]; j < seg_start[s + 1]; j++) {
        const float a = op_value[j];
        if (op_kind[j] == WEFT_EDIT_ADD) v = v + a;
        else if (op_kind[j] == WEFT_EDIT_PENALIZE) v = v > 0.f ? v / a : v * a;
        else v = neg_inf();
    }
    if (v != v) v = neg_inf();  // as pick_rows: NaN is never chosen
    *x = v;
}

// A float's order as an unsigned key: larger float, larger key; -0 and +0
// are one value (the host ranks them equal, then by id).
__device__ __forceinline__ u32 order_key(float v) {
    u32 b = __float_as_uint(v);
    if (b == 0x80000000u) b = 0;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// e^x for x <= 0 exactly as the host's vocab::exp_nonpositive computes it
// (Cody-Waite reduction, Taylor series to degree 13, 0 below -708 and for
// NaN), every operation rounded on its own (no FMA contraction), so the
// device's weights are the host's bit for bit.
__device__ __forceinline__ double exp_nonpositive(double x) {
    const double SHIFT = 6755399441055744.0;  // 1.5 * 2^52
    const double LOG2_E = __longlong_as_double(0x3ff71547652b82feLL);
    const double LN2_HI = __longlong_as_double(0x3fe62e42fee00000LL);
    const double LN2_LO = __longlong_as_double(0x3dea39ef35793c76LL);
    const double FLOOR = -708.0;
    double clamped = x > FLOOR ? x : FLOOR;
    clamped = clamped < 0.0 ? clamped : 0.0;
    const double shifted = __dadd_rn(__dmul_rn(clamped, LOG2_E), SHIFT);
    const double k = __dsub_rn(shifted, SHIFT);
    const double r = __dsub_rn(__dsub_rn(clamped, __dmul_rn(k, LN2_HI)), __dmul_rn(k, LN2_LO));
    // Horner over 1/n! for n = 13 down to 2, then the last two terms.
    double p = 1.0 / 6227020800.0;
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 479001600.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 39916800.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 3628800.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 362880.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 40320.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 5040.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 720.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 120.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 24.0);
    p = __dadd_rn(__dmul_rn(p, r), 1.0 / 6.0);
    p = __dadd_rn(__dmul_rn(p, r), 0.5);
    p = __dadd_rn(__dmul_rn(__dadd_rn(__dmul_rn(p, r), 1.0), r), 1.0);
    const u64 k_bits = (u64)__double_as_longlong(shifted) - (u64)__double_as_longlong(SHIFT);
    const double scale = __longlong_as_double((long long)((k_bits + 1023ull) << 52));
    return x >= FLOOR ? __dmul_rn(p, scale) : 0.0;
}

// The host's weight exp_nonpositive(l * inv_t - top).
__device__ __forceinline__ double weight_of(float l, double inv_t, double top) {
    return exp_nonpositive(__dsub_rn(__dmul_rn((double)l, inv_t), top));
}

// A token's share of the top-p mass in fixed point (2^-40 units; a weight
// is at most 1, so a vocabulary's total fits 64 bits), or 1 for counting.
#define WEFT_MASS_ONE 1099511627776.0
__device__ __forceinline__ u64 measure_of(bool mass, float l, double inv_t, double top) {
    return mass ? __double2ull_rn(__dmul_rn(weight_of(l, inv_t, top), WEFT_MASS_ONE)) : 1ull;
}

// Exclusive prefix sums of v over the block in thread order, into
// excl[threadIdx.x], with the whole sum in excl[blockDim.x] (excl holds
// blockDim.x + 1 values, scratch 32). Deterministic, and thread t's range
// [excl[t], excl[t + 1]) meets its neighbours' exactly, as each bound is
// one stored number. Returns excl[threadIdx.x].
__device__ __forceinline__ double block_scan(double v, double* scratch, double* excl) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    double x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(WEFT_FULL_MASK, x, o);
        if (lane >= o) x += y;
    }
    double ex = __shfl_up_sync(WEFT_FULL_MASK, x, 1);
    if (lane == 0) ex = 0.0;
    __syncthreads();
    if (lane == 31) scratch[warp] = x;
    __syncthreads();
    if (warp == 0) {
        double s = lane < nwarps ? scratch[lane] : 0.0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double y = __shfl_up_sync(WEFT_FULL_MASK, s, o);
            if (lane >= o) s += y;
        }
        scratch[lane] = s;
    }
    __syncthreads();
    const double before = warp > 0 ? scratch[warp - 1] : 0.0;
    excl[threadIdx.x] = before + ex;
    if (threadIdx.x == blockDim.x - 1) excl[blockDim.x] = before + x;
    __syncthreads();
    return excl[threadIdx.x];
}

// Keep the smallest most-likely-first prefix of the row whose measure (1 a
// token, or its weight when MASS) reaches the goal: k when counting, or
// ceil(share * total) of the fixed-point mass when MASS; every other token
// becomes -inf. Ties at the boundary value are kept by lower id. The
// boundary value is found by a radix search over the order keys, 8 bits a
// pass, with the measure histogrammed in shared memory (hist: 256) by
// integer atomics (one per run of a digit in a thread's range): exact, so
// each pass's buckets sum to the bucket above them and the search is the
// same on every run.
template <bool MASS>
__device__ void keep_prefix(float* row, int begin, int end, double inv_t, double top, double share, u64* hist,
                            double* scratch, double* excl) {
    __shared__ u32 s_digit;
    __shared__ u64 s_above, s_goal, s_w;
    __shared__ bool s_reached;
    u32 prefix = 0, decided = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0ull;
        __syncthreads();
        // Runs of one digit in the thread's range go in as one atomic: in
        // the first pass nearly every token shares the top byte, and one
        // atomic per token would serialise the block on a few bins.
        u32 run_digit = 0;
        u64 run = 0;
        for (int i = begin; i < end; i++) {
            const u32 key = order_key(row[i]);
            if ((key & decided) != prefix) continue;
            const u32 digit = (key >> shift) & 255u;
            if (digit != run_digit) {
                if (run > 0) atomicAdd(&hist[run_digit], run);
                run_digit = digit;
                run = 0;
            }
            run += measure_of(MASS, row[i], inv_t, top);
        }
        if (run > 0) atomicAdd(&hist[run_digit], run);
        __syncthreads();
        if (threadIdx.x == 0) {
            if (shift == 24) {
                u64 total = 0;
                for (int d = 0; d < 256; d++) total += hist[d];
                s_goal = MASS ? (u64)ceil(share * (double)total) : (u64)share;
                s_above = 0;
            }
            s_reached = false;
            u64 a = s_above;
            for (int d = 255; d >= 0; d--) {
                if (a + hist[d] >= s_goal) {
                    s_digit = (u32)d;
                    s_reached = true;
                    break;
                }
                a += hist[d];
            }
            s_above = a;
        }
        __syncthreads();
        if (!s_reached) return;  // the goal exceeds the whole measure: nothing to cut
        prefix |= s_digit << shift;
        decided |= 255u << shift;
        __syncthreads();
    }
    // prefix is the boundary key: tokens above it stay; of the tokens on it
    // (all of one weight), the first `need` by id stay.
    double ties = 0.0;
    for (int i = begin; i < end; i++)
        if (order_key(row[i]) == prefix) {
            if (ties == 0.0) s_w = measure_of(MASS, row[i], inv_t, top);  // the same from every tie
            ties += 1.0;
        }
    __syncthreads();
    const u64 short_of = s_goal - s_above;  // > 0: the boundary's bucket was needed
    const double need = (double)max(1ull, (short_of + s_w - 1) / max(s_w, 1ull));
    double rank = block_scan(ties, scratch, excl);
    for (int i = begin; i < end; i++) {
        const u32 key = order_key(row[i]);
        if (key == prefix) {
            if (rank >= need) row[i] = neg_inf();
            rank += 1.0;
        } else if (key < prefix) {
            row[i] = neg_inf();
        }
    }
    __syncthreads();
}

// One block of WEFT_CHOOSE_THREADS per pick: the token pick p chooses from
// its prepared row work[p] (changed in place by the cuts). Greedy when
// temperature is 0 or top_k is 1: the largest logit, lowest id on ties.
extern "C" __global__ void __launch_bounds__(WEFT_CHOOSE_THREADS, 1)
    choose_rows(float* __restrict__ work, int vocab, const float* __restrict__ temperature,
                const u32* __restrict__ top_k, const float* __restrict__ top_p, const float* __restrict__ min_p,
                const double* __restrict__ uniform, u32* __restrict__ out) {
    __shared__ float sv[32];
    __shared__ u32 si[32];
    __shared__ u64 hist[256];
    __shared__ double scratch[32];
    __shared__ double excl[WEFT_CHOOSE_THREADS + 1];
    __shared__ u32 s_pick;
    const int p = blockIdx.x;
    float* row = work + (i64)p * vocab;
    const int per = (vocab + blockDim.x - 1) / blockDim.x;
    const int begin = min(vocab, (int)threadIdx.x * per), end = min(vocab, begin + per);

    float bv = neg_inf();
    u32 bi = WEFT_NO_ID;
    for (int i = begin; i < end; i++)
        if (better(row[i], (u32)i, bv, bi)) {
            bv = row[i];
            bi = (u32)i;
        }
    block_best(bv, bi, sv, si);
    const float t = temperature[p];
    const u32 k = top_k[p];
    if (t == 0.f || k == 1u || bv == neg_inf()) {
        if (threadIdx.x == 0) out[p] = bi == WEFT_NO_ID ? 0u : bi;
        return;
    }
    const double inv_t = 1.0 / (double)t;
    const double top = __dmul_rn((double)bv, inv_t);
    const double floor_w = (double)min_p[p];
    if (floor_w > 0.0)
        for (int i = begin; i < end; i++)
            if (weight_of(row[i], inv_t, top) < floor_w) row[i] = neg_inf();
    __syncthreads();
    if (k > 0u && k < (u32)vocab) keep_prefix<false>(row, begin, end, inv_t, top, (double)k, hist, scratch, excl);
    if (top_p[p] < 1.f) keep_prefix<true>(row, begin, end, inv_t, top, (double)top_p[p], hist, scratch, excl);

    // The draw: the first token, in id order, whose running weight exceeds
    // uniform * total. Each thread owns ids [begin, end) and the weight
    // range [excl[t], excl[t + 1]); the one whose range holds the target
    // walks its ids. Past the end (rounding), the last token with weight.
    double mass = 0.0;
    int last = -1;
    for (int i = begin; i < end; i++) {
        const double w = weight_of(row[i], inv_t, top);
        mass += w;
        if (w > 0.0) last = i;
    }
    if (threadIdx.x == 0) s_pick = WEFT_NO_ID;
    const double before = block_scan(mass, scratch, excl);
    const double target = uniform[p] * excl[blockDim.x];
    if (before <= target && target < excl[threadIdx.x + 1]) {
        double acc = before;
        u32 chosen = last < 0 ? WEFT_NO_ID : (u32)last;
        for (int i = begin; i < end; i++) {
            acc += weight_of(row[i], inv_t, top);
            if (acc > target) {
                chosen = (u32)i;
                break;
            }
        }
        atomicMin(&s_pick, chosen);  // one claimant; the lowest id if rounding made two
    }
    __syncthreads();
    float lv = last < 0 ? neg_inf() : 1.f;
    u32 li = last < 0 ? WEFT_NO_ID : (u32)(vocab - 1 - last);  // lowest of these = highest id
    block_best(lv, li, sv, si);
    if (threadIdx.x == 0) {
        u32 chosen = s_pick;
        if (chosen == WEFT_NO_ID) chosen = li == WEFT_NO_ID ? bi : (u32)(vocab - 1) - li;
        out[p] = chosen;
    }
}
