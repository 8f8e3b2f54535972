//! Kernels compiled as C++ and run on CPU threads
//! (kernels/cuda/emulator/block.h: one thread per CUDA thread, barriers
//! and warp shuffles emulated), against references on the host: the
//! choice kernels (choose.cu, from the upload `choose_tokens` makes)
//! against the host's choices,
//! and the attention kernels (`paged_attn_prefill`, and
//! `paged_attn_partial` with `paged_attn_reduce`) over f32, f16 and FP8
//! E4M3 caches against attention in f64. They check the kernels' logic where there is no GPU (tiling,
//! partitions, cuts, ties, scans, the draw); not the GPU's memory model or
//! speed, which the GPU tests check. They skip (saying why) where no C++20
//! compiler answers to `c++`; scripts/test.sh installs one.

use weft_kernels_cuda::KvType;
use weft_kernels_cuda::emulator::Emulated;
use weft_engine::sampling::{HostRows, param_edits, synthetic_logits, uniform};
use weft_types::{Cuts, LogitsRows, Pick, SamplingParams, TokenId};

use crate::common::{CUTS, check_against_host};

/// Threads per emulated choice block: 8 warps (the GPU runs 32), enough
/// for every cross-warp path of the scans, and 4× fewer OS threads.
const THREADS: &str = "THREADS=256";

