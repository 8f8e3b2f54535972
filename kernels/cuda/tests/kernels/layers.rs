//! RMSNorm, RoPE, SwiGLU and embedding lookup against f64 references.

use weft_kernels_cuda::{RopeLayout, WeightType};

use crate::common::{Rng, check, dequant_row, gpu, poisoned, random_matrix};

#[test]
fn rms_norm_matches_f64_reference() {
    let Some(k) = gpu("rms_norm_matches_f64_reference") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_0001);
    for &(rows, dim, eps) in &[
        (7usize, 576usize, 1e-5f32),
        (5, 4096, 1e-6),
        (3, 1000, 1e-5),
    ] {
        let x = rng.vec(rows * dim, 3.0);
        let w = rng.vec(dim, 1.5);
        let (xd, wd) = (k.upload(&x).unwrap(), k.upload(&w).unwrap());
        let mut out = poisoned(k, rows * dim);
        k.rms_norm(&xd, &wd, &mut out, rows, dim, eps).unwrap();
        let got = k.download(&out).unwrap();
        check("rms_norm", &format!("{rows}x{dim}"), &got, &rms_norm_reference(&x, &w, eps), 1e-5);
    }
}

/// RMSNorm of each row of `x` (rows of `w.len()`) in f64.
pub fn rms_norm_reference(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let mut want = Vec::with_capacity(x.len());
    for r in x.chunks_exact(w.len()) {
        let ms = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / w.len() as f64;
        let s = 1.0 / (ms + eps as f64).sqrt();
        want.extend(r.iter().zip(w).map(|(&v, &g)| v as f64 * s * g as f64));
    }
    want
}

/// `silu(gate) * up` in f64.
pub fn swiglu_reference(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = g as f64;
            g / (1.0 + (-g).exp()) * u as f64
        })
        .collect()
}

/// RoPE of `x` (tokens × heads × hd) at `pos` with inverse frequencies
/// `inv` (rot_dim / 2 of them), in f64; adjacent pairs or NeoX halves.
pub fn rope_reference(
    x: &[f32],
    pos: &[u32],
    heads: usize,
    hd: usize,
    inv: &[f64],
    neox: bool,
) -> Vec<f64> {
    let mut y: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let half = inv.len();
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * hd;
            for (i, &f) in inv.iter().enumerate() {
                let (s, c) = (p as f64 * f).sin_cos();
                let (a, b) = if neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (x[base + a] as f64, x[base + b] as f64);
                y[base + a] = x0 * c - x1 * s;
                y[base + b] = x0 * s + x1 * c;
            }
        }
    }
    y
}

#[test]
fn rope_matches_f64_reference_in_both_layouts() {
    let Some(k) = gpu("rope_matches_f64_reference_in_both_layouts") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_0002);
    // (heads, head_dim, rot_dim, base, linear factor): SmolLM2-135M, the 8B
    // shape, linear scaling, and a partial rotation.
    let cases = [
        (9usize, 64usize, 64usize, 100_000.0f64, 1.0f64),
        (32, 128, 128, 500_000.0, 1.0),
        (8, 128, 128, 10_000.0, 4.0),
        (4, 64, 32, 10_000.0, 1.0),
    ];
    for &(heads, hd, rot, base, factor) in &cases {
        for layout in [RopeLayout::Adjacent, RopeLayout::NeoX] {
            let tokens = 9;
            let pos: Vec<u32> = (0..tokens)
                .map(|i| if i == 0 { 0 } else { rng.below(32_768) as u32 })
                .collect();
            let x = rng.vec(tokens * heads * hd, 2.0);
            let table = k.rope_table(rot, base, factor, layout).unwrap();
            let inv: Vec<f64> = (0..rot / 2)
                .map(|i| base.powf(-((2 * i) as f64) / rot as f64) / factor)
                .collect();
            // Poison: the buffer is rotated in place, so poison a copy first
            // and overwrite it, proving the upload path writes everything.
            let mut xd = poisoned(k, x.len());
            k.stream().memcpy_htod(&x, &mut xd).unwrap();
            k.rope(&mut xd, &pos, heads, hd, &table).unwrap();
            let got = k.download(&xd).unwrap();
            let want = rope_reference(&x, &pos, heads, hd, &inv, layout == RopeLayout::NeoX);
            check(
                "rope",
                &format!("{layout:?} h{heads} d{hd} rot{rot} base{base} x{factor}"),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn swiglu_matches_f64_reference() {
    let Some(k) = gpu("swiglu_matches_f64_reference") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_0003);
    for &n in &[1536usize * 5, 14336 * 3, 1000] {
        let g = rng.vec(n, 8.0);
        let u = rng.vec(n, 2.0);
        let (gd, ud) = (k.upload(&g).unwrap(), k.upload(&u).unwrap());
        let mut out = poisoned(k, n);
        k.swiglu(&gd, &ud, &mut out, n).unwrap();
        let got = k.download(&out).unwrap();
        check("swiglu", &format!("n{n}"), &got, &swiglu_reference(&g, &u), 1e-5);
    }
}

#[test]
fn embedding_lookup_matches_f64_dequantisation() {
    let Some(k) = gpu("embedding_lookup_matches_f64_dequantisation") else {
        return;
    };
    let mut rng = Rng::new(0x5EED_0004);
    for ty in WeightType::ALL {
        // SmolLM2's table where the format allows 576 columns; K-quants need
        // multiples of 256, so they use the 8B width with fewer rows.
        let (vocab, cols) = if ty.block_len() == 256 {
            (4096, 4096)
        } else {
            (49_152, 576)
        };
        let bytes = random_matrix(&mut rng, ty, vocab, cols);
        let table = k.upload_matrix(ty, vocab, cols, &bytes).unwrap();
        let mut ids: Vec<u32> = (0..37).map(|_| rng.below(vocab) as u32).collect();
        ids[0] = 0;
        ids[1] = vocab as u32 - 1;
        let mut out = poisoned(k, ids.len() * cols);
        k.embed(&table, &ids, &mut out).unwrap();
        let got = k.download(&out).unwrap();
        let rb = ty.row_bytes(cols);
        let want: Vec<f64> = ids
            .iter()
            .flat_map(|&id| dequant_row(ty, &bytes[id as usize * rb..(id as usize + 1) * rb], cols))
            .collect();
        check(
            "embed",
            &format!("{ty:?} {vocab}x{cols}"),
            &got,
            &want,
            1e-5,
        );
        assert!(
            k.embed(&table, &[vocab as u32], &mut out).is_err(),
            "an out-of-range id must be rejected"
        );
    }
}
