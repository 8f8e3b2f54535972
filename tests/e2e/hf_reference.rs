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

#[test]
fn the_default_model_exported_as_a_hugging_face_directory_computes_what_its_gguf_does() {
    use weft_engine::LoadedModel;
    use weft_engine::model::export::export_hf;
    use weft_tests::default_model;

    let dir = tempfile::tempdir().unwrap();
    let gguf = default_model();
    export_hf(gguf, dir.path()).unwrap();
    let hf = LoadedModel::open(dir.path()).unwrap();
    assert_eq!(hf.model.config.vocab_size, gguf.model.config.vocab_size);

    // The same tokens from the exported tokenizer.json.
    let text = std::fs::read_to_string(data("ppl-text.txt")).unwrap();
    let text = &text[..text.char_indices().nth(3000).unwrap().0];
    let ids = gguf.tokenizer.encode(text, false).unwrap();
    assert_eq!(hf.tokenizer.encode(text, false).unwrap(), ids);

    // The same function. The GGUF path computes as llama.cpp does
    // (activations rounded to 8 bits for the quantised products, an f16
    // cache, pair rotation); the safetensors path in f32 with Hugging Face's
    // rotation order. So tokens agree about as often as llama.cpp's own two
    // attention paths do (95.6%, tests/data/llamacpp/README.md), while a
    // wrong permutation or setting would leave little agreement; and
    // perplexity over the text's first chunks is within 1%.
    let ids = &ids[..256];
    let (a, b) = (all_logits(&gguf.model, ids), all_logits(&hf.model, ids));
    let vocab = gguf.model.config.vocab_size;
    let argmax = |l: &[f32]| weft_engine::sampling::argmax(l);
    let same = a.chunks_exact(vocab).zip(b.chunks_exact(vocab)).filter(|(x, y)| argmax(x) == argmax(y)).count();
    let all = gguf.tokenizer.encode(&std::fs::read_to_string(data("ppl-text.txt")).unwrap(), false).unwrap();
    let ppl = |m: &LoadedModel| {
        let config = weft_engine::EngineConfig::for_model(&m.model, 64 << 20);
        let mut engine = weft_engine::Engine::new(m.model.clone(), m.tokenizer.clone(), config);
        weft_engine::perplexity::perplexity(&mut engine, &all, 512, Some(4)).value
    };
    let (p_gguf, p_hf) = (ppl(gguf), ppl(&hf));
    eprintln!("exported vs GGUF: argmax {same}/256 agree; perplexity {p_hf:.4} vs {p_gguf:.4}");
    assert!(same >= 230, "{same}/256 argmax agree");
    assert!((p_hf / p_gguf - 1.0).abs() < 0.01, "perplexity {p_hf:.4} vs {p_gguf:.4}");
}
