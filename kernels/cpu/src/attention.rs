//! Single-query attention over one head, with llama.cpp's CPU numerics.
//!
//! The engine's parity target is llama.cpp on the same GGUF, whose default
//! CPU attention (flash attention over an f16 cache) rounds the query to
//! f16, keeps a running (online) softmax in f32 and accumulates the values
//! in f16. Small quantised decoders are sensitive enough to these roundings
//! that confident greedy choices follow them (see
//! `tests/e2e/llamacpp_parity.rs`), so we reproduce them step for step:
//! same rounding points, same order, same `expf`. Keys and values arrive
//! already rounded to f16 by the KV cache.

use half::f16;

use crate::dot::Isa;

#[inline]
fn round16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Attend one query head over `ctx` cached positions. `key(p)` / `value(p)`
/// give the head's `head_dim` floats at position `p`; the result goes to
/// `out` (`head_dim` long). The vector and portable paths agree to f16
/// rounding.
pub fn attend<'a>(
    isa: Isa,
    q: &[f32],
    ctx: usize,
    scale: f32,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && q.len() % 8 == 0 && q.len() <= 256 {
        // SAFETY: non-portable ISAs imply AVX2, FMA and F16C.
        unsafe { x86::attend(q, ctx, scale, key, value, out) };
        return;
    }
    let _ = isa;
    let qh: Vec<f32> = q.iter().map(|&v| round16(v)).collect();
    let mut acc = vec![0f32; out.len()];
    let (mut m, mut s_sum) = (f32::NEG_INFINITY, 0f32);
    for p in 0..ctx {
        let s = crate::dot::dot_portable(&qh, key(p)) * scale;
        let (ms, vs) = if s > m {
            let old = m;
            m = s;
            ((old - m).exp(), 1.0)
        } else {
            (1.0, (s - m).exp())
        };
        if ms != 1.0 {
            acc.iter_mut().for_each(|a| *a = round16(*a * ms));
        }
        for (a, &v) in acc.iter_mut().zip(value(p)) {
            *a = round16(v.mul_add(vs, *a));
        }
        s_sum = s_sum * ms + vs;
    }
    let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = a * inv;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Rounds every lane to f16 precision and back.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round16(v: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<0>(v))
    }

    /// ggml's f16 dot: four 8-lane FMA accumulators, reduced as
    /// `(a0 + a2) + (a1 + a3)`, then halves and two horizontal adds.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        let n = q.len().min(k.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: `i + 8·j + 8 ≤ n` floats are readable in both.
                let (x, y) = unsafe { (_mm256_loadu_ps(q.as_ptr().add(i + 8 * j)), _mm256_loadu_ps(k.as_ptr().add(i + 8 * j))) };
                *a = _mm256_fmadd_ps(x, y, *a);
            }
            i += 32;
        }
        let mut tail = 0f64;
        while i < n {
            tail += (q[i] * k[i]) as f64;
            i += 1;
        }
        let a = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let t0 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let t1 = _mm_hadd_ps(t0, t0);
        (_mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64 + tail) as f32
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `q.len()` is a multiple of 8
    /// and at most 256; `key(p)`, `value(p)` and `out` have `q.len()` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend<'a>(
        q: &[f32],
        ctx: usize,
        scale: f32,
        key: impl Fn(usize) -> &'a [f32],
        value: impl Fn(usize) -> &'a [f32],
        out: &mut [f32],
    ) {
        let hd = q.len();
        let lanes = hd / 8;
        let mut qh = [0f32; 256];
        let mut acc = [_mm256_setzero_ps(); 32];
        for l in 0..lanes {
            // SAFETY: `8·l + 8 ≤ hd` floats are readable and writable.
            unsafe { _mm256_storeu_ps(qh.as_mut_ptr().add(8 * l), round16(_mm256_loadu_ps(q.as_ptr().add(8 * l)))) };
        }
        let (mut m, mut s_sum) = (f32::NEG_INFINITY, 0f32);
        for p in 0..ctx {
            let s = dot(&qh[..hd], key(p)) * scale;
            let (ms, vs) = if s > m {
                let old = m;
                m = s;
                ((old - m).exp(), 1.0)
            } else {
                (1.0, (s - m).exp())
            };
            if ms != 1.0 {
                let msv = _mm256_set1_ps(ms);
                for a in acc.iter_mut().take(lanes) {
                    *a = round16(_mm256_mul_ps(*a, msv));
                }
            }
            let v = value(p);
            let vsv = _mm256_set1_ps(vs);
            for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                // SAFETY: `v` has `hd` floats.
                let x = unsafe { _mm256_loadu_ps(v.as_ptr().add(8 * l)) };
                *a = round16(_mm256_fmadd_ps(x, vsv, *a));
            }
            s_sum = s_sum * ms + vs;
        }
        let inv = _mm256_set1_ps(if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum });
        for (l, a) in acc.iter().enumerate().take(lanes) {
            // SAFETY: `out` has `hd` floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * l), _mm256_mul_ps(*a, inv)) };
        }
    }
}
