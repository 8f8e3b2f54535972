//! Integer dot products between quantised weight rows and activations
//! quantised on the fly to 8 bits (llama.cpp's approach for Q4_0, Q4_1 and
//! Q8_0 weights).
//!
//! Activations are cut into blocks of 32 with one `f32` scale each
//! ([`BlockQ8`]). Within a block the product is an exact integer sum, so the
//! AVX2, AVX-512 VNNI and portable paths produce the same integer; the
//! per-block scaling is then done in scalar `f32` in one fixed order. All
//! paths therefore give bit-identical results, and so does a row alone or in
//! a batch.

use half::f16;

use crate::dot::Isa;
use crate::dtype::WeightType;

/// 32 activations as `d × q[i]`, plus `sum = d × Σ q[i]` for the weight
/// types with an offset (Q4_1).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct BlockQ8 {
    pub q: [i8; 32],
    pub d: f32,
    pub sum: f32,
}

impl Default for BlockQ8 {
    fn default() -> Self {
        Self { q: [0; 32], d: 0.0, sum: 0.0 }
    }
}

/// Weight types with an integer kernel.
pub fn has_integer_kernel(ty: WeightType) -> bool {
    matches!(ty, WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0)
}

/// Quantise `x` (a multiple of 32 long) into `out` (`x.len() / 32` blocks)
/// exactly as ggml's x86 `quantize_row_q8_1` does: scale `127 / amax`,
/// round half to even, scales rounded to f16 — so our products match
/// llama.cpp's bit for bit.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::current() != Isa::Portable {
        // SAFETY: non-portable ISAs imply AVX2 (and with it SSE4.1).
        unsafe { x86::quantize_row(x, out) };
        return;
    }
    quantize_row_portable(x, out);
}

/// The portable [`quantize_row`] (also the reference the vector path is
/// tested against).
pub fn quantize_row_portable(x: &[f32], out: &mut [BlockQ8]) {
    for (block, chunk) in out.iter_mut().zip(x.chunks_exact(32)) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.q.iter_mut().zip(chunk) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        block.d = f16::from_f32(d).to_f32();
        block.sum = f16::from_f32(d * sum as f32).to_f32();
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dot products of `R` stored weight rows with `T` tokens' quantised
/// activations (`out[r][t]`), unpacking each weight block once.
///
/// All paths are bit-identical to each other (the same exact integer
/// partial sums, scaled and accumulated in the same order) and for every
/// `R` and `T`.
#[inline]
pub fn dot_rows<const R: usize, const T: usize>(
    isa: Isa,
    ty: WeightType,
    rows: [&[u8]; R],
    acts: [&[BlockQ8]; T],
) -> [[f32; T]; R] {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: non-portable ISAs are selected only when AVX2, FMA and F16C
        // are present (and VNNI for `Avx512Vnni`).
        return unsafe {
            match (ty, isa) {
                (WeightType::Q4_1, Isa::Avx512Vnni) => x86::row_q4_vnni::<true, R, T>(rows, acts),
                (WeightType::Q4_1, _) => x86::row_q4_avx2::<true, R, T>(rows, acts),
                (WeightType::Q4_0, Isa::Avx512Vnni) => x86::row_q4_vnni::<false, R, T>(rows, acts),
                (WeightType::Q4_0, _) => x86::row_q4_avx2::<false, R, T>(rows, acts),
                _ => x86::row_q8_0::<R, T>(rows, acts),
            }
        };
    }
    let _ = isa;
    rows.map(|row| acts.map(|a| dot_row_portable(ty, row, a)))
}

/// [`dot_rows`] for a single row and token.
#[inline]
pub fn dot_row(isa: Isa, ty: WeightType, row: &[u8], act: &[BlockQ8]) -> f32 {
    dot_rows::<1, 1>(isa, ty, [row], [act])[0][0]
}

