//! Plugins under the real runtime: the builtin sampler component, built
//! from source, chooses exactly the native sampler's tokens; and every kind
//! of misbehaving sampler fails only the requests that chose it, inside its
//! limits, while the rest of the batch goes on unharmed.

use std::time::{Duration, Instant};

use weft_engine::sampling::{HostRows, NativeSampler, synthetic_logits};
use weft_plugin_runtime::bindings::weft::plugin::types::ConfigValue;
use weft_plugin_runtime::{Limits, PluginError, PluginRuntime, WasmSampler};
use weft_tests::{default_model, engine_with, request, run_to_completion, tokens_of};
use weft_types::{LogitsRows, SampleRow, Sampler, SamplingParams, StopReason};

fn runtime() -> PluginRuntime {
    PluginRuntime::new(Limits::default()).expect("the plugin runtime starts")
}

fn builtin_sampler(rt: &PluginRuntime) -> WasmSampler {
    rt.load_sampler("builtin-sampler", weft_plugin_artifacts::SAMPLER).unwrap().sampler(Vec::new()).unwrap()
}

fn faulty(rt: &PluginRuntime, fault: &str) -> WasmSampler {
    let bytes = std::fs::read(weft_plugin_artifacts::FAULTY_SAMPLER_PATH).unwrap();
    let component = rt.load_sampler(&format!("faulty-{fault}"), &bytes).unwrap();
    component.sampler(vec![("fault".into(), ConfigValue::Text(fault.into()))]).unwrap()
}


fn param_grid() -> Vec<SamplingParams> {
    let base = SamplingParams::default();
    vec![
        SamplingParams { temperature: 0.0, ..base.clone() },
        SamplingParams { temperature: 1.0, ..base.clone() },
        SamplingParams { temperature: 0.7, top_k: 40, ..base.clone() },
        SamplingParams { temperature: 1.3, top_p: 0.9, ..base.clone() },
        SamplingParams { temperature: 0.9, min_p: 0.05, top_p: 0.95, ..base.clone() },
        SamplingParams { temperature: 1.0, presence_penalty: 0.8, frequency_penalty: 0.4, ..base.clone() },
        SamplingParams { temperature: 0.8, repetition_penalty: 1.3, ..base.clone() },
        SamplingParams { temperature: 0.0, logit_bias: vec![(3, 100.0)], ..base.clone() },
        SamplingParams { temperature: 1.0, ignore_eos: true, logit_bias: vec![(7, 5.0), (9, -100.0)], ..base.clone() },
        SamplingParams { temperature: 0.0, top_k: 1, ignore_eos: true, ..base },
    ]
}

#[test]
fn builtin_sampler_plugin_chooses_exactly_the_native_tokens() {
    let rt = runtime();
    let mut plugin = builtin_sampler(&rt);
    let mut native = NativeSampler;
    let eos = [0u32, 2];
    let grid = param_grid();
    for vocab in [257usize, 49_152] {
        for round in 0..if vocab > 1000 { 4 } else { 60 } {
            let rows_logits: Vec<Vec<f32>> = (0..grid.len()).map(|i| synthetic_logits((round * 100 + i) as u64, vocab)).collect();
            let params: Vec<SamplingParams> =
                grid.iter().enumerate().map(|(i, p)| SamplingParams { seed: (round * 31 + i) as u64, ..p.clone() }).collect();
            let history: Vec<u32> = (0..40).map(|i| (i * 7 % vocab) as u32).collect();
            // One step's rows, but the last one kept apart (as the engine
            // keeps a row for a late guide), and a guide's mask on row 1.
            let (step_rows, held_row) = rows_logits.split_at(grid.len() - 1);
            let step = HostRows::new(step_rows.concat(), vocab);
            let held = HostRows::one(held_row[0].clone());
            let mask: Vec<u32> = (0..vocab.div_ceil(32)).map(|w| 0x5555_5555u32.rotate_left(w as u32)).collect();
            let rows: Vec<SampleRow<'_>> = (0..grid.len())
                .map(|i| {
                    let (logits, row): (&dyn LogitsRows, usize) = if i + 1 < grid.len() { (&step, i) } else { (&held, 0) };
                    let mask = (i == 1).then_some(mask.as_slice());
                    SampleRow { logits, row, mask, params: &params[i], tokens: &history[..20 + i], prompt_len: 10 }
                })
                .collect();
            let ours = plugin.sample(&rows, &eos).unwrap();
            let reference = native.sample(&rows, &eos).unwrap();
            assert_eq!(ours, reference, "vocab {vocab}, round {round}");
        }
    }
    assert_eq!(plugin.health().faults(), 0);
}

