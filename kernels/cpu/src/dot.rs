//! `f32` dot products with run-time CPU feature dispatch.
//!
//! The instruction set is chosen once per process: AVX-512 VNNI (for the
//! integer kernels) when the CPU has it, else AVX2+FMA, else a portable
//! version the compiler vectorises for the baseline target. The environment
//! variable `WEFT_CPU_ISA` (`portable`, `avx2`, `avx512vnni`) caps the choice
//! so CI exercises every path on one machine; asking for more than the CPU
//! has falls back to the best it does have, with a warning on stderr.
//!
//! Both paths sum in a fixed order that depends only on the vector length, so
//! results are reproducible run to run and independent of batching.

use std::sync::OnceLock;

/// The instruction set the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, vectorised by the compiler for the build's baseline target.
    Portable,
    /// x86-64 AVX2 with fused multiply-add (and F16C).
    Avx2Fma,
    /// AVX2+FMA plus AVX-512 (F, BW, VL, VNNI) for 8-bit integer dot
    /// products, two weight rows to a 512-bit register.
    Avx512Vnni,
}

impl Isa {
    /// The instruction set in use, decided on first call.
    pub fn current() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let detected = detect();
            let wanted = match std::env::var("WEFT_CPU_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") => Isa::Avx2Fma,
                Ok("avx512vnni") | Ok("") | Err(_) => Isa::Avx512Vnni,
                Ok(other) => {
                    eprintln!("weft: unknown WEFT_CPU_ISA={other:?} (portable, avx2, avx512vnni); detecting");
                    Isa::Avx512Vnni
                }
            };
            let chosen = wanted.min(detected);
            if std::env::var_os("WEFT_CPU_ISA").is_some() && chosen != wanted {
                eprintln!("weft: WEFT_CPU_ISA asks for {wanted:?} but this CPU supports {detected:?}");
            }
            chosen
        })
    }

    /// Every instruction set this CPU can run, for tests.
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2Fma, Isa::Avx512Vnni].into_iter().filter(|i| *i <= detect()).collect()
    }
}

pub(crate) fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                return Isa::Avx512Vnni;
            }
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// `Σ a[i]·b[i]` over equal-length slices, on the process's instruction set.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(Isa::current(), a, b)
}

/// `Σ a[i]·b[i]` on a given instruction set; one the CPU lacks falls back to
/// the portable path.
#[inline]
pub fn dot_with(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512Vnni if detect() < Isa::Avx2Fma => dot_portable(a, b),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: checked just above that the CPU reports AVX2 and FMA.
        Isa::Avx2Fma | Isa::Avx512Vnni => unsafe { avx2::dot(a, b) },
        _ => dot_portable(a, b),
    }
}

/// The portable dot product: eight independent partial sums, then a fixed
/// pairwise reduction.
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for i in chunks * 8..n {
        tail += a[i] * b[i];
    }
    let s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    s + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// AVX2+FMA dot product with four 8-lane accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats starting at `i`, and the loop
        // bounds keep `i + 8 ≤ n` for both slices.
        unsafe {
            while i + 32 <= n {
                for (k, a_k) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                    let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                    *a_k = _mm256_fmadd_ps(x, y, *a_k);
                }
                i += 32;
            }
            while i + 8 <= n {
                let x = _mm256_loadu_ps(pa.add(i));
                let y = _mm256_loadu_ps(pb.add(i));
                acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
                i += 8;
            }
        }
        let s01 = _mm256_add_ps(acc[0], acc[1]);
        let s23 = _mm256_add_ps(acc[2], acc[3]);
        let s = _mm256_add_ps(s01, s23);
        let hi = _mm256_extractf128_ps(s, 1);
        let lo = _mm256_castps256_ps128(s);
        let q = _mm_add_ps(lo, hi);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        let mut sum = _mm_cvtss_f32(q);
        while i < n {
            sum += a[i] * b[i];
            i += 1;
        }
        sum
    }
}
