//! Decode steps replayed as CUDA graphs give the logits, bit for bit, that
//! the same steps give launched one by one: through the first run of a
//! batch size, its capture, replays over refilled indices, a recapture when
//! the partitioning changes, and a change of batch size.

use weft_backend_cuda::{CudaBackend, CudaOptions};
use weft_engine::Backend;
use weft_engine::model::{BatchToken, ForwardBatch};

use crate::common::{default_model, have_gpu};

const BLOCK: usize = 16;
/// Blocks per sequence: room for 128 positions.
const PER_SEQ: usize = 8;

fn open(graphs: bool) -> CudaBackend {
    let m = default_model();
    let mut b = CudaBackend::new(&m.model, CudaOptions { graphs, ..CudaOptions::default() })
        .unwrap_or_else(|e| panic!("graphs={graphs}: {e}"));
    b.allocate_kv(4 * PER_SEQ, BLOCK).unwrap();
    b
}

/// One step: `tokens` as (sequence, position, token), every one with logits.
fn step(b: &mut CudaBackend, tables: &[Vec<u32>], tokens: &[(usize, usize, u32)]) -> Vec<f32> {
    let batch = ForwardBatch {
        tokens: tokens.iter().map(|&(seq, pos, token)| BatchToken { token, pos, seq, logits: true }).collect(),
        block_tables: tables.iter().map(Vec::as_slice).collect(),
    };
    b.forward(&batch).unwrap()
}

#[test]
fn graph_replays_match_step_by_step_launches_bit_for_bit() {
    let test = "graphs::replays";
    if !have_gpu(test) {
        return;
    }
    let tables: Vec<Vec<u32>> = (0..3).map(|s| (s * PER_SEQ..(s + 1) * PER_SEQ).map(|b| b as u32).collect()).collect();
    let (mut eager, mut graphed) = (open(false), open(true));
    // Prompts of 5, 9 and 2 tokens, prefilled together (no graph).
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[9, 8, 7, 6, 5, 4, 3, 2, 1], &[42, 43]];
    let mut pos = [0usize; 3];
    let mut prefill = Vec::new();
    for (s, p) in prompts.iter().enumerate() {
        for &t in *p {
            prefill.push((s, pos[s], t));
            pos[s] += 1;
        }
    }
    assert_eq!(step(&mut eager, &tables, &prefill), step(&mut graphed, &tables, &prefill));
    // Decode: three sequences for 70 steps (past a partition boundary as
    // lengths grow), then two.
    let mut differ = 0;
    for i in 0..90 {
        let live = if i < 70 { 3 } else { 2 };
        let tokens: Vec<(usize, usize, u32)> = (0..live).map(|s| (s, pos[s], (100 + 7 * i + s) as u32)).collect();
        let (a, b) = (step(&mut eager, &tables, &tokens), step(&mut graphed, &tables, &tokens));
        assert_eq!(a.len(), b.len());
        differ += usize::from(a != b);
        pos.iter_mut().take(live).for_each(|p| *p += 1);
    }
    println!("RESULT engine graphs-vs-eager differing_steps={differ}/90");
    assert_eq!(differ, 0, "{differ} of 90 decode steps differ between graph replay and eager launches");
}