#[test]
fn engine_with_the_plugin_sampler_generates_the_native_tokens() {
    let rt = runtime();
    let tk = &default_model().tokenizer;
    let prompts = ["The capital of France is", "Once upon a time", "def add(a, b):", "Water boils at"];
    let params = |i: usize| SamplingParams { temperature: 0.8, top_p: 0.95, seed: i as u64, max_tokens: 16, ignore_eos: true, ..Default::default() };
    let run = |plugin: bool| {
        let mut engine = engine_with(256, 512);
        if plugin {
            engine.set_sampler(Box::new(builtin_sampler(&rt)));
        }
        let ids: Vec<u64> =
            prompts.iter().enumerate().map(|(i, p)| engine.add_request(request(&tk.encode(p, false).unwrap(), params(i))).unwrap()).collect();
        let outputs = run_to_completion(&mut engine);
        assert_eq!(engine.stats().sampler_failures, 0);
        ids.iter().map(|&id| tokens_of(&outputs, id)).collect::<Vec<_>>()
    };
    assert_eq!(run(true), run(false));
}

/// A request on a faulty sampler and one on the default sampler, in the
/// same batch: the first fails with the fault, the second finishes with
/// the tokens it gets alone, and every block comes back.
fn assert_fault_is_isolated(fault: &str, expect: &str) {
    // Only the loop needs the real deadline; the other faults get a long
    // one, so a loaded machine cannot turn a memory bomb into an overrun.
    let limits = if fault == "loop" { Limits::default() } else { Limits { call_deadline: Duration::from_secs(5), ..Limits::default() } };
    let rt = PluginRuntime::new(limits.clone()).expect("the plugin runtime starts");
    let tk = &default_model().tokenizer;
    let prompt = tk.encode("The quick brown fox", false).unwrap();
    let greedy = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(12) };
    let alone = {
        let mut engine = engine_with(128, 512);
        let id = engine.add_request(request(&prompt, greedy.clone())).unwrap();
        tokens_of(&run_to_completion(&mut engine), id)
    };
    let mut engine = engine_with(128, 512);
    let bad = engine.add_sampler(Box::new(faulty(&rt, fault)));
    let victim = engine.add_request(weft_engine::GenerationRequest { sampler: bad, ..request(&prompt, greedy.clone()) }).unwrap();
    let bystander = engine.add_request(request(&prompt, greedy)).unwrap();
    let start = Instant::now();
    let outputs = run_to_completion(&mut engine);
    let failed: Vec<_> = outputs.iter().filter(|o| o.id == victim && o.finished.is_some()).collect();
    assert_eq!(failed.len(), 1, "{fault}: the victim finishes once");
    assert_eq!(failed[0].finished, Some(StopReason::Error), "{fault}");
    let message = failed[0].error.as_ref().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains(expect), "{fault}: {message:?} should say {expect:?}");
    assert_eq!(tokens_of(&outputs, bystander), alone, "{fault}: the other request is untouched");
    assert_eq!(engine.free_blocks(), engine.config().num_blocks, "{fault}: every block returns");
    assert_eq!(engine.stats().sampler_failures, 1, "{fault}");
    // Stopped within the deadline plus slack for a loaded 2-core machine
    // (the run includes prefill and a dozen steps on a shared pool).
    let budget = limits.call_deadline + Duration::from_secs(10);
    assert!(start.elapsed() < budget, "{fault}: took {:?}", start.elapsed());
}

#[test]
fn a_trapping_sampler_fails_only_its_request() {
    assert_fault_is_isolated("trap", "trapped");
}

#[test]
fn a_looping_sampler_is_stopped_at_its_deadline() {
    assert_fault_is_isolated("loop", "deadline");
}

#[test]
fn a_memory_bomb_is_capped_and_fails_only_its_request() {
    assert_fault_is_isolated("memory", "memory limit");
}

#[test]
fn a_stack_overflow_fails_only_its_request() {
    assert_fault_is_isolated("stack", "stack");
}

#[test]
fn an_out_of_range_token_is_rejected() {
    assert_fault_is_isolated("bad-token", "outside the vocabulary");
}

#[test]
fn a_wrong_number_of_tokens_is_rejected() {
    assert_fault_is_isolated("wrong-count", "tokens for 1 rows");
}

#[test]
fn a_batch_wide_call_naming_more_rows_than_the_batch_traps() {
    assert_fault_is_isolated("too-many-rows", "2 rows in one call; the batch has 1");
}

