//! The paged KV cache in every storage type: the write kernel against a
//! host encoding (f16 by the `half` crate, FP8 E4M3 by nearest-code search
//! over all 256 codes), and attention of query rows (prefill-like: several
//! rows of one sequence at increasing lengths, through shuffled tables)
//! against an f64 reference over the stored (decoded) values. Also the
//! dequantisation, bias, residual and gather kernels of the backend.

use half::f16;
use weft_kernels_cuda::{AttentionRows, KvCacheShape, KvType, WeightType};

use crate::common::{Rng, check, dequant_row, gpu, poisoned, random_matrix};

/// E4M3 code → value (no infinities; S.1111.111 is NaN).
fn e4m3_decode(b: u8) -> f64 {
    let (e, m) = ((b >> 3) & 15, b & 7);
    let v = if e == 0 {
        m as f64 / 512.0
    } else if e == 15 && m == 7 {
        f64::NAN
    } else {
        (1.0 + m as f64 / 8.0) * 2f64.powi(e as i32 - 7)
    };
    if b & 0x80 != 0 { -v } else { v }
}

/// The nearest finite E4M3 value to `x` (ties to the even code), saturating.
fn e4m3_encode(x: f32) -> u8 {
    let x = x as f64;
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a >= 448.0 {
        return sign | 0x7e;
    }
    let mut best = 0u8;
    for code in 0u8..0x7f {
        let (d, db) = ((e4m3_decode(code) - a).abs(), (e4m3_decode(best) - a).abs());
        if d < db || (d == db && code % 2 == 0 && best % 2 == 1) {
            best = code;
        }
    }
    sign | best
}

/// What the cache holds for `x` in `ty`, as stored bytes and as the value.
fn stored(ty: KvType, x: f32) -> (Vec<u8>, f64) {
    match ty {
        KvType::F32 => (x.to_le_bytes().to_vec(), x as f64),
        KvType::F16 => {
            let h = f16::from_f32(x);
            (h.to_bits().to_le_bytes().to_vec(), h.to_f64())
        }
        KvType::E4M3 => {
            let b = e4m3_encode(x);
            (vec![b], e4m3_decode(b))
        }
    }
}

#[test]
fn e4m3_reference_round_trips_every_code() {
    for code in 0u8..=255 {
        let v = e4m3_decode(code);
        if v.is_nan() {
            continue;
        }
        let back = e4m3_encode(v as f32);
        assert_eq!(e4m3_decode(back), v, "code {code:#04x}");
    }
    assert_eq!(e4m3_decode(e4m3_encode(1e6)), 448.0, "saturates");
}

/// Write `n` tokens to shuffled slots of a `num_blocks`-block cache and
/// compare every byte of the layer with the host encoding.
fn write_case(ty: KvType, seed: u64) {
    let k = gpu("kv_write").expect("checked by caller");
    let mut rng = Rng::new(seed);
    let shape = KvCacheShape { num_blocks: 9, block_size: 16, n_kv_heads: 3, head_dim: 64 };
    let kv_dim = shape.n_kv_heads * shape.head_dim;
    let capacity = shape.num_blocks * shape.block_size;
    let mut cache = k.paged_kv(ty, shape, 2).unwrap();
    let slots = shuffled_slots(&mut rng, capacity, 37);
    let (keys, values) = write_inputs(&mut rng, slots.len() * kv_dim);
    let (kd, vd) = (k.upload(&keys).unwrap(), k.upload(&values).unwrap());
    k.kv_write(&mut cache, 1, &kd, &vd, &slots).unwrap();
    let (k0, v0) = cache.layer_bytes(0).unwrap();
    let untouched = k.download(k0).unwrap().iter().chain(&k.download(v0).unwrap()).all(|&b| b == 0);
    assert!(untouched, "{ty:?}: writing layer 1 changed layer 0");
    let (kc, vc) = cache.layer_bytes(1).unwrap();
    let (kc, vc) = (k.download(kc).unwrap(), k.download(vc).unwrap());
    assert_eq!(kc.len(), capacity * kv_dim * ty.bytes());
    check_written(&format!("{ty:?}"), ty, &slots, &keys, &values, &kc, &vc);
}

