//! The default model on the GPU against the CPU backend, teacher-forced
//! over the committed public-domain text (15 chunks of 512 tokens, as the
//! CPU's perplexity test): argmax agreement at every position, and
//! perplexity. The bounds for the f16 cache (as the CPU's): at least
//! 99% agreement and perplexity within 1%. The FP8 cache's cost is measured
//! and bounded loosely (it is an opt-in trade of accuracy for memory).

use std::sync::{Arc, OnceLock};

use weft_backend_cuda::KvCacheType;
use weft_engine::perplexity::{chunk_scores, perplexity_of};
use weft_engine::{Engine, EngineConfig, PromptScore};

use crate::common::{cuda, default_model, have_gpu, repo_root, shared};

const CTX: usize = 512;

fn text_tokens() -> Vec<u32> {
    let text = std::fs::read_to_string(repo_root().join("tests/data/ppl-text.txt")).unwrap();
    default_model().tokenizer.encode(&text, false).unwrap()
}

/// Room for two chunks; a whole chunk in one step.
fn config() -> EngineConfig {
    let mut c = EngineConfig::for_model(&default_model().model, 1 << 20);
    c.num_blocks = 2 * CTX / c.block_size;
    c.max_batch_tokens = CTX;
    c
}

/// The CPU backend's scores and perplexity, computed once per binary.
fn cpu_reference() -> &'static (Vec<Vec<PromptScore>>, f64) {
    static CPU: OnceLock<(Vec<Vec<PromptScore>>, f64)> = OnceLock::new();
    CPU.get_or_init(|| {
        let m = default_model();
        let tokens = text_tokens();
        let mut engine = Engine::new(shared(m), Arc::clone(&m.tokenizer), config());
        let scores = chunk_scores(&mut engine, &tokens, CTX, None);
        let ppl = perplexity_of(&scores, CTX).value;
        (scores, ppl)
    })
}

fn check(test: &str, kv: Option<KvCacheType>, min_agreement: f64, max_ppl_change: f64) {
    if !have_gpu(test) {
        return;
    }
    let m = default_model();
    let Some(backend) = cuda(test, &m.model, kv) else { return };
    let mut engine = Engine::with_backend(Box::new(backend), Arc::clone(&m.tokenizer), config()).unwrap();
    let tokens = text_tokens();
    let gpu_scores = chunk_scores(&mut engine, &tokens, CTX, None);
    let gpu_ppl = perplexity_of(&gpu_scores, CTX).value;
    assert_eq!(engine.free_blocks(), engine.config().num_blocks, "every block returns to the pool");

    let (cpu_scores, cpu_ppl) = cpu_reference();
    assert_eq!(gpu_scores.len(), cpu_scores.len());
    let (mut same, mut total) = (0usize, 0usize);
    for (g, c) in gpu_scores.iter().zip(cpu_scores) {
        assert_eq!(g.len(), c.len());
        same += g.iter().zip(c).filter(|(a, b)| a.argmax == b.argmax).count();
        total += g.len();
    }
    let agreement = same as f64 / total as f64;
    let change = gpu_ppl / cpu_ppl - 1.0;
    println!(
        "RESULT parity kv={kv:?} agreement={:.2}% ({same}/{total}) ppl_gpu={gpu_ppl:.4} ppl_cpu={cpu_ppl:.4} change={:+.3}%",
        100.0 * agreement,
        100.0 * change
    );
    assert!(agreement >= min_agreement, "{test}: teacher-forced argmax agreement {agreement:.4} < {min_agreement}");
    assert!(change.abs() <= max_ppl_change, "{test}: perplexity {gpu_ppl:.4} vs the CPU's {cpu_ppl:.4}");
}

#[test]
fn the_default_model_with_an_f16_cache_agrees_with_the_cpu_backend() {
    check("parity::f16", None, 0.99, 0.01);
}

#[test]
fn the_default_model_with_an_fp8_cache_stays_close_to_the_cpu_backend() {
    check("parity::fp8", Some(KvCacheType::E4M3), 0.90, 0.05);
}
