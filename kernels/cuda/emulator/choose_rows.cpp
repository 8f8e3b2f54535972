// choose.cu's choose_rows on CPU threads (block.h), one block per pick.
// stdin (little-endian): u32 rows, vocab, picks; rows × vocab f32 logits,
// already masked and edited; then per pick f32 temperature, u32 top_k,
// f32 top_p, f32 min_p, f64 uniform, u32 row. stdout: one u32 token per
// pick. Build: c++ -std=c++20 -O2 -ffp-contract=off -pthread -DTHREADS=256
#include "block.h"
#include <cstdio>
#include "choose.cu"

#ifndef THREADS
#define THREADS 1024
#endif

template <class T>
static void read(T* into, size_t n) {
    if (fread(into, sizeof(T), n, stdin) != n) {
        fprintf(stderr, "choose_rows: short input\n");
        exit(2);
    }
}

int main() {
    uint32_t head[3];
    read(head, 3);
    const uint32_t rows = head[0], vocab = head[1], picks = head[2];
    std::vector<float> logits((size_t)rows * vocab);
    read(logits.data(), logits.size());
    std::vector<float> temperature(picks), top_p(picks), min_p(picks);
    std::vector<uint32_t> top_k(picks), row(picks);
    std::vector<double> uniform(picks);
    for (uint32_t p = 0; p < picks; p++) {
        read(&temperature[p], 1);
        read(&top_k[p], 1);
        read(&top_p[p], 1);
        read(&min_p[p], 1);
        read(&uniform[p], 1);
        read(&row[p], 1);
        if (row[p] >= rows) {
            fprintf(stderr, "choose_rows: pick %u names row %u of %u\n", p, row[p], rows);
            return 2;
        }
    }
    // pick_rows' copy, one row per pick.
    std::vector<float> work((size_t)picks * vocab);
    for (uint32_t p = 0; p < picks; p++) memcpy(&work[(size_t)p * vocab], &logits[(size_t)row[p] * vocab], 4 * vocab);
    std::vector<uint32_t> out(picks, WEFT_NO_ID);
    for (uint32_t p = 0; p < picks; p++)
        emu::run_block(Dim3{p, 0, 0}, Dim3{picks, 1, 1}, THREADS, [&] {
            choose_rows(work.data(), (int)vocab, temperature.data(), top_k.data(), top_p.data(), min_p.data(),
                        uniform.data(), out.data());
        });
    fwrite(out.data(), 4, picks, stdout);
    return 0;
}