/// `n` distinct slots of a cache of `capacity`, in random order.
pub fn shuffled_slots(rng: &mut Rng, capacity: usize, n: usize) -> Vec<u32> {
    let mut slots: Vec<u32> = (0..capacity as u32).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.below(i + 1));
    }
    slots.truncate(n);
    slots
}

/// Keys and values for a write of `n` values each: over E4M3's whole range,
/// its saturation and subnormals included.
pub fn write_inputs(rng: &mut Rng, n: usize) -> (Vec<f32>, Vec<f32>) {
    let keys = (0..n).map(|_| rng.sym(1.0) * 10f32.powi(rng.below(7) as i32 - 4)).collect();
    (keys, rng.vec(n, 600.0))
}

/// Check a layer's caches `kc` and `vc` (in `ty`) after `keys` and
/// `values` were written to `slots`: every written value encoded as the
/// host encodes it, every other byte still zero.
pub fn check_written(case: &str, ty: KvType, slots: &[u32], keys: &[f32], values: &[f32], kc: &[u8], vc: &[u8]) {
    let kv_dim = keys.len() / slots.len();
    let width = ty.bytes();
    assert_eq!(kc.len(), vc.len(), "{case}: the two caches differ in size");
    let mut expect_k = vec![0u8; kc.len()];
    let mut expect_v = expect_k.clone();
    for (t, &slot) in slots.iter().enumerate() {
        for i in 0..kv_dim {
            let at = (slot as usize * kv_dim + i) * width;
            expect_k[at..at + width].copy_from_slice(&stored(ty, keys[t * kv_dim + i]).0);
            expect_v[at..at + width].copy_from_slice(&stored(ty, values[t * kv_dim + i]).0);
        }
    }
    let wrong = kc.iter().zip(&expect_k).chain(vc.iter().zip(&expect_v)).filter(|(a, b)| a != b).count();
    println!("RESULT kernel=kv_write case={case} rel_err=0 tol=exact mismatched_bytes={wrong}");
    assert_eq!(wrong, 0, "{case}: {wrong} bytes differ from the host encoding");
}

#[test]
fn kv_write_stores_each_type_exactly_and_touches_no_other_slot() {
    if gpu("kv_write_stores_each_type_exactly_and_touches_no_other_slot").is_none() {
        return;
    }
    for (i, ty) in KvType::ALL.into_iter().enumerate() {
        write_case(ty, 11 + i as u64);
    }
}