#[test]
fn a_sampler_that_edits_without_end_is_capped() {
    assert_fault_is_isolated("edit-flood", "edits to row 0 in one call");
}

#[test]
fn rows_edited_out_of_order_are_rebuilt_from_their_edits() {
    let rt = runtime();
    let mut sampler = faulty(&rt, "revisit");
    let logits: Vec<Vec<f32>> = (0..5).map(|i| synthetic_logits(40 + i, 49_152)).collect();
    let params = SamplingParams::default();
    let step = HostRows::new(logits.concat(), 49_152);
    let rows: Vec<SampleRow<'_>> =
        (0..5).map(|row| SampleRow { logits: &step, row, mask: None, params: &params, tokens: &[1, 2], prompt_len: 2 }).collect();
    let third = |row: &[f32]| {
        let mut ids: Vec<u32> = (0..row.len() as u32).collect();
        ids.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        ids[2]
    };
    for _ in 0..2 {
        let chosen = sampler.sample(&rows, &[]).unwrap();
        assert_eq!(chosen, logits.iter().map(|l| third(l)).collect::<Vec<_>>());
    }
    assert_eq!(sampler.health().faults(), 0);
}

#[test]
fn a_refusing_sampler_fails_only_its_request() {
    assert_fault_is_isolated("refuse", "refuses on purpose");
}

#[test]
fn a_faulted_instance_is_rebuilt_for_the_next_call() {
    let rt = runtime();
    let mut sampler = faulty(&rt, "trap");
    let step = HostRows::one(synthetic_logits(1, 64));
    let params = SamplingParams::default();
    let rows = [SampleRow { logits: &step, row: 0, mask: None, params: &params, tokens: &[1, 2], prompt_len: 2 }];
    for n in 1..=3 {
        assert!(sampler.sample(&rows, &[]).is_err());
        assert_eq!(sampler.health().faults(), n, "each call runs on a fresh instance and traps again");
    }
}

#[test]
fn bad_components_are_refused_at_load() {
    let rt = runtime();
    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert!(matches!(rt.load_sampler("random", &random), Err(PluginError::Compile { .. })));
    let small = PluginRuntime::new(Limits { component_bytes: 1024, ..Limits::default() }).unwrap();
    assert!(matches!(small.load_sampler("big", weft_plugin_artifacts::SAMPLER), Err(PluginError::TooLarge { .. })));
    // A compilation past its budget is refused on time (the guide takes
    // hundreds of milliseconds to compile).
    let hasty = PluginRuntime::new(Limits { compile_budget: std::time::Duration::from_millis(5), ..Limits::default() }).unwrap();
    let started = std::time::Instant::now();
    match hasty.load_guide("slow", weft_plugin_artifacts::GUIDE) {
        Err(PluginError::Compile { reason, .. }) => assert!(reason.contains("budget of 5 ms"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "{:?}", started.elapsed());
    let e = rt
        .load_sampler("faulty", &std::fs::read(weft_plugin_artifacts::FAULTY_SAMPLER_PATH).unwrap())
        .unwrap()
        .sampler(vec![("fault".into(), ConfigValue::Text("no-such-fault".into()))])
        .unwrap_err();
    assert!(matches!(e, PluginError::Refused { phase: "init", .. }), "{e}");
}

#[test]
fn compiled_components_are_cached_and_a_damaged_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect()
    };
    let cached = || PluginRuntime::new(Limits::default()).unwrap().with_cache(dir.path()).unwrap();
    let chooses_natively = |rt: &PluginRuntime| {
        let mut plugin = builtin_sampler(rt);
        let step = HostRows::one(synthetic_logits(3, 1000));
        let params = SamplingParams { temperature: 0.9, top_p: 0.9, seed: 11, ..SamplingParams::default() };
        let rows = [SampleRow { logits: &step, row: 0, mask: None, params: &params, tokens: &[1, 2, 3], prompt_len: 1 }];
        assert_eq!(plugin.sample(&rows, &[0]).unwrap(), NativeSampler.sample(&rows, &[0]).unwrap());
    };
    chooses_natively(&cached());
    let written = entries();
    assert_eq!(written.len(), 1, "one entry per component: {written:?}");
    // A new runtime (a restart) loads the entry and runs it.
    chooses_natively(&cached());
    assert_eq!(entries(), written);
    // An entry that no longer deserializes is compiled again and replaced.
    std::fs::write(&written[0], b"not machine code").unwrap();
    chooses_natively(&cached());
    let replaced = std::fs::read(&written[0]).unwrap();
    assert!(replaced.len() > 1000 && !replaced.starts_with(b"not machine code"), "the entry was rewritten");
}
