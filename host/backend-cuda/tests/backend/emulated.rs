//! The choice kernel (`choose_rows` in kernels/cuda/src/kernels/choose.cu)
//! compiled as C++ and run on CPU threads (kernels/cuda/emulator/block.h:
//! one thread per CUDA thread, barriers and warp shuffles emulated),
//! against the host's choices. It checks the kernel's logic where there is
//! no GPU: radix cuts, ties, the scans and the draw; not the GPU's memory
//! model or speed, which the `sampling` tests check on a GPU. Skips (saying
//! why) where no C++20 compiler answers to `c++`; scripts/test.sh installs
//! one.

use std::io::Write;
use std::process::{Command, Stdio};

use weft_engine::sampling::{HostRows, nucleus, param_edits, synthetic_logits, uniform};
use weft_types::logits::{apply_edits, apply_mask};
use weft_types::{Cuts, LogitsRows, Pick, SamplingParams, TokenId};

use crate::common::CUTS;

const SOURCES: [(&str, &str); 4] = [
    ("block.h", include_str!("../../../../kernels/cuda/emulator/block.h")),
    ("choose_rows.cpp", include_str!("../../../../kernels/cuda/emulator/choose_rows.cpp")),
    ("choose.cu", include_str!("../../../../kernels/cuda/src/kernels/choose.cu")),
    ("common.cuh", include_str!("../../../../kernels/cuda/src/kernels/common.cuh")),
];

/// Threads per emulated block: 8 warps (the GPU runs 32), enough for every
/// cross-warp path of the scans, and 4× fewer OS threads.
const THREADS: u32 = 256;

/// The kernel compiled for this machine's CPU, or None where there is no
/// C++20 compiler.
fn build() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in SOURCES {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let exe = dir.path().join("choose_rows");
    let compiled = Command::new("c++")
        .args(["-std=c++20", "-O2", "-ffp-contract=off", "-pthread", "-w", &format!("-DTHREADS={THREADS}"), "-o"])
        .arg(&exe)
        .arg(dir.path().join("choose_rows.cpp"))
        .output();
    match compiled {
        Ok(out) if out.status.success() => Some((dir, exe)),
        Ok(out) => panic!("the emulated kernel does not compile:\n{}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            eprintln!("skipping emulated::choose_rows: no C++ compiler (`c++`: {e})");
            None
        }
    }
}

/// `choose_rows` over `rows` (prepared rows of `vocab`) for `picks` (no
/// masks or edits: the rows carry them).
fn run(exe: &std::path::Path, rows: &[f32], vocab: usize, picks: &[Pick<'_>]) -> Vec<TokenId> {
    let mut input = Vec::new();
    for v in [(rows.len() / vocab) as u32, vocab as u32, picks.len() as u32] {
        input.extend(v.to_le_bytes());
    }
    input.extend(rows.iter().flat_map(|v| v.to_le_bytes()));
    for p in picks {
        input.extend(p.cuts.temperature.to_le_bytes());
        input.extend(p.cuts.top_k.to_le_bytes());
        input.extend(p.cuts.top_p.to_le_bytes());
        input.extend(p.cuts.min_p.to_le_bytes());
        input.extend(p.uniform.to_le_bytes());
        input.extend((p.row as u32).to_le_bytes());
    }
    let mut child = Command::new(exe).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn the_choice_kernel_on_cpu_threads_chooses_the_hosts_tokens() {
    let Some((_dir, exe)) = build() else { return };
    // Rows of every kind the cuts meet: plain, few distinct values with
    // zeros of both signs (ties at every boundary), peaked, mostly banned,
    // and one masked and edited as a guide and penalties would.
    let vocab = 4099;
    let history: Vec<TokenId> = (0..60).map(|i| (i * 37 % vocab) as TokenId).collect();
    let params = SamplingParams { repetition_penalty: 1.3, presence_penalty: 0.4, frequency_penalty: 0.2, logit_bias: vec![(5, 3.0)], ..SamplingParams::default() };
    let edits = param_edits(&params, &history, 20, &[2], vocab);
    let mask: Vec<u32> = (0..vocab.div_ceil(32)).map(|w| 0x0f0f_0f0fu32.rotate_left(w as u32)).collect();
    let mut rows = Vec::new();
    for kind in 0..5u64 {
        let mut row = synthetic_logits(kind + 11, vocab);
        match kind {
            1 => row.iter_mut().enumerate().for_each(|(i, l)| {
                let v = (*l * 2.0).round() / 2.0;
                *l = if v == 0.0 && i % 2 == 1 { -0.0 } else { v };
            }),
            2 => row.iter_mut().for_each(|l| *l *= 3.0),
            3 => row.iter_mut().enumerate().filter(|(i, _)| i % 3 != 0).for_each(|(_, l)| *l = f32::NEG_INFINITY),
            4 => {
                apply_mask(&mut row, &mask);
                apply_edits(&mut row, &edits);
            }
            _ => {}
        }
        rows.extend(row);
    }
    let host = HostRows::new(rows.clone(), vocab);
    let mut picks = Vec::new();
    for row in 0..host.len() {
        for &(temperature, top_k, top_p, min_p) in &CUTS {
            for draw in 0..4u64 {
                let cuts = Cuts { temperature, top_k, top_p, min_p };
                picks.push(Pick { row, mask: None, edits: &[], cuts, uniform: uniform(row as u64 + 3, draw) });
            }
        }
    }
    let ours = run(&exe, &rows, vocab, &picks);
    assert_eq!(run(&exe, &rows, vocab, &picks), ours, "the same picks give the same tokens");
    let reference = host.choose(&picks).unwrap();
    let (mut sampled, mut same) = (0, 0);
    for ((p, &o), &r) in picks.iter().zip(&ours).zip(&reference) {
        if p.cuts.is_greedy() {
            assert_eq!(o, r, "greedy pick {p:?}");
            continue;
        }
        let c = p.cuts;
        let kept = nucleus(&host.row(p.row).unwrap(), c.temperature, c.top_k, c.top_p, c.min_p);
        assert!(kept.iter().any(|k| k.0 == o), "token {o} is outside the host's nucleus of {} for {p:?}", kept.len());
        sampled += 1;
        same += usize::from(o == r);
    }
    println!("emulated choose_rows: {same}/{sampled} sampled picks the host's token, all inside its nucleus, repeated exactly");
    assert!(same as f64 >= 0.99 * sampled as f64, "{same}/{sampled} draws agree");
}
