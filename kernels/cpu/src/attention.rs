//! Single-query attention over one head: exact (`f32`, two-pass softmax)
//! for models checked against float32 references, and with llama.cpp's CPU
//! numerics for GGUF models.
//!
//! The engine's parity target is llama.cpp on the same GGUF, whose default
//! CPU attention (flash attention over an f16 cache) rounds the query to
//! f16, keeps a running (online) softmax in f32 and accumulates the values
//! in f16. Small quantised decoders are sensitive enough to these roundings
//! that confident greedy choices follow them (see
//! `tests/e2e/llamacpp_parity.rs`), so we reproduce them step for step:
//! same rounding points, same order, same `expf`. Keys and values come
//! straight from the f16 KV cache.

use half::f16;

use crate::dot::Isa;

/// Exact attention over an `f32` cache: scores, a max-subtracted softmax,
/// and the weighted sum of values, all in `f32` in position order.
pub fn attend_exact<'a>(
    q: &[f32],
    ctx: usize,
    scale: f32,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    let mut scores: Vec<f32> = (0..ctx).map(|p| crate::dot::dot(q, key(p)) * scale).collect();
    crate::ops::softmax(&mut scores);
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        crate::ops::axpy(w, value(p), out);
    }
}

#[inline]
fn round16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Attention with llama.cpp's rounding points over an f16 cache. `key(p)` /
/// `value(p)` give the head's `head_dim` f16 values at position `p`; the result goes
/// to `out` (`head_dim` long). The vector and portable paths agree to f16
/// rounding.
pub fn attend_llama_cpp<'a>(
    isa: Isa,
    q: &[f32],
    ctx: usize,
    scale: f32,
    key: impl Fn(usize) -> &'a [f16],
    value: impl Fn(usize) -> &'a [f16],
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
        let s = score_dot(&qh, key(p)) * scale;
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
        for (a, v) in acc.iter_mut().zip(value(p)) {
            *a = round16(v.to_f32().mul_add(vs, *a));
        }
        s_sum = s_sum.mul_add(ms, vs);
    }
    let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = a * inv;
    }
}

/// Lanes of the score dot product's accumulators: ggml's f16 dot on an
/// AVX-512 build (the build llama.cpp makes for the machines our parity
/// references come from) keeps four 16-lane accumulators.
/// [`attend_llama_cpp`] for `G` query heads that share one key/value head
/// (grouped-query attention): each head gets exactly the operations it
/// gets alone, so the results are bit-identical, but each key and value is
/// loaded and widened once for the group, and the heads' independent
/// accumulation chains overlap instead of waiting on each other.
pub fn attend_group_llama_cpp<'a, const G: usize>(
    isa: Isa,
    qs: [&[f32]; G],
    ctx: usize,
    scale: f32,
    key: impl Fn(usize) -> &'a [f16],
    value: impl Fn(usize) -> &'a [f16],
    outs: [&mut [f32]; G],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: `Avx512Vnni` implies AVX-512 F, BW and VL, AVX2, FMA and F16C.
        match qs[0].len() {
            64 => return unsafe { x86::attend_group::<G, 4>(qs, ctx, scale, key, value, outs) },
            128 => return unsafe { x86::attend_group::<G, 8>(qs, ctx, scale, key, value, outs) },
            _ => {}
        }
    }
    for (q, out) in qs.into_iter().zip(outs) {
        attend_llama_cpp(isa, q, ctx, scale, &key, &value, out);
    }
}

const LANES: usize = 16;
const ACCUMULATORS: usize = 4;
const STEP: usize = LANES * ACCUMULATORS;

