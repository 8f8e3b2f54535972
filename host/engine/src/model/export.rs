//! A loaded model written as a Hugging Face directory: `config.json`,
//! `model.safetensors` (every tensor in F32, dequantised) and
//! `tokenizer.json`, for peers that read only that format (transformers,
//! benchmarked against Weft on the same weights).
//!
//! GGUF files store Llama's query and key rows permuted for llama.cpp's
//! adjacent-pair rotation; they are put back in Hugging Face's half-split
//! order, so the exported model computes the same function.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::View;
use serde_json::json;
use thiserror::Error;

use super::config::{RopeLayout, RopeScaling};
use super::weights::Weight;
use crate::loader::LoadedModel;

/// What can go wrong exporting.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Unsupported(String),
    #[error("writing safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error("writing tokenizer.json: {0}")]
    Tokenizer(String),
}

/// Write `loaded` into `dir` (created if missing) as a Hugging Face model.
pub fn export_hf<'a>(loaded: &'a LoadedModel, dir: &Path) -> Result<(), ExportError> {
    let model = &loaded.model;
    let c = &model.config;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ExportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let rope_scaling = match &c.rope_scaling {
        RopeScaling::None => None,
        RopeScaling::Linear { factor } => Some(json!({ "rope_type": "linear", "factor": factor })),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } => Some(json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_context,
        })),
        RopeScaling::FreqFactors(_) => {
            return Err(ExportError::Unsupported(
                "per-frequency RoPE factors (GGUF rope_freqs) have no config.json form".into(),
            ));
        }
    };
    if c.rope_dim != c.head_dim {
        return Err(ExportError::Unsupported(format!("partial RoPE ({} of {} dimensions)", c.rope_dim, c.head_dim)));
    }

    // Tensors, dequantised one at a time as the file is written; query and
    // key rows back in half-split order.
    let unpermute = c.rope_layout == RopeLayout::Interleaved;
    let matrix = |name: String, weight: &'a Weight, heads: Option<usize>| {
        let heads = heads.filter(|_| unpermute);
        (name, Tensor { shape: vec![weight.rows, weight.cols], values: Values::Matrix { weight, heads } })
    };
    let vector = |name: String, values: &'a [f32], heads: Option<usize>| {
        let heads = heads.filter(|_| unpermute);
        (name, Tensor { shape: vec![values.len()], values: Values::Vector { values, heads } })
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    tensors.push(matrix("model.embed_tokens.weight".into(), model.embedding(), None));
    let mut attention_bias = false;
    for (i, l) in model.layers().iter().enumerate() {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        tensors.push(matrix(p("self_attn.q_proj.weight"), &l.wq, Some(c.heads)));
        tensors.push(matrix(p("self_attn.k_proj.weight"), &l.wk, Some(c.kv_heads)));
        for (n, w) in [("self_attn.v_proj", &l.wv), ("self_attn.o_proj", &l.wo), ("mlp.gate_proj", &l.gate), ("mlp.up_proj", &l.up), ("mlp.down_proj", &l.down)] {
            tensors.push(matrix(p(&format!("{n}.weight")), w, None));
        }
        tensors.push(vector(p("input_layernorm.weight"), &l.attn_norm, None));
        tensors.push(vector(p("post_attention_layernorm.weight"), &l.ffn_norm, None));
        for (n, b, heads) in [("q", &l.bq, Some(c.heads)), ("k", &l.bk, Some(c.kv_heads)), ("v", &l.bv, None)] {
            if let Some(b) = b {
                attention_bias = true;
                tensors.push(vector(p(&format!("self_attn.{n}_proj.bias")), b, heads));
            }
        }
    }
    tensors.push(vector("model.norm.weight".into(), model.output_norm(), None));
    if !c.tie_embeddings {
        tensors.push(matrix("lm_head.weight".into(), model.output(), None));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), &dir.join("model.safetensors"))?;

    let tok = &loaded.tokenizer;
    let mut config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.context_length,
        "tie_word_embeddings": c.tie_embeddings,
        "attention_bias": attention_bias,
        "mlp_bias": false,
        "torch_dtype": "float32",
        "bos_token_id": tok.bos_token(),
        "eos_token_id": tok.eos_token(),
    });
    if let Some(s) = rope_scaling {
        config["rope_scaling"] = s;
    }
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON values serialise")).map_err(io(&path))?;
    tok.save_hf(&dir.join("tokenizer.json")).map_err(|e| ExportError::Tokenizer(e.to_string()))?;
    if let Some(t) = &loaded.template {
        let path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&json!({ "chat_template": t.source() })).expect("JSON values serialise");
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(())
}

/// One tensor of the export. Its bytes are made when the writer asks for
/// them, so an export holds a single tensor in F32 beside the loaded model
/// (an 8B model's F32 copy alone is 32 GB).
struct Tensor<'a> {
    shape: Vec<usize>,
    values: Values<'a>,
}

/// Where a tensor's values come from: a weight to dequantise or a vector
/// the model holds in F32; `heads` when its rows go back to half-split
/// order.
enum Values<'a> {
    Matrix { weight: &'a Weight, heads: Option<usize> },
    Vector { values: &'a [f32], heads: Option<usize> },
}

impl View for Tensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let values: Cow<'_, [f32]> = match self.values {
            Values::Matrix { weight, heads } => {
                let values = weight.to_f32();
                Cow::Owned(match heads {
                    Some(heads) => halves_from_pairs(&values, heads, weight.rows / heads, weight.cols),
                    None => values,
                })
            }
            Values::Vector { values, heads: Some(heads) } => Cow::Owned(halves_from_pairs(values, heads, values.len() / heads, 1)),
            Values::Vector { values, heads: None } => Cow::Borrowed(values),
        };
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * std::mem::size_of::<f32>()
    }
}

/// Undo llama.cpp's conversion permutation of a projection's rows: within
/// each head of `dim` rows, GGUF row `2b + a` is Hugging Face row
/// `a·dim/2 + b` (`cols` values per row).
fn halves_from_pairs(values: &[f32], heads: usize, dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for a in 0..2 {
            for b in 0..dim / 2 {
                let src = (h * dim + 2 * b + a) * cols;
                let dst = (h * dim + a * dim / 2 + b) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuting_inverts_llama_cpps_permutation() {
        // llama.cpp: reshape(heads, 2, dim/2, cols).swapaxes(1, 2): Hugging
        // Face row (h, a, b) becomes GGUF row (h, b, a).
        let (heads, dim, cols) = (3, 8, 2);
        let hf: Vec<f32> = (0..heads * dim * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for a in 0..2 {
                for b in 0..dim / 2 {
                    let from = (h * dim + a * dim / 2 + b) * cols;
                    let to = (h * dim + 2 * b + a) * cols;
                    gguf[to..to + cols].copy_from_slice(&hf[from..from + cols]);
                }
            }
        }
        assert_eq!(halves_from_pairs(&gguf, heads, dim, cols), hf);
    }
}
