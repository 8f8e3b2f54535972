//! Continuous batching on the GPU backend: prompts of different lengths,
//! chunked prefill and decode in the same steps, every sequence finishing
//! with its tokens and every KV block back in the pool; and greedy decoding
//! that follows the GPU's own teacher-forced argmax.

use std::sync::Arc;

use weft_engine::{Engine, EngineConfig, GenerationRequest};
use weft_types::{SamplingParams, StopReason};

use crate::common::{cuda, default_model, have_gpu};

fn gpu_engine(test: &str, max_batch_tokens: usize) -> Option<Engine> {
    if !have_gpu(test) {
        return None;
    }
    let m = default_model();
    let backend = cuda(test, &m.model, None)?;
    let mut config = EngineConfig::for_backend(&backend, 64 << 20);
    config.max_batch_tokens = max_batch_tokens;
    config.max_running = config.max_running.min(max_batch_tokens);
    Some(Engine::with_backend(Box::new(backend), Arc::clone(&m.tokenizer), config).unwrap())
}

const PROMPTS: [&str; 6] = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "List three colors:\n1.",
    "In 1969, the first humans",
    "To make a cup of tea, first",
];

#[test]
fn mixed_prefill_and_decode_batches_finish_and_free_every_block() {
    let Some(mut engine) = gpu_engine("engine::mixed", 40) else { return };
    let tok = &default_model().tokenizer;
    let mut ids = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let params = SamplingParams { temperature: 0.8, seed: i as u64, max_tokens: 24, ignore_eos: true, ..SamplingParams::default() };
        ids.push(engine.add_request(GenerationRequest::new(tok.encode(p, false).unwrap(), params)).unwrap());
    }
    let mut tokens = vec![0usize; ids.len()];
    let mut finished = vec![None; ids.len()];
    while engine.has_work() {
        for out in engine.step() {
            let i = ids.iter().position(|&id| id == out.id).unwrap();
            assert!(out.error.is_none(), "{:?}", out.error);
            tokens[i] += out.tokens.len();
            if out.finished.is_some() {
                finished[i] = out.finished;
            }
        }
    }
    assert!(tokens.iter().all(|&n| n == 24), "{tokens:?}");
    assert!(finished.iter().all(|f| *f == Some(StopReason::Length)), "{finished:?}");
    assert_eq!(engine.free_blocks(), engine.config().num_blocks);
}

#[test]
fn greedy_decoding_follows_the_teacher_forced_argmax() {
    let Some(mut engine) = gpu_engine("engine::greedy", 512) else { return };
    let tok = &default_model().tokenizer;
    let prompt = tok.encode(PROMPTS[2], false).unwrap();
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(16) };
    let id = engine.add_request(GenerationRequest::new(prompt.clone(), params)).unwrap();
    let mut generated = Vec::new();
    while engine.has_work() {
        for out in engine.step() {
            assert_eq!(out.id, id);
            generated.extend(out.tokens);
        }
    }
    assert_eq!(generated.len(), 16);

    // The prompt and its continuation scored in one prefill: position i's
    // argmax is the token decoding chose there (decode runs GEMV, this
    // prefill of > 32 tokens SGEMM, so a near tie may differ: allow one).
    let mut all = prompt.clone();
    all.extend(&generated);
    // Another tenant: no prefix-cache hit, every position computed and scored.
    let req = GenerationRequest {
        score_prompt: true,
        tenant: "teacher-forced".into(),
        ..GenerationRequest::new(all, SamplingParams::greedy(1))
    };
    let id = engine.add_request(req).unwrap();
    let mut scores = Vec::new();
    while engine.has_work() {
        for out in engine.step() {
            if out.id == id {
                scores.extend(out.prompt_scores);
            }
        }
    }
    let start = prompt.len() - 1;
    let differ = (0..generated.len()).filter(|&i| scores[start + i].argmax != generated[i]).count();
    println!("RESULT engine greedy-vs-teacher-forced differ={differ}/16");
    assert!(differ <= 1, "{differ} of 16 greedy tokens differ from the teacher-forced argmax");
}