/// The choice kernels over `rows` (rows of `vocab` logits) for `picks`,
/// from the packed upload `choose_tokens` makes.
fn choose_on_cpu(kernels: &Emulated, rows: &[f32], vocab: usize, picks: &[Pick<'_>]) -> Vec<TokenId> {
    let packed = weft_kernels_cuda::pack_picks(picks, rows.len() / vocab, vocab).unwrap();
    let mut input = Vec::new();
    for v in [rows.len() / vocab, vocab, picks.len(), packed.segments, packed.words.len()] {
        input.extend((v as u32).to_le_bytes());
    }
    input.extend(rows.iter().flat_map(|v| v.to_le_bytes()));
    input.extend(packed.words.iter().flat_map(|w| w.to_le_bytes()));
    input.extend(packed.at.iter().flat_map(|&a| (a as u32).to_le_bytes()));
    kernels.run(&input).unwrap().chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn the_choice_kernels_on_cpu_threads_choose_the_hosts_tokens() {
    let Some(kernels) = Emulated::build_or_skip("choose_tokens", &[THREADS]) else { return };
    // Rows of every kind the cuts meet: plain, few distinct values with
    // zeros of both signs (ties at every boundary), peaked, mostly banned;
    // and every row also picked through a guide's mask and the edits a
    // sequence's penalties and bias make.
    let vocab = 4099;
    let history: Vec<TokenId> = (0..60).map(|i| (i * 37 % vocab) as TokenId).collect();
    let params = SamplingParams {
        repetition_penalty: 1.3,
        presence_penalty: 0.4,
        frequency_penalty: 0.2,
        logit_bias: vec![(5, 3.0), (9, -100.0)],
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let edits = param_edits(&params, &history, 20, &[2], vocab);
    let mask: Vec<u32> = (0..vocab.div_ceil(32)).map(|w| 0x0f0f_0f0fu32.rotate_left(w as u32)).collect();
    let mut rows = Vec::new();
    for kind in 0..4u64 {
        let mut row = synthetic_logits(kind + 11, vocab);
        match kind {
            1 => row.iter_mut().enumerate().for_each(|(i, l)| {
                let v = (*l * 2.0).round() / 2.0;
                *l = if v == 0.0 && i % 2 == 1 { -0.0 } else { v };
            }),
            2 => row.iter_mut().for_each(|l| *l *= 3.0),
            3 => row.iter_mut().enumerate().filter(|(i, _)| i % 3 != 0).for_each(|(_, l)| *l = f32::NEG_INFINITY),
            _ => {}
        }
        rows.extend(row);
    }
    let host = HostRows::new(rows.clone(), vocab);
    let mut picks = Vec::new();
    for row in 0..host.len() {
        for (&(temperature, top_k, top_p, min_p), draw) in CUTS.iter().zip(0u64..) {
            let cuts = Cuts { temperature, top_k, top_p, min_p };
            for (mask, edits) in [(None, &[][..]), (Some(&mask[..]), &edits[..])] {
                for again in 0..2 {
                    picks.push(Pick { row, mask, edits, cuts, uniform: uniform(row as u64 + 3, 2 * draw + again) });
                }
            }
        }
    }
    let ours = choose_on_cpu(&kernels, &rows, vocab, &picks);
    assert_eq!(choose_on_cpu(&kernels, &rows, vocab, &picks), ours, "the same picks give the same tokens");
    let (sampled, same) = check_against_host(&host, &picks, &ours);
    println!("emulated choice kernels: {same}/{sampled} sampled picks the host's token, all inside its nucleus, repeated exactly");
}

/// `n` random values stored as `ty`: their bytes, and the f32 values they
/// stand for (what the reference computes with).
fn random_values(ty: KvType, seed: u64, n: usize) -> (Vec<u8>, Vec<f32>) {
    let x: Vec<f32> = synthetic_logits(seed, n).into_iter().map(|x| x / 6.0).collect();
    match ty {
        KvType::F32 => (x.iter().flat_map(|v| v.to_le_bytes()).collect(), x),
        KvType::F16 => {
            let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
        KvType::E4M3 => {
            // Codes of magnitude below 2 (exponent field 0..=7), both signs.
            let codes: Vec<u8> = x.iter().map(|&v| ((v.to_bits() >> 9) as u8 & 0x3f) | if v < 0.0 { 0x80 } else { 0 }).collect();
            let decoded = codes
                .iter()
                .map(|&b| {
                    let (e, m) = ((b >> 3) & 15, (b & 7) as f32);
                    let v = if e == 0 { m / 512.0 } else { (1.0 + m / 8.0) * 2f32.powi(e as i32 - 7) };
                    if b & 0x80 != 0 { -v } else { v }
                })
                .collect();
            (codes, decoded)
        }
    }
}

/// A paged KV cache and query rows for the attention kernels: each
/// sequence's blocks scattered over the cache, every value random.
struct Attention {
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    block_size: usize,
    num_blocks: usize,
    max_blocks: usize,
    tables: Vec<Vec<u32>>,
    q_rows: usize,
    q: Vec<f32>,
    /// The caches' bytes in the cache type, and the values they stand for.
    k_bytes: Vec<u8>,
    v_bytes: Vec<u8>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Attention {
    fn new(cache_type: KvType, seed: u64, (n_heads, n_kv, head_dim, block_size): (usize, usize, usize, usize), seq_lens: &[usize], q_rows: usize) -> Self {
        let needs: Vec<usize> = seq_lens.iter().map(|l| l.div_ceil(block_size)).collect();
        let num_blocks = needs.iter().sum::<usize>() + 3;
        let max_blocks = *needs.iter().max().unwrap();
        // Blocks handed out in a scrambled order (7 is coprime with the count).
        let mut next = (0..num_blocks as u32).cycle().step_by(7).take(num_blocks);
        let tables = needs.iter().map(|&n| (0..max_blocks).map(|i| if i < n { next.next().unwrap() } else { 0 }).collect()).collect();
        let cache = num_blocks * block_size * n_kv * head_dim;
        let (k_bytes, k) = random_values(cache_type, seed * 7 + 2, cache);
        let (v_bytes, v) = random_values(cache_type, seed * 7 + 3, cache);
        Self {
            n_heads,
            n_kv,
            head_dim,
            block_size,
            num_blocks,
            max_blocks,
            tables,
            q_rows,
            q: random_values(KvType::F32, seed * 7 + 1, q_rows * n_heads * head_dim).1,
            k_bytes,
            v_bytes,
            k,
            v,
        }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// The harness input up to its mode-specific part.
    fn input(&self, mode: u32) -> Vec<u8> {
        let mut input = Vec::new();
        let head = [mode as usize, self.n_heads, self.n_kv, self.head_dim, self.block_size, self.max_blocks, self.num_blocks, self.tables.len(), self.q_rows];
        input.extend(head.iter().flat_map(|&v| (v as u32).to_le_bytes()));
        input.extend(self.scale().to_le_bytes());
        input.extend(self.q.iter().flat_map(|x| x.to_le_bytes()));
        input.extend(&self.k_bytes);
        input.extend(&self.v_bytes);
        input.extend(self.tables.iter().flatten().flat_map(|b| b.to_le_bytes()));
        input
    }

    /// Attention in f64 of query row `row` over the first `len` tokens of
    /// sequence `seq`: `n_heads × head_dim` values.
    fn reference(&self, row: usize, seq: usize, len: usize) -> Vec<f64> {
        let (hd, group) = (self.head_dim, self.n_heads / self.n_kv);
        let at = |t: usize, kvh: usize| {
            let slot = self.tables[seq][t / self.block_size] as usize * self.block_size + t % self.block_size;
            (slot * self.n_kv + kvh) * hd
        };
        let mut out = Vec::with_capacity(self.n_heads * hd);
        for h in 0..self.n_heads {
            let q = &self.q[(row * self.n_heads + h) * hd..][..hd];
            let scores: Vec<f64> = (0..len)
                .map(|t| q.iter().zip(&self.k[at(t, h / group)..][..hd]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * self.scale() as f64)
                .collect();
            let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
            let total: f64 = weights.iter().sum();
            for d in 0..hd {
                out.push((0..len).map(|t| weights[t] * self.v[at(t, h / group) + d] as f64).sum::<f64>() / total);
            }
        }
        out
    }

    /// The harness's output for `rows` `(row, seq, len)`, each against its
    /// reference: the largest relative error over the rows.
    fn check(&self, out: &[u8], rows: &[(usize, usize, usize)]) -> f64 {
        let out: Vec<f32> = out.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let width = self.n_heads * self.head_dim;
        rows.iter()
            .map(|&(row, seq, len)| {
                let got = &out[row * width..][..width];
                assert!(got.iter().all(|v| v.is_finite()), "row {row} not (fully) written");
                let want = self.reference(row, seq, len);
                let diff: f64 = got.iter().zip(&want).map(|(&g, w)| (g as f64 - w).powi(2)).sum::<f64>().sqrt();
                diff / want.iter().map(|w| w * w).sum::<f64>().sqrt()
            })
            .fold(0.0, f64::max)
    }
}

/// `(n_heads, n_kv, head_dim, block_size)`: grouped 2, 4 and 16 to one,
/// head_dim 16 to the kernels' largest.
const SHAPES: [(usize, usize, usize, usize); 4] = [(4, 2, 64, 16), (8, 2, 128, 8), (2, 2, 16, 16), (16, 1, 64, 16)];

#[test]
fn the_attention_kernels_on_cpu_threads_match_f64_attention_for_every_cache_type() {
    // Every shape over the f32 cache; the 16-bit and 8-bit caches change
    // only how a value is loaded, so two shapes each.
    for (cache, shapes) in [(KvType::F32, &SHAPES[..]), (KvType::F16, &SHAPES[..2]), (KvType::E4M3, &SHAPES[..2])] {
        let Some(kernels) = Emulated::build_or_skip("attention", &[cache.define()]) else { return };
        prefill(cache, &kernels, shapes);
        decode(cache, &kernels, shapes);
    }
}

/// Prefill tiles (`paged_attn_prefill`) against f64 attention.
fn prefill(cache: KvType, kernels: &Emulated, shapes: &[(usize, usize, usize, usize)]) {
    for (i, &shape) in shapes.iter().enumerate() {
        // Sequence 0: a 40-token prompt from the start (rows 0..40); sequence
        // 1: a 20-token chunk at positions 30..50 (rows 40..60) over 30
        // cached tokens. Tiles of at most 16 rows: (table, first row, rows,
        // first row's length).
        let a = Attention::new(cache, i as u64, shape, &[40, 50], 60);
        let tiles: [[u32; 4]; 5] = [[0, 0, 16, 1], [0, 16, 16, 17], [0, 32, 8, 33], [1, 40, 16, 31], [1, 56, 4, 47]];
        let mut input = a.input(0);
        input.extend((tiles.len() as u32).to_le_bytes());
        input.extend(tiles.iter().flatten().flat_map(|v| v.to_le_bytes()));
        let rows: Vec<(usize, usize, usize)> = (0..40).map(|r| (r, 0, r + 1)).chain((0..20).map(|r| (40 + r, 1, 31 + r))).collect();
        let err = a.check(&kernels.run(&input).unwrap(), &rows);
        println!("emulated paged_attn_prefill, {cache:?} cache, {shape:?}: relative error {err:.1e}");
        assert!(err < 1e-5, "{cache:?} cache, {shape:?}: relative error {err}");
    }
}

/// Partitioned decode rows (`paged_attn_partial`, `paged_attn_reduce`)
/// against f64 attention.
fn decode(cache: KvType, kernels: &Emulated, shapes: &[(usize, usize, usize, usize)]) {
    for (i, &shape) in shapes.iter().chain(&[(4, 4, 256, 16)]).enumerate() {
        // Three decode rows, listed out of order (row_ids) over three
        // sequences (row_seq), of 1, 37 and 130 tokens: one, one and three
        // partitions of 64.
        let a = Attention::new(cache, 10 + i as u64, shape, &[37, 1, 130], 3);
        let (row_ids, row_seq, lens) = ([2u32, 0, 1], [1u32, 0, 2], [1u32, 37, 130]);
        let mut input = a.input(1);
        for v in [3u32, 64, 3].iter().chain(&row_ids).chain(&row_seq).chain(&lens) {
            input.extend(v.to_le_bytes());
        }
        let rows: Vec<(usize, usize, usize)> = (0..3).map(|r| (row_ids[r] as usize, row_seq[r] as usize, lens[r] as usize)).collect();
        let err = a.check(&kernels.run(&input).unwrap(), &rows);
        println!("emulated paged_attn_partial + reduce, {cache:?} cache, {shape:?}: relative error {err:.1e}");
        assert!(err < 1e-5, "{cache:?} cache, {shape:?}: relative error {err}");
    }
}