/// Query rows over a cache filled by `kv_write`: sequence s has `lens[s]`
/// tokens and contributes `rows_per_seq[s]` rows at its last positions (one
/// row: the partitioned decode kernel; more: the tiled prefill kernel, which
/// takes head_dim up to 128; both in one call when mixed).
fn attention_case(ty: KvType, n_heads: usize, n_kv: usize, hd: usize, lens: &[usize], rows_per_seq: &[usize], seed: u64) {
    let k = gpu("paged_attention_rows").expect("checked by caller");
    let mut rng = Rng::new(seed);
    let block = 16;
    let max_blocks = lens.iter().map(|l| l.div_ceil(block)).max().unwrap();
    let num_blocks = lens.iter().map(|l| l.div_ceil(block)).sum::<usize>() + 3;
    let shape = KvCacheShape { num_blocks, block_size: block, n_kv_heads: n_kv, head_dim: hd };
    let kv_dim = n_kv * hd;
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.below(i + 1));
    }
    let mut tables = vec![u32::MAX; lens.len() * max_blocks];
    for (s, &l) in lens.iter().enumerate() {
        for b in 0..l.div_ceil(block) {
            tables[s * max_blocks + b] = free.pop().unwrap();
        }
    }
    let slot = |s: usize, t: usize| tables[s * max_blocks + t / block] * block as u32 + (t % block) as u32;
    // Fill every sequence's tokens through the write kernel.
    let mut cache = k.paged_kv(ty, shape, 1).unwrap();
    let mut stored_k = vec![vec![]; lens.len()];
    let mut stored_v = vec![vec![]; lens.len()];
    for (s, &l) in lens.iter().enumerate() {
        let keys = rng.vec(l * kv_dim, 1.0);
        let values = rng.vec(l * kv_dim, 1.0);
        let slots: Vec<u32> = (0..l).map(|t| slot(s, t)).collect();
        let (kd, vd) = (k.upload(&keys).unwrap(), k.upload(&values).unwrap());
        k.kv_write(&mut cache, 0, &kd, &vd, &slots).unwrap();
        stored_k[s] = keys.iter().map(|&x| stored(ty, x).1).collect::<Vec<f64>>();
        stored_v[s] = values.iter().map(|&x| stored(ty, x).1).collect::<Vec<f64>>();
    }
    let mut row_seq = Vec::new();
    let mut row_len = Vec::new();
    for (s, &l) in lens.iter().enumerate() {
        // A prefill chunk's last rows, in position order (one row: decode).
        for r in (0..rows_per_seq[s].min(l)).rev() {
            row_seq.push(s as u32);
            row_len.push((l - r) as u32);
        }
    }
    let n_rows = row_seq.len();
    let q = rng.vec(n_rows * n_heads * hd, 2.0);
    let qd = k.upload(&q).unwrap();
    let mut out = poisoned(k, n_rows * n_heads * hd);
    let rows = AttentionRows { row_seq: &row_seq, lens: &row_len, block_tables: &tables, max_blocks_per_seq: max_blocks };
    k.paged_attention(&qd, &cache, 0, n_heads, &rows, &mut out).unwrap();
    let got = k.download(&out).unwrap();

    let group = n_heads / n_kv;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut want = vec![0.0f64; got.len()];
    for r in 0..n_rows {
        let (s, len) = (row_seq[r] as usize, row_len[r] as usize);
        for h in 0..n_heads {
            let kvh = h / group;
            let qh = &q[(r * n_heads + h) * hd..][..hd];
            let at = |t: usize| t * kv_dim + kvh * hd;
            let scores: Vec<f64> =
                (0..len).map(|t| qh.iter().zip(&stored_k[s][at(t)..][..hd]).map(|(&a, &b)| a as f64 * b).sum::<f64>() * scale).collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|&v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let o = &mut want[(r * n_heads + h) * hd..][..hd];
            for (t, &p) in e.iter().enumerate() {
                for (d, &v) in stored_v[s][at(t)..][..hd].iter().enumerate() {
                    o[d] += p / z * v;
                }
            }
        }
    }
    check("paged_attention_rows", &format!("{ty:?} h{n_heads}/{n_kv} d{hd}"), &got, &want, 1e-5);
}

#[test]
fn attention_over_query_rows_matches_f64_reference_for_every_kv_type() {
    if gpu("attention_over_query_rows_matches_f64_reference_for_every_kv_type").is_none() {
        return;
    }
    for (i, ty) in KvType::ALL.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        // SmolLM2-135M's heads; prefill rows of three sequences.
        attention_case(ty, 9, 3, 64, &[1, 37, 300], &[12, 12, 12], seed);
        // The tiny Hugging Face fixtures' head_dim 16, and 8B's 128 with GQA 4.
        attention_case(ty, 4, 2, 16, &[20, 5], &[20, 20], seed + 1);
        attention_case(ty, 32, 8, 128, &[700, 64], &[3, 3], seed + 2);
        // Decode rows (the partitioned kernel), with head_dim 64 and 16.
        attention_case(ty, 9, 3, 64, &[1, 37, 1300], &[1, 1, 1], seed + 3);
        attention_case(ty, 4, 2, 16, &[20, 5, 70], &[1, 1, 1], seed + 4);
        // Decode and prefill rows in one call (both kernels).
        attention_case(ty, 9, 3, 64, &[900, 37, 1, 64], &[1, 17, 1, 5], seed + 5);
        // head_dim 256 prefill rows: past the tiled kernel's 128, partitioned.
        attention_case(ty, 8, 1, 256, &[40], &[5], seed + 6);
        // The largest group the kernels take (16 query heads per kv head)
        // at head_dim 128.
        attention_case(ty, 32, 2, 128, &[1200, 3], &[1, 1], seed + 7);
    }
}

