//! Kernels compiled as C++ and run on CPU threads
//! (`weft_kernels_cuda::emulator`) against the same f64 references as the
//! GPU tests. gemv.cu's, for every weight format: every direct and staged GEMV
//! variant (B vectors × R rows per warp) on a row count that leaves the
//! last warp partial, rows long enough to wrap the staged path's ring of
//! shared-memory buffers and to end in a partial step, and the embedding
//! lookup and panel dequantisation. The staged path's copies land at the
//! latest wait that allows them, so a buffer read before its wait fails
//! here. sample.cu's top-k with log-softmax, over chunks ending short, ties
//! across chunks and the largest k. attention.cu's cache write in each
//! storage type, byte for byte, and layers.cu's RMSNorm, RoPE (both
//! layouts, a partial rotation) and SwiGLU. They run where there is no GPU; they skip (saying why) where no
//! C++20 compiler answers to `c++` (scripts/test.sh installs one).

use weft_kernels_cuda::emulator::Emulated;
use weft_kernels_cuda::{KvType, TopK, WeightType};

use crate::common::{Rng, check, dequant_row, random_matrix};
use crate::gemv::reference;
use crate::kv::{check_written, shuffled_slots, write_inputs};
use crate::layers::{rms_norm_reference, rope_reference, swiglu_reference};
use crate::sample::{check_top_k, random_logits};

/// Kernel numbers of emulator/gemv.cpp.
const DIRECT: u32 = 0;
const STAGED: u32 = 1;
const EMBED: u32 = 2;
const DEQUANT: u32 = 3;

fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Row lengths for `ty`: a short one ending in a partial pipeline step
/// (for the staged path where rows can be 16-byte aligned) and a long one
/// of more steps than the pipeline has buffers.
fn column_counts(ty: WeightType) -> [usize; 2] {
    match ty {
        // Rows of 16-byte alignment need 8 superblocks; a step is 2048.
        WeightType::Q6K => [2048, 9 * 2048],
        _ => [1280, 9 * 1024 + 256],
    }
}

fn staged_possible(ty: WeightType, cols: usize) -> bool {
    ty != WeightType::F32 && ty.row_bytes(cols).is_multiple_of(16)
}

/// Whether gemv.cu has a staged kernel of `r` rows per warp for `ty`.
fn staged_kernel(ty: WeightType, r: usize) -> bool {
    r < 4 || !matches!(ty, WeightType::Q6K | WeightType::F16 | WeightType::BF16)
}

#[test]
fn gemv_kernels_on_cpu_threads_match_the_f64_reference() {
    let mut rng = Rng::new(0x5EED_00E0);
    for ty in WeightType::ALL {
        let Some(kernels) = Emulated::build_or_skip("gemv", &[ty.define()]) else { return };
        for (long, cols) in column_counts(ty).into_iter().enumerate() {
            let long = long == 1;
            for kernel in [DIRECT, STAGED] {
                if kernel == STAGED && !staged_possible(ty, cols) {
                    continue;
                }
                for b in [1usize, 2, 4, 8] {
                    for r in [1usize, 2, 4] {
                        // Long rows test what the row length changes (steps,
                        // buffer reuse) with fewer runs.
                        if (kernel == STAGED && !staged_kernel(ty, r)) || (long && (b, r) != (1, 1) && (b, r) != (8, 2)) {
                            continue;
                        }
                        // Two whole blocks of 4 warps and a last one with a
                        // partial warp of rows.
                        let rows = 2 * 4 * r + 4 * r / 2 + 1;
                        let w = random_matrix(&mut rng, ty, rows, cols);
                        let x = rng.vec(b * cols, 1.0);
                        let mut input = words(&[kernel, b as u32, r as u32, rows as u32, cols as u32, ty.row_bytes(cols) as u32]);
                        input.extend(&w);
                        input.extend(x.iter().flat_map(|v| v.to_le_bytes()));
                        let got = floats(&kernels.run(&input).unwrap());
                        let path = if kernel == STAGED { "staged" } else { "direct" };
                        let case = format!("{ty:?} {rows}x{cols} b{b} r{r} {path} (emulated)");
                        check("gemv", &case, &got, &reference(ty, &w, rows, cols, &x, b), 1e-5);
                    }
                }
            }
        }

        // Embedding rows (repeats, first and last) and a panel of rows.
        let (rows, cols) = (21, column_counts(ty)[0]);
        let w = random_matrix(&mut rng, ty, rows, cols);
        let rb = ty.row_bytes(cols);
        let dequantized = |r: usize| dequant_row(ty, &w[r * rb..(r + 1) * rb], cols);
        let ids = [5u32, 0, 20, 5];
        let mut input = words(&[EMBED, 1, 1, rows as u32, cols as u32, rb as u32]);
        input.extend(&w);
        input.extend(words(&[ids.len() as u32]));
        input.extend(words(&ids));
        let want: Vec<f64> = ids.iter().flat_map(|&i| dequantized(i as usize)).collect();
        check("embed_rows", &format!("{ty:?} (emulated)"), &floats(&kernels.run(&input).unwrap()), &want, 1e-6);

        let (first, n) = (3u32, 7u32);
        let mut input = words(&[DEQUANT, 1, 1, rows as u32, cols as u32, rb as u32]);
        input.extend(&w);
        input.extend(words(&[first, n]));
        let want: Vec<f64> = (first..first + n).flat_map(|r| dequantized(r as usize)).collect();
        check("dequant_rows", &format!("{ty:?} (emulated)"), &floats(&kernels.run(&input).unwrap()), &want, 1e-6);
    }
}

