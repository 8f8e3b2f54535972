//! A loaded model written as a Hugging Face directory: `config.json`,
//! `model.safetensors` (every tensor in F32, dequantised) and
//! `tokenizer.json`, for peers that read only that format (transformers,
//! benchmarked against Weft on the same weights).
//!
//! GGUF files store Llama's query and key rows permuted for llama.cpp's
//! adjacent-pair rotation; they are put back in Hugging Face's half-split
//! order, so the exported model computes the same function.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
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
pub fn export_hf(loaded: &LoadedModel, dir: &Path) -> Result<(), ExportError> {
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

    // Tensors, dequantised; query and key rows back in half-split order.
    let unpermute = c.rope_layout == RopeLayout::Interleaved;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let matrix = |name: String, w: &Weight, heads: Option<usize>| {
        let mut values = w.to_f32();
        if let (true, Some(heads)) = (unpermute, heads) {
            values = halves_from_pairs(&values, heads, w.rows / heads, w.cols);
        }
        (name, vec![w.rows, w.cols], values)
    };
    tensors.push(matrix("model.embed_tokens.weight".into(), model.embedding(), None));
    let mut attention_bias = false;
    for (i, l) in model.layers().iter().enumerate() {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        tensors.push(matrix(p("self_attn.q_proj.weight"), &l.wq, Some(c.heads)));
        tensors.push(matrix(p("self_attn.k_proj.weight"), &l.wk, Some(c.kv_heads)));
        for (n, w) in [("self_attn.v_proj", &l.wv), ("self_attn.o_proj", &l.wo), ("mlp.gate_proj", &l.gate), ("mlp.up_proj", &l.up), ("mlp.down_proj", &l.down)] {
            tensors.push(matrix(p(&format!("{n}.weight")), w, None));
        }
        tensors.push((p("input_layernorm.weight"), vec![c.hidden], l.attn_norm.clone()));
        tensors.push((p("post_attention_layernorm.weight"), vec![c.hidden], l.ffn_norm.clone()));
        for (n, b, heads) in [("q", &l.bq, c.heads), ("k", &l.bk, c.kv_heads), ("v", &l.bv, 0)] {
            if let Some(b) = b {
                attention_bias = true;
                let b = if unpermute && heads > 0 { halves_from_pairs(b, heads, b.len() / heads, 1) } else { b.clone() };
                tensors.push((p(&format!("self_attn.{n}_proj.bias")), vec![b.len()], b));
            }
        }
    }
    tensors.push(("model.norm.weight".into(), vec![c.hidden], model.output_norm().to_vec()));
    if !c.tie_embeddings {
        let out = model.output();
        tensors.push(("lm_head.weight".into(), vec![out.rows, out.cols], out.to_f32()));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| (name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &dir.join("model.safetensors"))?;

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
