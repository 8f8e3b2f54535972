// sample.cu's two top-k kernels on CPU threads (block.h), launched as
// CudaKernels::top_k_logprobs launches them: topk_stage1 on a grid of
// (chunks, rows), then topk_stage2 with one block per row, THREADS threads
// each (the GPU runs 256; any multiple of 32 takes the same paths).
// stdin (little-endian u32 unless noted): rows, vocab, k, chunk; f32
// logits[rows][vocab].
// stdout: u32 ids[rows][k], f32 logits[rows][k], f32 logprobs[rows][k],
// f32 logsumexp[rows] (NaN or 0xffffffff where nothing wrote).
// Build: c++ -std=c++20 -O2 -ffp-contract=off -pthread -DTHREADS=64
#include "block.h"
#include "sample.cu"

#ifndef THREADS
#define THREADS WEFT_TOPK_THREADS
#endif

int main() {
    const auto h = emu::read<uint32_t>(4);
    const uint32_t rows = h[0], vocab = h[1], k = h[2], chunk = h[3];
    const auto logits = emu::read<float>((size_t)rows * vocab);
    const uint32_t nch = (vocab + chunk - 1) / chunk;
    const size_t cand = (size_t)rows * nch * k;
    std::vector<float> cand_v(cand, std::nanf("")), chunk_m((size_t)rows * nch, std::nanf("")),
        chunk_s((size_t)rows * nch, std::nanf(""));
    std::vector<u32> cand_i(cand, 0xffffffffu);
    emu::run_grid(Dim3{nch, rows, 1}, THREADS, [&] {
        topk_stage1(logits.data(), vocab, chunk, k, cand_v.data(), cand_i.data(), chunk_m.data(), chunk_s.data());
    });
    std::vector<u32> ids((size_t)rows * k, 0xffffffffu);
    std::vector<float> top((size_t)rows * k, std::nanf("")), logprobs(top), lse(rows, std::nanf(""));
    emu::run_grid(Dim3{rows, 1, 1}, THREADS, [&] {
        topk_stage2(cand_v.data(), cand_i.data(), chunk_m.data(), chunk_s.data(), nch, k, ids.data(), top.data(),
                    logprobs.data(), lse.data());
    });
    fwrite(ids.data(), 4, ids.size(), stdout);
    fwrite(top.data(), 4, top.size(), stdout);
    fwrite(logprobs.data(), 4, logprobs.size(), stdout);
    fwrite(lse.data(), 4, lse.size(), stdout);
    return 0;
}
