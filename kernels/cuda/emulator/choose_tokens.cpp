// choose.cu's three kernels on CPU threads (block.h), over the packed
// upload CudaKernels::choose_tokens makes (weft_kernels_cuda::pack_picks)
// and in its order: pick_rows, edit_rows when a pick has edits, then
// choose_rows with one block per pick.
// stdin (little-endian u32): rows, vocab, picks, segments, words; the
// logits (rows × vocab f32); the packed words; the 13 array offsets.
// stdout: one u32 token per pick.
// Build: c++ -std=c++20 -O2 -ffp-contract=off -pthread -DTHREADS=256
#include "block.h"
#include "choose.cu"

#ifndef THREADS
#define THREADS 1024
#endif

int main() {
    const auto h = emu::read<uint32_t>(5);
    const uint32_t rows = h[0], vocab = h[1], picks = h[2], segments = h[3], n_words = h[4];
    const auto logits = emu::read<float>((size_t)rows * vocab);
    // Doubles among the words: keep the buffer 8-byte aligned, as a device
    // allocation is.
    std::vector<uint64_t> storage((n_words + 1) / 2);
    uint32_t* words = reinterpret_cast<uint32_t*>(storage.data());
    const auto w = emu::read<uint32_t>(n_words);
    memcpy(words, w.data(), 4 * (size_t)n_words);
    const auto at = emu::read<uint32_t>(13);
    auto u32s = [&](int i) { return words + at[i]; };
    auto f32s = [&](int i) { return reinterpret_cast<float*>(words + at[i]); };

    std::vector<float> work((size_t)picks * vocab, std::nanf(""));
    std::vector<uint32_t> out(picks, WEFT_NO_ID);
    // pick_rows strides over the row with whatever grid it gets: one warp
    // per pick here (the GPU launches up to 64 blocks of 256 per pick).
    emu::run_grid(Dim3{1, picks, 1}, 32, [&] {
        pick_rows(logits.data(), (int)vocab, u32s(1), u32s(2), u32s(3), work.data());
    });
    if (segments > 0)
        emu::run_grid(Dim3{(segments + 255) / 256, 1, 1}, 256, [&] {
            edit_rows(work.data(), (int)vocab, (int)segments, u32s(4), u32s(5), u32s(6), u32s(7), f32s(8));
        });
    emu::run_grid(Dim3{picks, 1, 1}, THREADS, [&] {
        choose_rows(work.data(), (int)vocab, f32s(9), u32s(10), f32s(11), f32s(12),
                    reinterpret_cast<double*>(words + at[0]), out.data());
    });
    fwrite(out.data(), 4, picks, stdout);
    return 0;
}
