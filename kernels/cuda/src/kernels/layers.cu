// Per-token layer kernels: RMSNorm, RoPE and SwiGLU, all on f32 activations.
#include "common.cuh"

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w
// grid: rows; block: any multiple of 32 up to 1024.
extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, int dim, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (i64)blockIdx.x * dim;
    float* orow = out + (i64)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    ss = block_sum(ss, scratch);
    // IEEE sqrt and division (not rsqrtf): the result feeds every later layer.
    const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = xr[i] * scale * w[i];
}

// In-place rotary embedding of x [tokens, n_heads, head_dim] at per-token
// positions. inv_freq [rot_dim / 2] carries base, linear scaling and any
// per-frequency factors (computed on the host in f64). Dimensions past
// rot_dim are left as they are.
//
// The angle pos * inv_freq and its sine and cosine are computed in double:
// at positions in the thousands an f32 angle is off by ~1e-4 rad, which is
// far above the error budget; sin/cos are computed once per token and
// frequency (shared memory) and reused for every head, so the cost is small.
//
// neox = 0: adjacent pairs (2i, 2i+1), as GGUF llama; neox = 1: pairs
// (i, i + rot_dim/2), as Hugging Face / GPT-NeoX.
// grid: tokens; block: 128 threads; dynamic shared memory: rot_dim/2 * 2 floats.
extern "C" __global__ void rope_f32(float* __restrict__ x, const u32* __restrict__ pos,
                                    const double* __restrict__ inv_freq, int n_heads, int head_dim,
                                    int rot_dim, int neox) {
    extern __shared__ float cs[];  // [half] cos, then [half] sin
    const int half = rot_dim >> 1;
    const double p = (double)pos[blockIdx.x];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos(p * inv_freq[i], &s, &c);
        cs[i] = (float)c;
        cs[half + i] = (float)s;
    }
    __syncthreads();
    float* xt = x + (i64)blockIdx.x * n_heads * head_dim;
    for (int j = threadIdx.x; j < n_heads * half; j += blockDim.x) {
        const int h = j / half, i = j - h * half;
        float* hx = xt + (i64)h * head_dim;
        const int i0 = neox ? i : 2 * i;
        const int i1 = neox ? i + half : 2 * i + 1;
        const float x0 = hx[i0], x1 = hx[i1];
        const float c = cs[i], s = cs[half + i];
        hx[i0] = fmaf(x0, c, -x1 * s);
        hx[i1] = fmaf(x0, s, x1 * c);
    }
}

// out = silu(gate) * up, elementwise over n values.
extern "C" __global__ void swiglu_f32(const float* __restrict__ gate, const float* __restrict__ up,
                                      float* __restrict__ out, i64 n) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float g = gate[i];
        // expf (not __expf): full-precision exponent; for g << 0, expf(-g) is
        // inf and g / inf is -0, which is the correct limit.
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// x[i] += y[i] for i < n (the residual stream). grid-stride; any launch.
extern "C" __global__ void add_f32(float* __restrict__ x, const float* __restrict__ y, i64 n) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] += y[i];
}

// x[r, :] += bias for every row r of width dim. grid: rows; block: any.
extern "C" __global__ void add_bias_f32(float* __restrict__ x, const float* __restrict__ bias, int dim) {
    float* row = x + (i64)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) row[i] += bias[i];
}

// out[r, :] = x[rows[r], :] (rows of width dim). grid: rows out; block: any.
extern "C" __global__ void gather_rows_f32(const float* __restrict__ x, const u32* __restrict__ rows,
                                           float* __restrict__ out, int dim) {
    const float* src = x + (i64)rows[blockIdx.x] * dim;
    float* dst = out + (i64)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
}

// out[i] = x[i] rounded to nearest even as bfloat16 (bf16 = 1) or IEEE half
// (bf16 = 0), for tensor-core GEMMs over 16-bit weights. grid-stride.
extern "C" __global__ void f32_to_16(const float* __restrict__ x, u16* __restrict__ out, i64 n, int bf16) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float v = x[i];
        if (bf16) {
            const u32 b = __float_as_uint(v);
            out[i] = v != v ? (u16)0x7fc0 : (u16)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
        } else {
            out[i] = f32_to_f16(v);
        }
    }
}