/// Dot products of two stored weight rows with `T` tokens' activations
/// (`out[r][t]`), for instruction sets with 512-bit registers.
///
/// On [`Isa::Avx512Vnni`] one 512-bit register holds both rows' eight lanes
/// for a token (row 0 in the low half, row 1 in the high half), so each
/// instruction does two rows' work while every lane goes through exactly
/// the operations of [`dot_rows`]: the results are bit-identical to it. On
/// other instruction sets this is [`dot_rows`] itself.
///
/// `sums[i][t]` must be `acts[t][i].sum` ([`block_sums`] builds it once for
/// a tile of tokens, to be reused for every row): Q4_1's offsets are then
/// computed for all `T` tokens at once.
#[inline]
pub fn dot_row_pair<const T: usize>(
    isa: Isa,
    ty: WeightType,
    rows: [&[u8]; 2],
    acts: [&[BlockQ8]; T],
    sums: &[[f32; T]],
) -> [[f32; T]; 2] {
    debug_assert!(sums.len() == acts[0].len());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: `Avx512Vnni` is selected only when AVX-512 F, BW, VL and
        // VNNI, AVX2, FMA and F16C are all present.
        return unsafe {
            match ty {
                WeightType::Q4_1 => x86::pair_zmm::<{ x86::Q4_1 }, T>(rows, acts, sums),
                WeightType::Q4_0 => x86::pair_zmm::<{ x86::Q4_0 }, T>(rows, acts, sums),
                _ => x86::pair_zmm::<{ x86::Q8_0 }, T>(rows, acts, sums),
            }
        };
    }
    let _ = sums;
    dot_rows::<2, T>(isa, ty, rows, acts)
}

/// The activation sums of `T` tokens block by block: `out[i][t] =
/// acts[t][i].sum`, the layout [`dot_row_pair`] reads them in.
pub fn block_sums<const T: usize>(acts: [&[BlockQ8]; T]) -> Vec<[f32; T]> {
    (0..acts[0].len()).map(|i| std::array::from_fn(|t| acts[t][i].sum)).collect()
}

/// The vector kernels' arithmetic in plain Rust: per block, eight exact
/// integer lane sums of four products each, scaled by `d_w·d_a` and fused
/// into eight `f32` lane accumulators; then ggml's horizontal sum of the
/// lanes, then the offsets.
fn dot_row_portable(ty: WeightType, row: &[u8], act: &[BlockQ8]) -> f32 {
    let bb = ty.block_bytes();
    let mut acc = [0f32; 8];
    let mut offsets = 0f32;
    for (block, a) in row.chunks_exact(bb).zip(act) {
        let d = f16_at(block, 0);
        let weights: [i32; 32] = match ty {
            WeightType::Q4_1 => {
                offsets += f16_at(block, 2) * a.sum;
                nibbles(&block[4..20], 0)
            }
            WeightType::Q4_0 => nibbles(&block[2..18], 8),
            _ => std::array::from_fn(|k| block[2 + k] as i8 as i32),
        };
        let scale = d * a.d;
        for (j, lane) in acc.iter_mut().enumerate() {
            let sum: i32 = (4 * j..4 * j + 4).map(|k| weights[k] * a.q[k] as i32).sum();
            *lane = scale.mul_add(sum as f32, *lane);
        }
    }
    hsum8(acc) + offsets
}

/// The 32 weights of a Q4 block minus `bias`: the low nibbles of `packed`
/// first, then the high ones (ggml's layout).
#[inline]
fn nibbles(packed: &[u8], bias: i32) -> [i32; 32] {
    std::array::from_fn(|k| if k < 16 { (packed[k] & 0x0F) as i32 - bias } else { (packed[k - 16] >> 4) as i32 - bias })
}

