//! Models of a real shape with random BF16 weights, for benchmarks on
//! hardware where the real checkpoint is not at hand (speed depends on the
//! shape and the storage format, not on the values).
//!
//! Matrices are uniform in ±sqrt(3 / cols) (unit-variance outputs for
//! unit-variance inputs, so activations stay in range through the layers);
//! norm weights are 1. Everything lives in one anonymous memory map filled
//! in parallel, so a Llama-3-8B shape (16 GB) takes seconds.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use half::bf16;
use memmap2::MmapMut;
use weft_kernels_cpu::WeightType;

use super::config::{ModelConfig, Numerics, RopeLayout, RopeScaling};
use super::llama::{LlamaModel, Naming};
use super::weights::{Weight, WeightSource};
use super::ModelError;

/// The shapes `weft bench --synthetic` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Meta's Llama 3 8B: 32 layers, hidden 4096, GQA 32/8, FFN 14336,
    /// vocabulary 128256, untied output.
    Llama3_8b,
    /// The default model's shape (SmolLM2-135M), in BF16.
    Smollm2_135m,
    /// Two small layers, for tests.
    Tiny,
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "llama3-8b" => Ok(Shape::Llama3_8b),
            "smollm2-135m" => Ok(Shape::Smollm2_135m),
            "tiny" => Ok(Shape::Tiny),
            _ => Err(format!("unknown shape {s:?}: use llama3-8b, smollm2-135m or tiny")),
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Shape::Llama3_8b => "llama3-8b",
            Shape::Smollm2_135m => "smollm2-135m",
            Shape::Tiny => "tiny",
        })
    }
}

impl Shape {
    pub fn config(self) -> ModelConfig {
        // (vocab, hidden, layers, heads, kv heads, head_dim, ffn, theta, tied)
        let (vocab_size, hidden, layers, heads, kv_heads, head_dim, ffn, rope_theta, tie_embeddings) = match self {
            Shape::Llama3_8b => (128_256, 4096, 32, 32, 8, 128, 14_336, 500_000.0, false),
            Shape::Smollm2_135m => (49_152, 576, 30, 9, 3, 64, 1536, 100_000.0, true),
            Shape::Tiny => (512, 128, 2, 4, 2, 32, 256, 10_000.0, false),
        };
        ModelConfig {
            architecture: "llama".into(),
            vocab_size,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            ffn,
            rms_eps: 1e-5,
            rope_theta,
            rope_dim: head_dim,
            rope_layout: RopeLayout::Halves,
            rope_scaling: RopeScaling::None,
            context_length: 8192,
            tie_embeddings,
            numerics: Numerics::LlamaCpp,
        }
    }
}

/// Every tensor of `config` (Hugging Face names), as (name, rows, cols, amplitude);
/// amplitude 0 means "all ones" (norm weights).
fn tensors(c: &ModelConfig) -> Vec<(String, usize, usize, f32)> {
    let uniform = |cols: usize| (3.0 / cols as f32).sqrt();
    let mut t = vec![("model.embed_tokens.weight".to_string(), c.vocab_size, c.hidden, 1.0)];
    for i in 0..c.layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        t.push((p("input_layernorm.weight"), 1, c.hidden, 0.0));
        t.push((p("self_attn.q_proj.weight"), c.q_dim(), c.hidden, uniform(c.hidden)));
        t.push((p("self_attn.k_proj.weight"), c.kv_dim(), c.hidden, uniform(c.hidden)));
        t.push((p("self_attn.v_proj.weight"), c.kv_dim(), c.hidden, uniform(c.hidden)));
        t.push((p("self_attn.o_proj.weight"), c.hidden, c.q_dim(), uniform(c.q_dim())));
        t.push((p("post_attention_layernorm.weight"), 1, c.hidden, 0.0));
        t.push((p("mlp.gate_proj.weight"), c.ffn, c.hidden, uniform(c.hidden)));
        t.push((p("mlp.up_proj.weight"), c.ffn, c.hidden, uniform(c.hidden)));
        t.push((p("mlp.down_proj.weight"), c.hidden, c.ffn, uniform(c.ffn)));
    }
    t.push(("model.norm.weight".into(), 1, c.hidden, 0.0));
    if !c.tie_embeddings {
        t.push(("lm_head.weight".into(), c.vocab_size, c.hidden, uniform(c.hidden)));
    }
    t
}

