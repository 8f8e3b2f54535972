//! Rotary position encoding (RoPE) with the common scaling variants.

use super::config::{ModelConfig, RopeLayout, RopeScaling};

/// Precomputed inverse frequencies for one model.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f64>,
    layout: RopeLayout,
    head_dim: usize,
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
        Self { inv_freq, layout: config.rope_layout, head_dim: config.head_dim }
    }

    /// Rotate every head in `x` (`heads × head_dim`) for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.inv_freq.len();
        let sin_cos: Vec<(f32, f32)> = self
            .inv_freq
            .iter()
            .map(|f| {
                let a = pos as f64 * f;
                (a.sin() as f32, a.cos() as f32)
            })
            .collect();
        for head in x.chunks_exact_mut(self.head_dim) {
            for (i, &(s, c)) in sin_cos.iter().enumerate() {
                let (a, b) = match self.layout {
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}
