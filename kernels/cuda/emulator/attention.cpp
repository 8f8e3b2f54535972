// attention.cu's kernels on CPU threads (block.h), for the cache type the
// build selects (-DWEFT_KV_F16, -DWEFT_KV_E4M3, else f32): prefill tiles
// (paged_attn_prefill), partitioned decode rows (paged_attn_partial then
// paged_attn_reduce) or the cache write (kv_write, mode 2, below), launched
// as the kernel crate launches them.
// stdin (little-endian u32 unless noted): mode (0 prefill, 1 decode),
// n_heads, n_kv, head_dim, block_size, max_blocks, num_blocks, n_tables,
// q_rows; f32 scale; f32 q[q_rows][n_heads][head_dim]; k and v caches
// [num_blocks][block_size][n_kv][head_dim] in the cache type; tables[n_tables][max_blocks];
// then for prefill: n_tiles, tiles[n_tiles][4]; for decode: n_rows,
// part_len, n_parts, row_ids[n_rows], row_seq[n_rows], lens[n_rows].
// stdout: f32 out[q_rows][n_heads][head_dim] (NaN where nothing wrote).
// Build: c++ -std=c++20 -O2 -ffp-contract=off -pthread
#include "block.h"
#include "attention.cu"

// Mode 2: kv_write. stdin after the mode: kv_dim, tokens, capacity (slots);
// f32 k[tokens][kv_dim], v[tokens][kv_dim]; slots[tokens]. stdout: the k
// cache then the v cache, [capacity][kv_dim] in the cache type, zero where
// nothing wrote.
static int write_kv() {
    const auto h = emu::read<uint32_t>(3);
    const uint32_t kv_dim = h[0], tokens = h[1], capacity = h[2];
    const auto k = emu::read<float>((size_t)tokens * kv_dim), v = emu::read<float>((size_t)tokens * kv_dim);
    const auto slots = emu::read<uint32_t>(tokens);
    std::vector<KV_T> kc((size_t)capacity * kv_dim, KV_T{}), vc(kc);
    emu::run_grid(Dim3{tokens, 1, 1}, 128, [&] { kv_write(k.data(), v.data(), slots.data(), kc.data(), vc.data(), kv_dim); });
    fwrite(kc.data(), sizeof(KV_T), kc.size(), stdout);
    fwrite(vc.data(), sizeof(KV_T), vc.size(), stdout);
    return 0;
}

int main() {
    const uint32_t mode = emu::read<uint32_t>(1)[0];
    if (mode == 2) return write_kv();
    const auto h = emu::read<uint32_t>(8);
    const uint32_t n_heads = h[0], n_kv = h[1], head_dim = h[2], block_size = h[3], max_blocks = h[4],
                   num_blocks = h[5], n_tables = h[6], q_rows = h[7];
    const float scale = emu::read<float>(1)[0];
    const auto q = emu::read<float>((size_t)q_rows * n_heads * head_dim);
    const size_t cache = (size_t)num_blocks * block_size * n_kv * head_dim;
    const auto kc = emu::read<KV_T>(cache), vc = emu::read<KV_T>(cache);
    const auto tables = emu::read<uint32_t>((size_t)n_tables * max_blocks);
    std::vector<float> out(q.size(), std::nanf(""));
    if (mode == 0) {
        const uint32_t n_tiles = emu::read<uint32_t>(1)[0];
        const auto tiles = emu::read<uint32_t>(4 * (size_t)n_tiles);
        emu::run_grid(Dim3{n_heads, n_tiles, 1}, 128, [&] {
            paged_attn_prefill(q.data(), kc.data(), vc.data(), tables.data(), tiles.data(), out.data(), n_heads, n_kv,
                               head_dim, block_size, max_blocks, scale);
        });
    } else {
        const auto d = emu::read<uint32_t>(3);
        const uint32_t n_rows = d[0], part_len = d[1], n_parts = d[2];
        const auto row_ids = emu::read<uint32_t>(n_rows), row_seq = emu::read<uint32_t>(n_rows), lens = emu::read<uint32_t>(n_rows);
        const size_t parts = (size_t)n_rows * n_heads * n_parts;
        std::vector<float> part_m(parts, std::nanf("")), part_l(parts, std::nanf("")), part_acc(parts * head_dim, std::nanf(""));
        const unsigned threads = std::max(128u, head_dim);
        emu::run_grid(Dim3{n_kv, n_rows, n_parts}, threads, [&] {
            paged_attn_partial(q.data(), kc.data(), vc.data(), tables.data(), row_ids.data(), row_seq.data(),
                               lens.data(), part_m.data(), part_l.data(), part_acc.data(), n_heads, n_kv, head_dim,
                               block_size, max_blocks, part_len, n_parts, scale);
        });
        emu::run_grid(Dim3{n_heads, n_rows, 1}, head_dim, [&] {
            paged_attn_reduce(part_m.data(), part_l.data(), part_acc.data(), row_ids.data(), lens.data(), out.data(),
                              n_heads, head_dim, part_len, n_parts);
        });
    }
    fwrite(out.data(), 4, out.size(), stdout);
    return 0;
}
