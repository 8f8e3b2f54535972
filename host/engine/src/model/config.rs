//! Model hyper-parameters, read from GGUF metadata or a Hugging Face
//! `config.json`.

use std::path::Path;

use serde_json::Value as Json;

use super::ModelError;
use crate::kv_cache::KvPrecision;
use crate::gguf::GgufFile;

/// How query/key dimensions are paired for rotary encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(x[2i], x[2i+1])`: llama.cpp's "normal" mode, used by
    /// GGUF Llama files (the converter permutes Q/K weights into it).
    Interleaved,
    /// Halves `(x[i], x[i + d/2])`: Hugging Face's layout ("neox" in llama.cpp).
    Halves,
}

/// Context-extension schemes applied to the rotary frequencies.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3's band-wise frequency scaling.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_context: f32 },
    /// Per-frequency divisors stored in the file (GGUF `rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Dimensions of each head that are rotated (≤ `head_dim`).
    pub rope_dim: usize,
    pub rope_layout: RopeLayout,
    pub rope_scaling: RopeScaling,
    pub context_length: usize,
    pub tie_embeddings: bool,
    /// Whose arithmetic the forward pass reproduces: llama.cpp's for GGUF
    /// models (checked against llama.cpp), plain float32 for safetensors
    /// models (checked against transformers).
    pub numerics: Numerics,
}

/// The reference implementation whose rounding a model's forward pass
/// follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numerics {
    /// llama.cpp's CPU path: f16 KV cache with flash-attention roundings,
    /// RoPE angles in f32 as ggml computes them.
    LlamaCpp,
    /// Float32 everywhere (f64 where it is free), as transformers computes.
    Float32,
}

impl ModelConfig {
    /// How the KV cache stores keys and values.
    pub fn kv_precision(&self) -> KvPrecision {
        match self.numerics {
            Numerics::LlamaCpp => KvPrecision::F16,
            Numerics::Float32 => KvPrecision::F32,
        }
    }
}

