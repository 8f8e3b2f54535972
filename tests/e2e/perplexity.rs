//! Perplexity on the committed public-domain text against llama.cpp's
//! figure for the same GGUF (22.4995 at context 512, 15 chunks; see
//! `tests/data/llamacpp/README.md` and `../shared/bench/REFERENCES.md`).

use weft_engine::perplexity::perplexity;
use weft_tests::{data, default_model, engine_with};

const LLAMA_CPP_PPL: f64 = 22.4995;

#[test]
fn perplexity_is_within_one_percent_of_llama_cpp() {
    let text = std::fs::read_to_string(data("ppl-text.txt")).unwrap();
    let tokens = default_model().tokenizer.encode(&text, false).unwrap();
    let mut engine = engine_with(512, 512);
    let ppl = perplexity(&mut engine, &tokens, 512, None);
    eprintln!("perplexity {:.4} over {} chunks ({} tokens scored); llama.cpp {LLAMA_CPP_PPL}", ppl.value, ppl.chunks, ppl.scored_tokens);
    assert_eq!(ppl.chunks, 15, "the text has {} tokens", tokens.len());
    let ratio = ppl.value / LLAMA_CPP_PPL;
    assert!((ratio - 1.0).abs() < 0.01, "perplexity {:.4} vs llama.cpp {LLAMA_CPP_PPL}", ppl.value);
}
