// gemv.cu's kernels on CPU threads (block.h), for the weight type the build
// selects (-DWEFT_WT_Q4_K and so on, as the kernel crate compiles gemv.cu
// per type), launched as the kernel crate launches them: 128 threads, a
// warp per R rows.
// stdin (little-endian u32 unless noted): kernel (0 direct GEMV gemv_bB_rR,
// 1 staged GEMV gemvs_bB_rR, 2 embed_rows, 3 dequant_rows), B, R, rows,
// cols, row_bytes; the weights (rows × row_bytes bytes); then for a GEMV,
// f32 x[B][cols]; for embed_rows, n and ids[n]; for dequant_rows,
// first_row and n.
// stdout: f32 y[B][rows] for a GEMV, f32 out[n][cols] otherwise (NaN where
// nothing wrote).
// Build: c++ -std=c++20 -O2 -ffp-contract=off -fno-strict-aliasing -pthread -DWEFT_WT_<type>
#include "block.h"
#include "gemv.cu"

using Gemv = void (*)(const u8*, const float*, float*, int, int, i64);

// The kernel for (staged, B, R), or null where gemv.cu has none.
static Gemv gemv_kernel(bool staged, unsigned b, unsigned r) {
#define WEFT_DIRECT(B, R) \
    if (!staged && b == B && r == R) return gemv_b##B##_r##R;
    WEFT_DIRECT(1, 1) WEFT_DIRECT(1, 2) WEFT_DIRECT(1, 4) WEFT_DIRECT(2, 1) WEFT_DIRECT(2, 2) WEFT_DIRECT(2, 4)
    WEFT_DIRECT(4, 1) WEFT_DIRECT(4, 2) WEFT_DIRECT(4, 4) WEFT_DIRECT(8, 1) WEFT_DIRECT(8, 2) WEFT_DIRECT(8, 4)
#if defined(WEFT_STAGED)
#define WEFT_STAGED_KERNEL(B, R) \
    if (staged && b == B && r == R) return gemvs_b##B##_r##R;
    WEFT_STAGED_KERNEL(1, 1) WEFT_STAGED_KERNEL(1, 2) WEFT_STAGED_KERNEL(2, 1) WEFT_STAGED_KERNEL(2, 2)
    WEFT_STAGED_KERNEL(4, 1) WEFT_STAGED_KERNEL(4, 2) WEFT_STAGED_KERNEL(8, 1) WEFT_STAGED_KERNEL(8, 2)
#if !defined(WEFT_WT_Q6_K) && !defined(WEFT_WT_F16) && !defined(WEFT_WT_BF16)
    WEFT_STAGED_KERNEL(1, 4) WEFT_STAGED_KERNEL(2, 4) WEFT_STAGED_KERNEL(4, 4) WEFT_STAGED_KERNEL(8, 4)
#endif
#endif
    return nullptr;
}

int main() {
    const auto h = emu::read<uint32_t>(6);
    const uint32_t kernel = h[0], b = h[1], r = h[2], rows = h[3], cols = h[4], row_bytes = h[5];
    const auto w = emu::read<u8>((size_t)rows * row_bytes);
    std::vector<float> out;
    if (kernel <= 1) {
        const Gemv gemv = gemv_kernel(kernel == 1, b, r);
        if (!gemv) {
            fprintf(stderr, "emulator: no %s kernel for B=%u R=%u\n", kernel == 1 ? "staged" : "direct", b, r);
            return 2;
        }
        const auto x = emu::read<float>((size_t)b * cols);
        out.assign((size_t)b * rows, std::nanf(""));
        emu::run_grid(Dim3{(rows + 4 * r - 1) / (4 * r), 1, 1}, 128,
                      [&] { gemv(w.data(), x.data(), out.data(), rows, cols, row_bytes); });
    } else {
        const unsigned blocks = (cols / WT::CHUNK + 127) / 128;
        if (kernel == 2) {
            const uint32_t n = emu::read<uint32_t>(1)[0];
            const auto ids = emu::read<uint32_t>(n);
            out.assign((size_t)n * cols, std::nanf(""));
            emu::run_grid(Dim3{blocks, n, 1}, 128, [&] { embed_rows(w.data(), ids.data(), out.data(), cols, row_bytes); });
        } else {
            const auto d = emu::read<uint32_t>(2);
            const uint32_t first_row = d[0], n = d[1];
            out.assign((size_t)n * cols, std::nanf(""));
            emu::run_grid(Dim3{blocks, n, 1}, 128, [&] {
                dequant_rows(w.data(), out.data(), cols, row_bytes, first_row, first_row);
            });
        }
    }
    fwrite(out.data(), 4, out.size(), stdout);
    return 0;
}