/// Random BF16 tensors in one anonymous map.
struct RandomWeights {
    map: Arc<memmap2::Mmap>,
    index: HashMap<String, (usize, usize, Range<usize>)>,
}

impl WeightSource for RandomWeights {
    fn get(&self, name: &str) -> Result<Option<Weight>, ModelError> {
        Ok(self.index.get(name).map(|(rows, cols, range)| {
            Weight::mapped(name, WeightType::BF16, *rows, *cols, self.map.clone(), range.clone())
        }))
    }
}

/// A model of `shape` with random weights drawn from `seed`.
pub fn random_model(shape: Shape, seed: u64) -> Result<LlamaModel, ModelError> {
    let config = shape.config();
    let list = tensors(&config);
    let total: usize = list.iter().map(|(_, r, c, _)| r * c * 2).sum();
    let mut map = MmapMut::map_anon(total).map_err(|source| ModelError::Io { path: "<anonymous map>".into(), source })?;
    let mut index = HashMap::new();
    let mut jobs = Vec::new();
    let mut rest: &mut [u8] = &mut map;
    let mut offset = 0;
    for (i, (name, rows, cols, amplitude)) in list.iter().enumerate() {
        let len = rows * cols * 2;
        let (tensor, tail) = rest.split_at_mut(len);
        rest = tail;
        index.insert(name.clone(), (*rows, *cols, offset..offset + len));
        offset += len;
        // Pieces of at most 64 MiB, so the big tensors spread over threads.
        for (j, piece) in tensor.chunks_mut(64 << 20).enumerate() {
            jobs.push((piece, *amplitude, seed ^ ((i as u64) << 32 | j as u64)));
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queue = std::sync::Mutex::new(jobs);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some((piece, amplitude, seed)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                    fill(piece, amplitude, seed);
                }
            });
        }
    });
    let map = Arc::new(map.make_read_only().map_err(|source| ModelError::Io { path: "<anonymous map>".into(), source })?);
    LlamaModel::load(config, &RandomWeights { map, index }, Naming::HuggingFace)
}

/// BF16 values uniform in ±amplitude (ones when amplitude is 0).
fn fill(bytes: &mut [u8], amplitude: f32, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for v in bytes.chunks_exact_mut(2) {
        let x = if amplitude == 0.0 {
            1.0
        } else {
            // xorshift64*: 24 random bits to [-1, 1).
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u32 << 23) as f32 - 1.0;
            r * amplitude
        };
        v.copy_from_slice(&bf16::from_f32(x).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_random_model_loads_and_runs() {
        let model = random_model(Shape::Tiny, 1).unwrap();
        let c = &model.config;
        let mut kv = crate::kv_cache::KvStorage::new(c.layers, 2, 16, c.kv_dim(), c.kv_precision());
        let table = [0u32, 1];
        let batch = super::super::ForwardBatch {
            tokens: (0..20).map(|pos| super::super::BatchToken { token: (pos * 7 % 512) as u32, pos, seq: 0, logits: pos == 19 }).collect(),
            block_tables: vec![&table],
        };
        let logits = model.forward(&batch, &mut kv);
        assert_eq!(logits.len(), c.vocab_size);
        assert!(logits.iter().all(|v| v.is_finite()));
        // Random weights give a spread of logits, not a constant row.
        let (min, max) = logits.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(max - min > 0.1, "logits span {min}..{max}");
        // The same seed gives the same model; another seed another.
        let again = random_model(Shape::Tiny, 1).unwrap();
        let other = random_model(Shape::Tiny, 2).unwrap();
        assert_eq!(again.embedding().bytes(), model.embedding().bytes());
        assert_ne!(other.embedding().bytes(), model.embedding().bytes());
    }
}
