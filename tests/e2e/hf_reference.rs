//! The safetensors path against Hugging Face transformers: tiny random
//! Llamas (GQA, RoPE scaling on and off, F32/BF16/F16 storage) whose
//! reference logits were computed by `scripts/fixtures/make_hf_tiny_llamas.py`.

use safetensors::SafeTensors;
use weft_engine::model::llama::Naming;
use weft_engine::model::weights::SafetensorsDir;
use weft_engine::model::{LlamaModel, ModelConfig};
use weft_tests::{all_logits, data};

fn check(name: &str) {
    let dir = data(&format!("hf-tiny/{name}"));
    let config = ModelConfig::from_hf_config(&dir.join("config.json")).unwrap();
    let weights = SafetensorsDir::open(&dir).unwrap();
    let model = LlamaModel::load(config, &weights, Naming::HuggingFace).unwrap();

    let reference = std::fs::read(data(&format!("hf-tiny/{name}.reference.safetensors"))).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let ids: Vec<u32> = reference
        .tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let expected: Vec<f32> =
        reference.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();

    let got = all_logits(&model, &ids);
    assert_eq!(got.len(), expected.len());
    let diff: f64 = got.iter().zip(&expected).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = expected.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    let rel = diff / norm;
    assert!(rel < 1e-4, "{name}: relative error {rel:e} against transformers");
}

#[test]
fn gqa_f32_llama_matches_transformers() {
    check("gqa-f32");
}

#[test]
fn bf16_llama_with_llama3_rope_scaling_and_tied_embeddings_matches_transformers() {
    check("gqa-llama3-rope-bf16");
}

#[test]
fn f16_mha_llama_with_linear_rope_scaling_matches_transformers() {
    check("mha-linear-rope-f16");
}

#[test]
fn a_hugging_face_directory_loads_whole_and_greedy_decoding_follows_transformers() {
    use std::sync::Arc;
    use weft_engine::{Engine, EngineConfig, LoadedModel};
    use weft_tests::{request, run_to_completion, tokens_of};
    use weft_types::SamplingParams;

    let dir = data("hf-tiny/gqa-f32");
    let loaded = LoadedModel::open(&dir).unwrap();
    assert_eq!(loaded.tokenizer.encode("hello the world", false).unwrap(), [298, 261, 297]);
    let reference = std::fs::read(data("hf-tiny/gqa-f32.reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let ids: Vec<u32> =
        reference.tensor("input_ids").unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    let logits: Vec<f32> =
        reference.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let vocab = loaded.model.config.vocab_size;
    // The token transformers ranks first after the first 20 input ids.
    let row = &logits[19 * vocab..20 * vocab];
    let expected = weft_engine::sampling::argmax(row);

    let config = EngineConfig::for_model(&loaded.model, 1 << 20);
    let mut engine = Engine::new(Arc::clone(&loaded.model), Arc::clone(&loaded.tokenizer), config);
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(3) };
    let id = engine.add_request(request(&ids[..20], params)).unwrap();
    let generated = tokens_of(&run_to_completion(&mut engine), id);
    assert_eq!(generated.len(), 3);
    assert_eq!(generated[0], expected);
}