/// `q · k` in ggml's order: every 64 values are spread over four 16-lane
/// FMA accumulators, which are summed as `(a0 + a2) + (a1 + a3)` and then
/// reduced 16 → 8 → 4 → 2 → 1 by adding upper halves to lower ones; a
/// remainder shorter than 64 is added product by product in `f64`.
fn score_dot(q: &[f32], k: &[f16]) -> f32 {
    let n = q.len().min(k.len());
    let whole = n - n % STEP;
    let mut acc = [[0f32; LANES]; ACCUMULATORS];
    for (qs, ks) in q[..whole].chunks_exact(STEP).zip(k[..whole].chunks_exact(STEP)) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                *lane = qs[LANES * j + l].mul_add(ks[LANES * j + l].to_f32(), *lane);
            }
        }
    }
    let mut x: [f32; LANES] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            x[l] += x[l + width];
        }
    }
    let tail: f64 = q[whole..n].iter().zip(&k[whole..n]).map(|(&a, b)| (a * b.to_f32()) as f64).sum();
    (x[0] as f64 + tail) as f32
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// Eight f16 values at `p` as f32.
    ///
    /// # Safety
    /// 8 values must be readable at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: the caller guarantees 16 readable bytes.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
    }

    /// Rounds every lane to f16 precision and back.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round16(v: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<0>(v))
    }

    /// [`super::score_dot`] with each 16-lane accumulator held as two
    /// 8-lane halves (the arithmetic is lane-wise, so the bits are the same).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = 0;
        while i + super::STEP <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                for (h, half) in a.iter_mut().enumerate() {
                    let at = i + 16 * j + 8 * h;
                    // SAFETY: `at + 8 ≤ n` values are readable in both.
                    let (x, y) = unsafe { (_mm256_loadu_ps(q.as_ptr().add(at)), load8(k.as_ptr().add(at))) };
                    *half = _mm256_fmadd_ps(x, y, *half);
                }
            }
            i += super::STEP;
        }
        let x = |h: usize| _mm256_add_ps(_mm256_add_ps(acc[0][h], acc[2][h]), _mm256_add_ps(acc[1][h], acc[3][h]));
        let x8 = _mm256_add_ps(x(0), x(1));
        let x4 = _mm_add_ps(_mm256_castps256_ps128(x8), _mm256_extractf128_ps(x8, 1));
        let x2 = _mm_add_ps(x4, _mm_movehl_ps(x4, x4));
        let x1 = _mm_add_ss(x2, _mm_movehdup_ps(x2));
        let mut tail = 0f64;
        while i < n {
            tail += (q[i] * k[i].to_f32()) as f64;
            i += 1;
        }
        (_mm_cvtss_f32(x1) as f64 + tail) as f32
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `q.len()` is a multiple of 8
    /// and at most 256; `key(p)`, `value(p)` and `out` have `q.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend<'a>(
        q: &[f32],
        ctx: usize,
        scale: f32,
        key: impl Fn(usize) -> &'a [f16],
        value: impl Fn(usize) -> &'a [f16],
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
                // SAFETY: `v` has `hd` values.
                let x = unsafe { load8(v.as_ptr().add(8 * l)) };
                *a = round16(_mm256_fmadd_ps(x, vsv, *a));
            }
            s_sum = s_sum.mul_add(ms, vs);
        }
        let inv = _mm256_set1_ps(if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum });
        for (l, a) in acc.iter().enumerate().take(lanes) {
            // SAFETY: `out` has `hd` floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * l), _mm256_mul_ps(*a, inv)) };
        }
    }

    /// [`round16`] in 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn round16_zmm(v: __m512) -> __m512 {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<0>(v))
    }

    /// 16 f16 values at `p` as f32.
    ///
    /// # Safety
    /// 16 values must be readable at `p`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn load16(p: *const f16) -> __m512 {
        // SAFETY: the caller guarantees 32 readable bytes.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) })
    }

    /// [`dot`] over `16 × L` values already widened, the same operations
    /// in the same order: 16-lane accumulators j = 0..4 over steps of 64
    /// (a zmm lane is `dot`'s lane `8h + i` of accumulator j), then
    /// `(a0 + a2) + (a1 + a3)`, the halves added, and ggml's 4 → 1 sum;
    /// the elements past the last whole step go through `f64` as in `dot`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn dot_widened<const L: usize>(q: &[__m512; L], k: &[__m512; L]) -> f32 {
        let whole = L / 4 * 4;
        let mut acc = [_mm512_setzero_ps(); 4];
        for step in (0..whole).step_by(4) {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(q[step + j], k[step + j], *a);
            }
        }
        let x = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
        let x8 = _mm256_add_ps(
            _mm512_castps512_ps256(x),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))),
        );
        let x4 = _mm_add_ps(_mm256_castps256_ps128(x8), _mm256_extractf128_ps(x8, 1));
        let x2 = _mm_add_ps(x4, _mm_movehl_ps(x4, x4));
        let x1 = _mm_add_ss(x2, _mm_movehdup_ps(x2));
        let mut tail = 0f64;
        for l in whole..L {
            let (mut qa, mut ka) = ([0f32; 16], [0f32; 16]);
            // SAFETY: each array holds 16 floats.
            unsafe {
                _mm512_storeu_ps(qa.as_mut_ptr(), q[l]);
                _mm512_storeu_ps(ka.as_mut_ptr(), k[l]);
            }
            tail += qa.iter().zip(&ka).map(|(&a, &b)| (a * b) as f64).sum::<f64>();
        }
        (_mm_cvtss_f32(x1) as f64 + tail) as f32
    }

    /// `G` heads of `16 × L` dimensions sharing keys and values; see
    /// [`super::attend_group_llama_cpp`]. Per head this is [`attend`] step
    /// for step (elementwise operations are the same in 16 lanes as in 8).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VL, AVX2, FMA and F16C; every
    /// query, key, value and output holds `16 × L` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn attend_group<'a, const G: usize, const L: usize>(
        qs: [&[f32]; G],
        ctx: usize,
        scale: f32,
        key: impl Fn(usize) -> &'a [f16],
        value: impl Fn(usize) -> &'a [f16],
        outs: [&mut [f32]; G],
    ) {
        let hd = 16 * L;
        assert!(qs.iter().all(|q| q.len() == hd) && outs.iter().all(|o| o.len() == hd));
        // SAFETY (loads): every query has `hd` floats.
        let qh: [[__m512; L]; G] =
            std::array::from_fn(|g| std::array::from_fn(|l| round16_zmm(unsafe { _mm512_loadu_ps(qs[g].as_ptr().add(16 * l)) })));
        let mut acc = [[_mm512_setzero_ps(); L]; G];
        let (mut m, mut s_sum) = ([f32::NEG_INFINITY; G], [0f32; G]);
        for p in 0..ctx {
            let (k, v) = (key(p), value(p));
            assert!(k.len() >= hd && v.len() >= hd);
            // SAFETY: `k` has `hd` values.
            let kw: [__m512; L] = std::array::from_fn(|l| unsafe { load16(k.as_ptr().add(16 * l)) });
            let mut vs = [0f32; G];
            for g in 0..G {
                let s = dot_widened(&qh[g], &kw) * scale;
                let ms;
                (ms, vs[g]) = if s > m[g] {
                    let old = m[g];
                    m[g] = s;
                    ((old - m[g]).exp(), 1.0)
                } else {
                    (1.0, (s - m[g]).exp())
                };
                if ms != 1.0 {
                    let msv = _mm512_set1_ps(ms);
                    for a in acc[g].iter_mut() {
                        *a = round16_zmm(_mm512_mul_ps(*a, msv));
                    }
                }
                s_sum[g] = s_sum[g].mul_add(ms, vs[g]);
            }
            // SAFETY: `v` has `hd` values.
            let vw: [__m512; L] = std::array::from_fn(|l| unsafe { load16(v.as_ptr().add(16 * l)) });
            for (head, &w) in acc.iter_mut().zip(&vs) {
                let w = _mm512_set1_ps(w);
                for (a, &x) in head.iter_mut().zip(&vw) {
                    *a = round16_zmm(_mm512_fmadd_ps(x, w, *a));
                }
            }
        }
        for ((out, head), total) in outs.into_iter().zip(&acc).zip(s_sum) {
            let inv = _mm512_set1_ps(if total == 0.0 { 0.0 } else { 1.0 / total });
            for (l, a) in head.iter().enumerate() {
                // SAFETY: `out` has `hd` floats.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * l), _mm512_mul_ps(*a, inv)) };
            }
        }
    }
}