#[test]
fn top_k_kernels_on_cpu_threads_match_the_sorted_f64_reference() {
    // Two warps a block (the GPU runs eight): the same cross-warp paths, at
    // a quarter of the OS threads.
    let Some(kernels) = Emulated::build_or_skip("top_k", &["THREADS=64"]) else { return };
    let mut rng = Rng::new(0x5EED_00E1);
    // (rows, vocab, k, chunk): chunks ending short, the largest k over
    // several chunks, k = vocab (a full sort), and rows of few distinct
    // values, whose ties cross chunks.
    for (rows, vocab, k, chunk, ties) in [(2, 5000, 20, 1024, false), (1, 1500, 256, 512, false), (1, 256, 256, 4096, false), (2, 3000, 40, 1024, true)] {
        let mut logits = random_logits(&mut rng, rows, vocab, k);
        if ties {
            logits.iter_mut().for_each(|l| *l = (*l / 4.0).round());
        }
        let mut input = words(&[rows, vocab, k, chunk].map(|v| v as u32));
        input.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
        let out = kernels.run(&input).unwrap();
        let (ids, rest) = out.split_at(4 * rows * k);
        let (values, rest) = rest.split_at(4 * rows * k);
        let (logprobs, lse) = rest.split_at(4 * rows * k);
        let ids: Vec<u32> = ids.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        let (values, logprobs, lse) = (floats(values), floats(logprobs), floats(lse));
        let got: Vec<TopK> = (0..rows)
            .map(|r| TopK {
                ids: ids[r * k..(r + 1) * k].to_vec(),
                logits: values[r * k..(r + 1) * k].to_vec(),
                logprobs: logprobs[r * k..(r + 1) * k].to_vec(),
                logsumexp: lse[r],
            })
            .collect();
        check_top_k(&format!("rows{rows} vocab{vocab} k{k} chunk{chunk} (emulated)"), &logits, vocab, k, &got);
    }
}

#[test]
fn kv_write_on_cpu_threads_stores_each_type_as_the_host_encodes_it() {
    let mut rng = Rng::new(0x5EED_00E2);
    for ty in KvType::ALL {
        let Some(kernels) = Emulated::build_or_skip("attention", &[ty.define()]) else { return };
        let (kv_dim, capacity) = (192, 9 * 16);
        let slots = shuffled_slots(&mut rng, capacity, 37);
        let (keys, values) = write_inputs(&mut rng, slots.len() * kv_dim);
        let mut input = words(&[2, kv_dim as u32, slots.len() as u32, capacity as u32]);
        input.extend(keys.iter().chain(&values).flat_map(|v| v.to_le_bytes()));
        input.extend(words(&slots));
        let out = kernels.run(&input).unwrap();
        let (kc, vc) = out.split_at(out.len() / 2);
        assert_eq!(out.len(), 2 * capacity * kv_dim * ty.bytes(), "{ty:?}: both caches come back whole");
        check_written(&format!("{ty:?} (emulated)"), ty, &slots, &keys, &values, kc, vc);
    }
}

#[test]
fn layer_kernels_on_cpu_threads_match_the_f64_references() {
    let Some(kernels) = Emulated::build_or_skip("layers", &[]) else { return };
    let mut rng = Rng::new(0x5EED_00E3);
    for (rows, dim, eps) in [(3usize, 576usize, 1e-5f32), (2, 1000, 1e-6)] {
        let (x, w) = (rng.vec(rows * dim, 3.0), rng.vec(dim, 1.5));
        let mut input = words(&[0, rows as u32, dim as u32]);
        input.extend(eps.to_le_bytes());
        input.extend(x.iter().chain(&w).flat_map(|v| v.to_le_bytes()));
        let got = floats(&kernels.run(&input).unwrap());
        check("rms_norm", &format!("{rows}x{dim} (emulated)"), &got, &rms_norm_reference(&x, &w, eps), 1e-5);
    }
    // (heads, head_dim, rot_dim, base): SmolLM2's shape and a partial
    // rotation, in both layouts, at positions into the tens of thousands.
    for (heads, hd, rot, base) in [(9usize, 64usize, 64usize, 100_000.0f64), (4, 64, 32, 10_000.0)] {
        for neox in [false, true] {
            let tokens = 5;
            let pos: Vec<u32> = (0..tokens).map(|i| if i == 0 { 0 } else { rng.below(32_768) as u32 }).collect();
            let inv: Vec<f64> = (0..rot / 2).map(|i| base.powf(-((2 * i) as f64) / rot as f64)).collect();
            let x = rng.vec(tokens * heads * hd, 2.0);
            let mut input = words(&[1, tokens as u32, heads as u32, hd as u32, rot as u32, neox as u32]);
            input.extend(words(&pos));
            input.extend(inv.iter().flat_map(|v| v.to_le_bytes()));
            input.extend(x.iter().flat_map(|v| v.to_le_bytes()));
            let got = floats(&kernels.run(&input).unwrap());
            let case = format!("{} h{heads} d{hd} rot{rot} (emulated)", if neox { "NeoX" } else { "Adjacent" });
            check("rope", &case, &got, &rope_reference(&x, &pos, heads, hd, &inv, neox), 1e-5);
        }
    }
    // Two blocks over 1536 × 3 values: each thread walks the grid stride.
    let n = 1536 * 3;
    let (gate, up) = (rng.vec(n, 8.0), rng.vec(n, 2.0));
    let mut input = words(&[2, n as u32, 2]);
    input.extend(gate.iter().chain(&up).flat_map(|v| v.to_le_bytes()));
    let got = floats(&kernels.run(&input).unwrap());
    check("swiglu", &format!("n{n} (emulated)"), &got, &swiglu_reference(&gate, &up), 1e-5);
}