/// ggml's `hsum_float_8`: upper four lanes onto the lower four, then
/// `(l0 + l2) + (l1 + l3)`.
#[inline]
fn hsum8(x: [f32; 8]) -> f32 {
    let h: [f32; 4] = std::array::from_fn(|i| x[i + 4] + x[i]);
    (h[0] + h[2]) + (h[1] + h[3])
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::BlockQ8;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum_f32(v: __m256) -> f32 {
        // ggml's hsum_float_8.
        let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Vector [`super::quantize_row`]: the same scale, the same
    /// round-half-to-even (`_mm256_round_ps` with nearest), the same f16
    /// rounding of the scales.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_row(x: &[f32], out: &mut [BlockQ8]) {
        let sign_mask = _mm256_set1_ps(-0.0);
        for (block, chunk) in out.iter_mut().zip(x.chunks_exact(32)) {
            // SAFETY: `chunk` holds 32 floats.
            let v: [__m256; 4] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(chunk.as_ptr().add(8 * k)) });
            let mut m = _mm256_andnot_ps(sign_mask, v[0]);
            for vk in &v[1..] {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign_mask, *vk));
            }
            let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                    v[k], id,
                )))
            });
            let sum = q.iter().fold(_mm256_setzero_si256(), |acc, qk| _mm256_add_epi32(acc, *qk));
            let s4 = _mm_add_epi32(_mm256_extracti128_si256(sum, 1), _mm256_castsi256_si128(sum));
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
            let total = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01)));
            // Pack 32 i32 → 32 i8 in order (packs work per 128-bit lane).
            let p01 = _mm256_packs_epi32(q[0], q[1]);
            let p23 = _mm256_packs_epi32(q[2], q[3]);
            let p = _mm256_packs_epi16(p01, p23);
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: `block.q` holds 32 bytes.
            unsafe { _mm256_storeu_si256(block.q.as_mut_ptr() as *mut __m256i, p) };
            block.d = f16::from_f32(d).to_f32();
            block.sum = f16::from_f32(d * total as f32).to_f32();
        }
    }

    /// Two f16 values at `p` (little-endian) as f32, through F16C.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn f16x2(p: *const u8) -> (f32, f32) {
        // SAFETY: the caller guarantees 4 readable bytes at `p`.
        let bits = unsafe { (p as *const u32).read_unaligned() };
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
    }

    /// Defines a Q4_1 (`OFFSET`) / Q4_0 kernel for one instruction set that
    /// dots one weight row with `T` tokens' activations, unpacking each
    /// weight block once. `$lanes(u, s)` must give eight 32-bit lanes, lane
    /// j = Σ of products 4j..4j+3 of unsigned bytes `u` and signed bytes
    /// `s`. Each token's arithmetic is the same for every `T`, so tiling
    /// never changes a result. Each instruction set gets its own function so
    /// its intrinsics inline under its own features.
    macro_rules! row_q4 {
        ($name:ident, $features:literal, $lanes:expr) => {
            /// `R` weight rows against `T` tokens: `out[r][t]`.
            ///
            /// # Safety
            /// The CPU must have the enabled features; each row holds as
            /// many whole blocks as each activation slice.
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const OFFSET: bool, const R: usize, const T: usize>(
                rows: [&[u8]; R],
                acts: [&[BlockQ8]; T],
            ) -> [[f32; T]; R] {
                let lanes = $lanes;
                let (bb, qs) = if OFFSET { (20, 4) } else { (18, 2) };
                let blocks = acts[0].len();
                debug_assert!(rows.iter().all(|r| r.len() >= blocks * bb) && acts.iter().all(|a| a.len() == blocks));
                let mask = _mm_set1_epi8(0x0F);
                // One accumulator per (row, token), blocks in order, then
                // ggml's horizontal sum plus the offsets: the same operations
                // as ggml's `vec_dot_q4_1_q8_1`, and the same whatever R and
                // T a (row, token) was computed with.
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                let mut offsets = [[0f32; T]; R];
                for i in 0..blocks {
                    for r in 0..R {
                        // SAFETY: block `i` lies inside each row (checked by the caller).
                        let p = unsafe { rows[r].as_ptr().add(i * bb) };
                        let (d, m) = unsafe { f16x2(p) };
                        let packed = unsafe { _mm_loadu_si128(p.add(qs) as *const __m128i) };
                        let w = _mm256_set_m128i(
                            _mm_and_si128(_mm_srli_epi16(packed, 4), mask),
                            _mm_and_si128(packed, mask),
                        );
                        for t in 0..T {
                            let a = &acts[t][i];
                            let q = unsafe { _mm256_load_si256(a.q.as_ptr() as *const __m256i) };
                            let mut sums = lanes(w, q);
                            if OFFSET {
                                offsets[r][t] += m * a.sum;
                            } else {
                                // Q4_0 stores q + 8: subtract 8 × Σ q per lane.
                                sums = _mm256_sub_epi32(sums, lanes(_mm256_set1_epi8(8), q));
                            }
                            acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sums), acc[r][t]);
                        }
                    }
                }
                let mut out = [[0f32; T]; R];
                for r in 0..R {
                    for t in 0..T {
                        out[r][t] = hsum_f32(acc[r][t]) + offsets[r][t];
                    }
                }
                out
            }
        };
    }

    row_q4!(row_q4_avx2, "avx2,fma,f16c", |u: __m256i, s: __m256i| {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    });
    row_q4!(row_q4_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", |u: __m256i, s: __m256i| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        u,
        s
    ));

    /// Q8_0: `R` rows against `T` tokens' Q8 activations (see `row_q4!`).
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; each row holds as many blocks
    /// as each activation slice.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q8_0<const R: usize, const T: usize>(rows: [&[u8]; R], acts: [&[BlockQ8]; T]) -> [[f32; T]; R] {
        let blocks = acts[0].len();
        debug_assert!(rows.iter().all(|r| r.len() >= blocks * 34) && acts.iter().all(|a| a.len() == blocks));
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        for i in 0..blocks {
            for r in 0..R {
                // SAFETY: block `i` lies inside each row (checked by the caller).
                let p = unsafe { rows[r].as_ptr().add(i * 34) };
                let (d, _) = unsafe { f16x2(p) };
                let x = unsafe { _mm256_loadu_si256(p.add(2) as *const __m256i) };
                // maddubs wants unsigned × signed: move x's sign onto y.
                let ax = _mm256_sign_epi8(x, x);
                for t in 0..T {
                    let a = &acts[t][i];
                    let y = unsafe { _mm256_load_si256(a.q.as_ptr() as *const __m256i) };
                    let sums =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x)), _mm256_set1_epi16(1));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sums), acc[r][t]);
                }
            }
        }
        let mut out = [[0f32; T]; R];
        for r in 0..R {
            for t in 0..T {
                out[r][t] = hsum_f32(acc[r][t]);
            }
        }
        out
    }

    /// Weight layouts of [`pair_zmm`].
    pub const Q4_0: u8 = 0;
    pub const Q4_1: u8 = 1;
    pub const Q8_0: u8 = 2;

    /// Two weight rows against `T` tokens, two rows to a 512-bit register.
    ///
    /// Per block and token, lane j of each half is the exact integer sum of
    /// products 4j..4j+3 of that row with the token, as in `row_q4!` and
    /// [`row_q8_0`]: VNNI multiplies unsigned by signed bytes, so signed
    /// Q8_0 weights are shifted by 128 and Q4_0's stored +8 is kept, and the
    /// bias times the lane sums of the activations is subtracted again (all
    /// exact in 32 bits). `sums[i][t]` is token `t`'s activation sum of
    /// block `i`. The lanes are then scaled by `d_w·d_a` and fused
    /// into the accumulator in block order, summed horizontally like ggml,
    /// and Q4_1's offsets added last: the same `f32` operations in the same
    /// order as the 256-bit kernels, so the results are bit-identical.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C;
    /// each row holds as many whole blocks as each activation slice.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn pair_zmm<const KIND: u8, const T: usize>(
        rows: [&[u8]; 2],
        acts: [&[BlockQ8]; T],
        sums: &[[f32; T]],
    ) -> [[f32; T]; 2] {
        let (bb, qs, bias) = match KIND {
            Q4_0 => (18, 2, 8i8),
            Q4_1 => (20, 4, 0),
            _ => (34, 2, i8::MIN),
        };
        let blocks = acts[0].len();
        // Checked once here, so the loop below indexes without checks.
        assert!(rows.iter().all(|r| r.len() >= blocks * bb) && acts.iter().all(|a| a.len() == blocks));
        assert!(sums.len() == blocks);
        let mask = _mm512_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        let bias = _mm512_set1_epi8(bias);
        // Nibble shifts per 128-bit quarter: [row 0 low, row 0 high, row 1
        // low, row 1 high].
        let (keep, high) = (0, 0x0004_0004_0004_0004);
        let shifts = _mm512_set_epi64(high, high, keep, keep, high, high, keep, keep);
        // From [d0, m0, d1, m1]: each row's scale over its eight lanes.
        let spread_d = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut offsets = [[0f32; T]; 2];
        for i in 0..blocks {
            // SAFETY: block `i` lies inside each row (checked by the caller).
            let (p0, p1) = unsafe { (rows[0].as_ptr().add(i * bb), rows[1].as_ptr().add(i * bb)) };
            // Both rows' leading f16 pairs (d, m) at once: [d0, m0, d1, m1].
            // SAFETY: every block starts with at least 4 bytes.
            let dm = _mm_cvtph_ps(unsafe {
                _mm_insert_epi32::<1>(_mm_cvtsi32_si128((p0 as *const i32).read_unaligned()), (p1 as *const i32).read_unaligned())
            });
            let w = if KIND == Q8_0 {
                // SAFETY: a Q8_0 block holds 32 weight bytes after its scale.
                let (a, b) = unsafe {
                    (_mm256_loadu_si256(p0.add(2) as *const __m256i), _mm256_loadu_si256(p1.add(2) as *const __m256i))
                };
                // Flipping the sign bit adds 128: unsigned for VNNI.
                _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b), bias)
            } else {
                // [a, a, b, b] by 128-bit quarters, then the low nibbles of
                // the first copy of each and the high nibbles of the second.
                // SAFETY: a Q4 block holds 16 packed bytes at `qs`.
                let (a, b) = unsafe {
                    (_mm_loadu_si128(p0.add(qs) as *const __m128i), _mm_loadu_si128(p1.add(qs) as *const __m128i))
                };
                let ab = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(a), 0xFF00, b);
                _mm512_and_si512(_mm512_srlv_epi16(ab, shifts), mask)
            };
            let dw = _mm512_permutexvar_ps(spread_d, _mm512_castps128_ps512(dm));
            // Eight tokens per inner loop: the compiler unrolls a loop of
            // eight and keeps every accumulator in a register.
            for group in acc.chunks_mut(8).enumerate() {
                let (g, accs) = group;
                for (k, acc) in accs.iter_mut().enumerate() {
                    let a = &acts[8 * g + k][i];
                    // SAFETY: `BlockQ8` is 32-byte aligned with `q` first.
                    let q = _mm512_broadcast_i64x4(unsafe { _mm256_load_si256(a.q.as_ptr() as *const __m256i) });
                    let mut lanes = _mm512_dpbusd_epi32(zero, w, q);
                    if KIND != Q4_1 {
                        lanes = _mm512_sub_epi32(lanes, _mm512_dpbusd_epi32(zero, bias, q));
                    }
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
                    *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes), *acc);
                }
            }
            if KIND == Q4_1 {
                // The tokens side by side: this vectorises across `t`.
                let (m0, m1) = (_mm_cvtss_f32(_mm_movehdup_ps(dm)), _mm_cvtss_f32(_mm_shuffle_ps::<3>(dm, dm)));
                let s = &sums[i];
                for t in 0..T {
                    offsets[0][t] += m0 * s[t];
                    offsets[1][t] += m1 * s[t];
                }
            }
        }
        let mut out = [[0f32; T]; 2];
        for t in 0..T {
            let low = _mm512_castps512_ps256(acc[t]);
            let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[t])));
            if KIND == Q8_0 {
                out[0][t] = hsum_f32(low);
                out[1][t] = hsum_f32(high);
            } else {
                out[0][t] = hsum_f32(low) + offsets[0][t];
                out[1][t] = hsum_f32(high) + offsets[1][t];
            }
        }
        out
    }
}
