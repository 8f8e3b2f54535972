//! Small element-wise and reduction ops used by the forward pass.

/// RMSNorm: `out = x / sqrt(mean(x²) + eps) · weight`, with the sum of
/// squares accumulated in `f64` as ggml does.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean_sq = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// SwiGLU in place: `gate = silu(gate) · up`, with `silu(x) = x / (1 + e⁻ˣ)`.
///
/// `e⁻ˣ` comes from [`exp_poly`], not libm: ggml evaluates SwiGLU with that
/// approximation, and this model re-quantises the result to 8 bits before
/// the down projection, so matching its last bits keeps us on llama.cpp's
/// path (see `tests/data/llamacpp/README.md`).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::dot::Isa::current() >= crate::dot::Isa::Avx2Fma {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { silu_mul_fma(gate, up) };
    }
    silu_mul_portable(gate, up);
}

#[inline(always)]
fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_poly(-*g)) * u;
    }
}

/// The same arithmetic with hardware FMA, which the compiler vectorises
/// (without it `mul_add` is a libm call per operation).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_fma(gate: &mut [f32], up: &[f32]) {
    silu_mul_portable(gate, up);
}

/// `eˣ` in single precision by range reduction and a degree-5 polynomial:
/// `x = n·ln2 + b` with `n` rounded to nearest (even) and `|b| ≤ ln2/2`,
/// `eᵇ ≈ 1 + c₁b + c₂b² + … + c₅b⁵`, result `eᵇ·2ⁿ`. This is the published
/// Arm optimized-routines scheme (max error about 1.5 ulp) that ggml's CPU
/// backend vectorises; every step is an `f32` fused multiply-add in the same
/// order, so the bits agree with it. Overflows to `inf` above ~88.7 and
/// underflows to 0 below ~-104.
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    const LOG2_E: f32 = f32::from_bits(0x3fb8_aa3b); // 1.442695
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0.69314575
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 1.4286068e-6
    const C: [f32; 5] = [
        f32::from_bits(0x3f7f_fff6), // 0.9999994
        f32::from_bits(0x3eff_fedb), // 0.49999127
        f32::from_bits(0x3e2a_af33), // 0.16668396
        f32::from_bits(0x3d2b_9f17), // 0.041899767
        f32::from_bits(0x3c07_2010), // 0.00824739
    ];
    let n = x.mul_add(LOG2_E, SHIFT) - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let u = b * b;
    let odd = C[4].mul_add(b, C[3]);
    let even = C[2].mul_add(b, C[1]);
    let low = C[0].mul_add(b, 1.0);
    let p = odd.mul_add(u, even).mul_add(u, low);
    // p·2ⁿ in two exact power-of-two steps, so |n| up to 254 neither
    // overflows the scale factor nor rounds twice outside subnormals.
    let n = n as i32;
    let half = n / 2;
    p * pow2(half) * pow2(n - half)
}

/// `2ⁿ` for `-126 ≤ n ≤ 127`, clamped outside (the callers' products then
/// saturate to `inf` or 0 as the true value would).
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n.clamp(-126, 127) + 127) as u32) << 23)
}

/// Rotary position encoding of one head in place: pair `i` — elements
/// `(2i, 2i+1)` when `interleaved`, else `(i, i + sin_cos.len())` — is
/// rotated by the angle whose `(sin, cos)` is `sin_cos[i]`.
///
/// Each output is one fused multiply-add over one rounded product, the way
/// C compilers contract ggml's `x0·c − x1·s` and `x0·s + x1·c`, so rotated
/// queries and keys match llama.cpp's bit for bit.
pub fn rotate_pairs(head: &mut [f32], sin_cos: &[(f32, f32)], interleaved: bool) {
    #[cfg(target_arch = "x86_64")]
    if crate::dot::Isa::current() >= crate::dot::Isa::Avx2Fma {
        // SAFETY: the instruction set was detected on this CPU.
        return unsafe { rotate_pairs_fma(head, sin_cos, interleaved) };
    }
    rotate_pairs_portable(head, sin_cos, interleaved);
}

#[inline(always)]
fn rotate_pairs_portable(head: &mut [f32], sin_cos: &[(f32, f32)], interleaved: bool) {
    let half = sin_cos.len();
    for (i, &(s, c)) in sin_cos.iter().enumerate() {
        let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0.mul_add(c, -(x1 * s));
        head[b] = x0.mul_add(s, x1 * c);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rotate_pairs_fma(head: &mut [f32], sin_cos: &[(f32, f32)], interleaved: bool) {
    rotate_pairs_portable(head, sin_cos, interleaved);
}

/// Numerically safe softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `y += a · x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        ((a as f64) - b).abs() / (f32::from_bits(b32.to_bits() + 1) - b32).abs() as f64
    }

    #[test]
    fn exp_poly_is_within_its_error_bound_of_exp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            worst = worst.max(ulps(exp_poly(x), (x as f64).exp()));
        }
        // The scheme's bound is 1.45 ulp plus the final rounding.
        assert!(worst <= 2.5, "worst error {worst} ulps");
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(100.0), f32::INFINITY);
        assert_eq!(exp_poly(-110.0), 0.0);
    }

    #[test]
    fn fused_and_portable_paths_agree_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            let gate: Vec<f32> = (0..1536).map(|i| ((i * 7919 % 2000) as f32 - 1000.0) / 97.0).collect();
            let up: Vec<f32> = (0..1536).map(|i| ((i * 104_729 % 2000) as f32 - 1000.0) / 311.0).collect();
            let (mut a, mut b) = (gate.clone(), gate.clone());
            silu_mul_portable(&mut a, &up);
            // SAFETY: detected above.
            unsafe { silu_mul_fma(&mut b, &up) };
            assert_eq!(a, b);
            let angles: Vec<(f32, f32)> = (0..32).map(|i| (i as f32 * 0.37).sin_cos()).collect();
            for interleaved in [true, false] {
                let (mut a, mut b) = (gate[..64].to_vec(), gate[..64].to_vec());
                rotate_pairs_portable(&mut a, &angles, interleaved);
                // SAFETY: detected above.
                unsafe { rotate_pairs_fma(&mut b, &angles, interleaved) };
                assert_eq!(a, b);
            }
        }
    }
}