#[test]
fn dequantize_matches_f64_rows_for_every_weight_type() {
    let Some(k) = gpu("dequantize_matches_f64_rows_for_every_weight_type") else { return };
    let mut rng = Rng::new(7);
    for (i, ty) in WeightType::ALL.into_iter().enumerate() {
        // One type with more rows than one launch's grid (65535) takes.
        let (rows, cols) = if i == 0 { (65_600, 256) } else { (67, 512) };
        let bytes = random_matrix(&mut rng, ty, rows, cols);
        let w = k.upload_matrix(ty, rows, cols, &bytes).unwrap();
        let mut out = poisoned(k, rows * cols);
        k.dequantize(&w, &mut out).unwrap();
        let got = k.download(&out).unwrap();
        let row_bytes = bytes.len() / rows;
        let want: Vec<f64> = bytes.chunks_exact(row_bytes).flat_map(|r| dequant_row(ty, r, cols)).collect();
        check("dequantize", &format!("{ty:?}"), &got, &want, 1e-7);
    }
}

#[test]
fn bias_residual_and_gather_are_exact() {
    let Some(k) = gpu("bias_residual_and_gather_are_exact") else { return };
    let mut rng = Rng::new(9);
    let (rows, dim) = (13, 200);
    let x = rng.vec(rows * dim, 1.0);
    let y = rng.vec(rows * dim, 1.0);
    let bias = rng.vec(dim, 1.0);
    let mut xd = k.upload(&x).unwrap();
    k.add(&mut xd, &k.upload(&y).unwrap(), rows * dim).unwrap();
    k.add_bias(&mut xd, &k.upload(&bias).unwrap(), rows).unwrap();
    let picked = [12u32, 0, 5, 5];
    let mut out = poisoned(k, picked.len() * dim);
    k.gather_rows(&xd, rows, &picked, dim, &mut out).unwrap();
    let got = k.download(&out).unwrap();
    let want: Vec<f64> = picked
        .iter()
        .flat_map(|&r| (0..dim).map(move |i| (r as usize, i)))
        .map(|(r, i)| ((x[r * dim + i] + y[r * dim + i]) + bias[i]) as f64)
        .collect();
    check("add+add_bias+gather_rows", "13x200", &got, &want, 1e-12);
}

/// `f32_to_e4m3` of common.cuh, line for line on the host (`frexpf` and
/// `rintf` by their definitions), so its logic is checked on every machine;
/// the GPU test above checks the compiled kernel.
fn e4m3_like_the_kernel(x: f32) -> u8 {
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    let a = x.abs();
    if a.is_nan() {
        return sign | 0x7f;
    }
    if a >= 448.0 {
        return sign | 0x7e;
    }
    if a < 0.015625 {
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    // frexpf: a = fr · 2^e with fr in [0.5, 1) (a is normal here).
    let e = ((a.to_bits() >> 23) & 0xff) as i32 - 126;
    let fr = f32::from_bits((a.to_bits() & 0x807f_ffff) | (126 << 23));
    let mut m = (fr * 16.0).round_ties_even() - 8.0;
    let mut big_e = e + 6;
    if m == 8.0 {
        m = 0.0;
        big_e += 1;
    }
    if big_e > 15 || (big_e == 15 && m > 6.0) {
        return sign | 0x7e;
    }
    sign | (big_e << 3) as u8 | m as u8
}

#[test]
fn the_kernels_e4m3_rounding_matches_the_reference() {
    let mut rng = Rng::new(3);
    for i in 0..200_000 {
        let x = match i % 3 {
            0 => rng.sym(1.0) * 10f32.powi(rng.below(8) as i32 - 5),
            1 => f32::from_bits(rng.u64() as u32),
            // Exact midpoints between neighbouring codes.
            _ => {
                let c = rng.below(0x7e) as u8;
                ((e4m3_decode(c) + e4m3_decode(c + 1)) / 2.0) as f32
            }
        };
        if x.is_nan() {
            continue;
        }
        assert_eq!(e4m3_like_the_kernel(x), e4m3_encode(x), "x = {x:e} ({:#010x})", x.to_bits());
    }
}