impl ModelConfig {
    /// Width of the query projection (`heads × head_dim`).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the key/value projections (`kv_heads × head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Check the numbers fit together, so the forward pass can index freely.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (self.hidden > 0 && self.layers > 0 && self.heads > 0 && self.kv_heads > 0, "zero-sized dimension"),
            (self.heads % self.kv_heads == 0, "head count is not a multiple of the key/value head count"),
            (self.rope_dim <= self.head_dim && self.rope_dim % 2 == 0, "rotary dimension must be even and ≤ head_dim"),
            (self.head_dim % 2 == 0, "head_dim must be even"),
            (self.vocab_size > 0, "empty vocabulary"),
            (self.rms_eps.is_finite() && self.rms_eps > 0.0, "rms epsilon must be positive"),
            (self.rope_theta.is_finite() && self.rope_theta > 0.0, "rope theta must be positive"),
            (self.hidden <= 1 << 16 && self.ffn <= 1 << 18 && self.layers <= 1024, "dimensions out of range"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(why.to_string()),
            None => Ok(()),
        }
    }

    /// Read the configuration of a GGUF model.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch = file.str("general.architecture")?.to_string();
        let layout = match arch.as_str() {
            "llama" | "mistral" | "granite" => RopeLayout::Interleaved,
            "qwen2" | "qwen3" => RopeLayout::Halves,
            other => return Err(ModelError::Unsupported(format!("architecture {other:?} (supported: llama, mistral, qwen2)"))),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = file.u64(&key("embedding_length"))? as usize;
        let heads = file.u64(&key("attention.head_count"))? as usize;
        let kv_heads = file.u64(&key("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads);
        let head_dim = match file.u64(&key("attention.key_length")) {
            Ok(v) => v as usize,
            Err(_) if heads > 0 => hidden / heads,
            Err(e) => return Err(e.into()),
        };
        let vocab_size = match file.u64(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => file.array("tokenizer.ggml.tokens")?.len(),
        };
        let scaling = match file.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            Some("linear") => RopeScaling::Linear { factor: file.f64(&key("rope.scaling.factor"))? as f32 },
            Some("none") | None => RopeScaling::None,
            Some(other) => return Err(ModelError::Unsupported(format!("rope scaling {other:?}"))),
        };
        let config = ModelConfig {
            vocab_size,
            hidden,
            layers: file.u64(&key("block_count"))? as usize,
            heads,
            kv_heads,
            head_dim,
            ffn: file.u64(&key("feed_forward_length"))? as usize,
            rms_eps: file.f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            rope_theta: file.f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            rope_dim: file.u64(&key("rope.dimension_count")).map(|v| v as usize).unwrap_or(head_dim),
            rope_layout: layout,
            rope_scaling: scaling,
            context_length: file.u64(&key("context_length")).unwrap_or(2048) as usize,
            tie_embeddings: file.tensor("output.weight").is_none(),
            numerics: Numerics::LlamaCpp,
            architecture: arch,
        };
        config.validate().map_err(|reason| ModelError::Config { path: file.path().to_path_buf(), reason })?;
        Ok(config)
    }

    /// Read a Hugging Face `config.json` (Llama, Mistral or Qwen2).
    pub fn from_hf_config(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let bad = |reason: String| ModelError::Config { path: path.to_path_buf(), reason };
        let json: Json = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let usize_of = |k: &str| -> Result<usize, ModelError> {
            json.get(k).and_then(Json::as_u64).map(|v| v as usize).ok_or_else(|| bad(format!("missing integer {k:?}")))
        };
        let arch = json.get("model_type").and_then(Json::as_str).unwrap_or("llama").to_string();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(ModelError::Unsupported(format!("model_type {arch:?} (supported: llama, mistral, qwen2)")));
        }
        let hidden = usize_of("hidden_size")?;
        let heads = usize_of("num_attention_heads")?;
        let head_dim = json.get("head_dim").and_then(Json::as_u64).map(|v| v as usize).unwrap_or(hidden / heads.max(1));
        // transformers ≥ 5 nests rope settings in `rope_parameters`; older
        // configs use `rope_theta` and `rope_scaling` at the top level.
        let rope = json.get("rope_parameters").filter(|v| v.is_object());
        let theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| json.get("rope_theta"))
            .and_then(Json::as_f64)
            .unwrap_or(10_000.0);
        let scaling_json = rope.or_else(|| json.get("rope_scaling").filter(|v| v.is_object()));
        let scaling = match scaling_json {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Json::as_str).unwrap_or("default");
                let f = |k: &str| s.get(k).and_then(Json::as_f64).map(|v| v as f32);
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: f("factor").ok_or_else(|| bad("linear rope scaling needs a factor".into()))? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor").ok_or_else(|| bad("llama3 rope scaling needs a factor".into()))?,
                        low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
                        original_context: f("original_max_position_embeddings").unwrap_or(8192.0),
                    },
                    other => return Err(ModelError::Unsupported(format!("rope scaling {other:?}"))),
                }
            }
        };
        let config = ModelConfig {
            vocab_size: usize_of("vocab_size")?,
            hidden,
            layers: usize_of("num_hidden_layers")?,
            heads,
            kv_heads: json.get("num_key_value_heads").and_then(Json::as_u64).map(|v| v as usize).unwrap_or(heads),
            head_dim,
            ffn: usize_of("intermediate_size")?,
            rms_eps: json.get("rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-6) as f32,
            rope_theta: theta as f32,
            rope_dim: head_dim,
            rope_layout: RopeLayout::Halves,
            rope_scaling: scaling,
            context_length: usize_of("max_position_embeddings").unwrap_or(2048),
            tie_embeddings: json.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false),
            numerics: Numerics::Float32,
            architecture: arch,
        };
        config.validate().map_err(bad)?;
        Ok(config)
    }
}
