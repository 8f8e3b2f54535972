//! Tiny Hugging Face Llamas (GQA, RoPE scaling, F32/BF16/F16 storage) on the
//! GPU against transformers' float32 logits: the committed references
//! (computed on a CPU), or with `$WEFT_HF_REFERENCES` a directory of
//! references that `scripts/gpu/hf_references.py` computed with
//! transformers on the same GPU.

use std::path::PathBuf;

use safetensors::SafeTensors;
use weft_engine::model::llama::Naming;
use weft_engine::model::weights::SafetensorsDir;
use weft_engine::model::{LlamaModel, ModelConfig};

use crate::common::{all_logits, cuda, relative_error, repo_root};

/// `tol`: 1e-4 where every product is in f32; 1e-2 (the bound for 16-bit
/// operands) where the 40-token prompt's linear layers run on GemmEx with
/// activations rounded to the weights' BF16/F16.
fn check(name: &str, tol: f64) {
    let test = format!("transformers::{name}");
    let dir = repo_root().join("tests/data/hf-tiny").join(name);
    let config = ModelConfig::from_hf_config(&dir.join("config.json")).unwrap();
    let weights = SafetensorsDir::open(&dir).unwrap();
    let model = LlamaModel::load(config, &weights, Naming::HuggingFace).unwrap();
    let Some(mut backend) = cuda(&test, &model, None) else { return };

    let references = std::env::var_os("WEFT_HF_REFERENCES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tests/data/hf-tiny"));
    let bytes = std::fs::read(references.join(format!("{name}.reference.safetensors"))).unwrap();
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u32> = reference
        .tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let expected: Vec<f32> =
        reference.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();

    let got = all_logits(&mut backend, &ids);
    let rel = relative_error(&got, &expected);
    println!("RESULT kernel=model case=hf-tiny/{name} rel_err={rel:.3e} tol={tol:.0e} ({})", references.display());
    assert!(rel < tol, "{name}: relative error {rel:e} against transformers");
}

#[test]
fn gqa_f32_llama_matches_transformers() {
    check("gqa-f32", 1e-4);
}

#[test]
fn bf16_llama_with_llama3_rope_scaling_and_tied_embeddings_matches_transformers() {
    check("gqa-llama3-rope-bf16", 1e-2);
}

#[test]
fn f16_mha_llama_with_linear_rope_scaling_matches_transformers() {
    check("mha-linear-rope-f16", 1e-2);
}
