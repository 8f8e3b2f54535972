//! Decode steps replayed as CUDA graphs give the logits, bit for bit, that
//! the same steps give launched one by one: through the first run of a
//! batch size, its capture, replays over refilled indices while block
//! tables grow as the engine grows them, recaptures when a table's width
//! doubles, a prefill of more tokens than any graph takes (which moves the
//! buffers and drops every graph) and changes of batch size.

use weft_backend_cuda::{CudaBackend, CudaOptions};
use weft_engine::Backend;
use weft_engine::model::{BatchToken, ForwardBatch};

use crate::common::{default_model, have_gpu, on_host};

const BLOCK: usize = 16;
/// Blocks per sequence: room for 256 positions.
const PER_SEQ: usize = 16;
const SEQS: usize = 4;

fn open(graphs: bool) -> CudaBackend {
    let m = default_model();
    let mut b = CudaBackend::new(&m.model, CudaOptions { graphs, ..CudaOptions::default() })
        .unwrap_or_else(|e| panic!("graphs={graphs}: {e}"));
    b.allocate_kv(SEQS * PER_SEQ, BLOCK).unwrap();
    b
}

/// Sequences' block tables, grown a block at a time as the engine grows
/// them (sequence s owns blocks s·PER_SEQ ..).
struct Tables(Vec<Vec<u32>>);

impl Tables {
    fn cover(&mut self, seq: usize, pos: usize) {
        while self.0[seq].len() * BLOCK <= pos {
            let next = (seq * PER_SEQ + self.0[seq].len()) as u32;
            self.0[seq].push(next);
        }
    }
}

/// One step: `tokens` as (sequence, position, token), every one with logits.
fn step(b: &mut CudaBackend, tables: &Tables, tokens: &[(usize, usize, u32)]) -> Vec<f32> {
    let batch = ForwardBatch {
        tokens: tokens.iter().map(|&(seq, pos, token)| BatchToken { token, pos, seq, logits: true }).collect(),
        block_tables: tables.0.iter().map(Vec::as_slice).collect(),
    };
    on_host(&*b.forward(&batch).unwrap())
}

#[test]
fn graph_replays_match_step_by_step_launches_bit_for_bit() {
    if !have_gpu("graphs::replays") {
        return;
    }
    let (mut eager, mut graphed) = (open(false), open(true));
    let mut tables = Tables(vec![Vec::new(); SEQS]);
    let mut pos = [0usize; SEQS];
    let mut differ = 0;
    let mut run = |tables: &mut Tables, tokens: Vec<(usize, usize, u32)>, pos: &mut [usize; SEQS]| {
        for &(s, p, _) in &tokens {
            tables.cover(s, p);
        }
        let (a, b) = (step(&mut eager, tables, &tokens), step(&mut graphed, tables, &tokens));
        assert_eq!(a.len(), b.len());
        differ += usize::from(a != b);
        for &(s, _, _) in &tokens {
            pos[s] += 1;
        }
    };
    // Prompts of 5, 9 and 2 tokens, prefilled together (no graph).
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[9, 8, 7, 6, 5, 4, 3, 2, 1], &[42, 43]];
    let prefill: Vec<(usize, usize, u32)> =
        prompts.iter().enumerate().flat_map(|(s, p)| p.iter().enumerate().map(move |(i, &t)| (s, i, t))).collect();
    run(&mut tables, prefill, &mut pos);
    for i in 0..150 {
        let tokens: Vec<(usize, usize, u32)> = match i {
            // A 40-token prompt for a fourth sequence: more tokens than a
            // graph takes, so the activations grow and every graph goes.
            60 => (0..40).map(|p| (3, p, (500 + p) as u32)).collect(),
            // Four sequences decoding, then two.
            61..=119 => (0..4).map(|s| (s, pos[s], (100 + 7 * i + s) as u32)).collect(),
            120.. => (0..2).map(|s| (s, pos[s], (100 + 7 * i + s) as u32)).collect(),
            _ => (0..3).map(|s| (s, pos[s], (100 + 7 * i + s) as u32)).collect(),
        };
        run(&mut tables, tokens, &mut pos);
    }
    println!("RESULT engine graphs-vs-eager differing_steps={differ}/151");
    assert_eq!(differ, 0, "{differ} of 151 steps differ between graph replay and eager launches");
}
