//! Rotary position encoding (RoPE) with the common scaling variants.

use weft_kernels_cpu::ops::rotate_pairs;

use super::config::{ModelConfig, Numerics, RopeLayout, RopeScaling};

/// Precomputed inverse frequencies for one model.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f64>,
    layout: RopeLayout,
    head_dim: usize,
    /// ggml's f32 angle recurrence, when the model follows llama.cpp.
    ggml: Option<GgmlAngles>,
}

/// ggml's way of computing rotation angles: `theta_i = pos · scale^i` by
/// repeated f32 multiplication, divided by per-frequency factors and
/// multiplied by the linear frequency scale, then `cosf`/`sinf`.
#[derive(Clone, Debug)]
struct GgmlAngles {
    theta_scale: f32,
    freq_scale: f32,
    freq_factors: Option<Vec<f32>>,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let d = config.rope_dim;
        let base = config.rope_theta as f64;
        let mut inv_freq: Vec<f64> = (0..d / 2).map(|i| base.powf(-((2 * i) as f64) / d as f64)).collect();
        match &config.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= *factor as f64),
            RopeScaling::FreqFactors(ff) => {
                for (f, &div) in inv_freq.iter_mut().zip(ff) {
                    *f /= div as f64;
                }
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } => {
                let (factor, low, high, ctx) =
                    (*factor as f64, *low_freq_factor as f64, *high_freq_factor as f64, *original_context as f64);
                let low_wavelen = ctx / low;
                let high_wavelen = ctx / high;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    *f = if wavelen < high_wavelen {
                        *f
                    } else if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        let smooth = (ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * *f / factor + smooth * *f
                    };
                }
            }
        }
        let ggml = (config.numerics == Numerics::LlamaCpp).then(|| GgmlAngles {
            theta_scale: (config.rope_theta).powf(-2.0 / d as f32),
            freq_scale: match config.rope_scaling {
                RopeScaling::Linear { factor } => 1.0 / factor,
                _ => 1.0,
            },
            freq_factors: match &config.rope_scaling {
                RopeScaling::FreqFactors(ff) => Some(ff.clone()),
                _ => None,
            },
        });
        Self { inv_freq, layout: config.rope_layout, head_dim: config.head_dim, ggml }
    }

    /// Inverse frequencies with every scaling applied (angle = pos × f).
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    pub fn layout(&self) -> RopeLayout {
        self.layout
    }

    /// `(sin, cos)` of every rotation angle at `pos`; compute once per token
    /// and pass to [`Rope::rotate`] for every layer and head.
    pub fn angles(&self, pos: usize) -> Vec<(f32, f32)> {
        match &self.ggml {
            Some(g) => {
                let mut theta = pos as f32;
                (0..self.inv_freq.len())
                    .map(|i| {
                        let extrap = match &g.freq_factors {
                            Some(ff) => theta / ff[i],
                            None => theta,
                        };
                        let angle = g.freq_scale * extrap;
                        theta *= g.theta_scale;
                        (angle.sin(), angle.cos())
                    })
                    .collect()
            }
            None => self
                .inv_freq
                .iter()
                .map(|f| {
                    let a = pos as f64 * f;
                    (a.sin() as f32, a.cos() as f32)
                })
                .collect(),
        }
    }

    /// Rotate every head in `x` (`heads × head_dim`) by precomputed
    /// [`Rope::angles`].
    pub fn rotate(&self, x: &mut [f32], sin_cos: &[(f32, f32)]) {
        let interleaved = self.layout == RopeLayout::Interleaved;
        for head in x.chunks_exact_mut(self.head_dim) {
            rotate_pairs(head, sin_cos, interleaved);
        }
    }
}
