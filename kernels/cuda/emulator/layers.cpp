// layers.cu's per-token kernels on CPU threads (block.h), launched as the
// kernel crate launches them.
// stdin (little-endian u32 unless noted): kernel (0 rms_norm_f32, 1
// rope_f32, 2 swiglu_f32), then
//   rms_norm: rows, dim; f32 eps; f32 x[rows][dim]; f32 w[dim];
//   rope: tokens, n_heads, head_dim, rot_dim, neox; pos[tokens];
//         f64 inv_freq[rot_dim / 2]; f32 x[tokens][n_heads][head_dim];
//   swiglu: n, blocks (a grid smaller than n / 256 walks the grid stride);
//           f32 gate[n]; f32 up[n].
// stdout: f32 out (rms_norm [rows][dim], rope the rotated x, swiglu [n]);
// NaN where nothing wrote.
// Build: c++ -std=c++20 -O2 -ffp-contract=off -pthread
#include "block.h"

// CUDA's sincos, in double as the kernel asks.
inline void sincos(double x, double* s, double* c) {
    *s = std::sin(x);
    *c = std::cos(x);
}

#include "layers.cu"

int main() {
    const uint32_t kernel = emu::read<uint32_t>(1)[0];
    std::vector<float> out;
    if (kernel == 0) {
        const auto h = emu::read<uint32_t>(2);
        const uint32_t rows = h[0], dim = h[1];
        const float eps = emu::read<float>(1)[0];
        const auto x = emu::read<float>((size_t)rows * dim), w = emu::read<float>(dim);
        out.assign(x.size(), std::nanf(""));
        emu::run_grid(Dim3{rows, 1, 1}, 256, [&] { rms_norm_f32(x.data(), w.data(), out.data(), dim, eps); });
    } else if (kernel == 1) {
        const auto h = emu::read<uint32_t>(5);
        const uint32_t tokens = h[0], n_heads = h[1], head_dim = h[2], rot_dim = h[3], neox = h[4];
        const auto pos = emu::read<uint32_t>(tokens);
        const auto inv_freq = emu::read<double>(rot_dim / 2);
        out = emu::read<float>((size_t)tokens * n_heads * head_dim);
        emu::run_grid(Dim3{tokens, 1, 1}, 128,
                      [&] { rope_f32(out.data(), pos.data(), inv_freq.data(), n_heads, head_dim, rot_dim, neox); });
    } else {
        const auto h = emu::read<uint32_t>(2);
        const uint32_t n = h[0], blocks = h[1];
        const auto gate = emu::read<float>(n), up = emu::read<float>(n);
        out.assign(n, std::nanf(""));
        emu::run_grid(Dim3{blocks, 1, 1}, 256, [&] { swiglu_f32(gate.data(), up.data(), out.data(), n); });
    }
    fwrite(out.data(), 4, out.size(), stdout);
    return 0;
}
