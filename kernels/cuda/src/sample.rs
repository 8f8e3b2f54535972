//! Sampling support over vocabulary rows that stay on the device: top-k
//! with log-softmax (`kernels/sample.cu`), and the choice of one token per
//! [`Pick`] (mask, sparse edits, cuts, draw; `kernels/choose.cu`).
//!
//! Only `rows × k` candidates and one log-sum-exp per row, or one token per
//! pick, come back to the host; the full logits stay on the device.

use cudarc::driver::{CudaSlice, PushKernelArg};
use weft_types::{LogitEdit, Pick};

use crate::error::{CudaError, Result, driver};
use crate::runtime::{CHOOSE, SAMPLE};
use crate::{CudaKernels, DEFAULT_SHARED_BYTES, MAX_GRID_YZ, arg_i32, arg_u32, launch_cfg};

/// Largest k one call returns.
pub const MAX_K: usize = 256;
const THREADS: u32 = 256;

/// The k best tokens of one row, best first (ties: lower id first).
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
    /// `logits - logsumexp`: log-probabilities under softmax of the whole row.
    pub logprobs: Vec<f32>,
    /// log Σ exp(logits) over the whole row.
    pub logsumexp: f32,
}

/// Static shared memory of each top-k stage (`sv` and `si`: 32 floats and
/// 32 ids), which counts against the same 48 KB as the dynamic part.
const TOPK_STATIC_SHARED: usize = 32 * 4 + 32 * 4;

/// The chunk length the top-k stages split a row of `vocab` into for `k`,
/// or None where no chunk fits: stage 1 holds one chunk of floats in shared
/// memory, stage 2 every chunk's k candidates (8 bytes each).
fn top_k_chunk(vocab: usize, k: usize) -> Option<usize> {
    [4096usize, 8192].into_iter().find(|&c| {
        let stage1 = c * 4 + TOPK_STATIC_SHARED;
        let stage2 = vocab.div_ceil(c) * k * 8 + TOPK_STATIC_SHARED;
        stage1.max(stage2) <= DEFAULT_SHARED_BYTES
    })
}

impl CudaKernels {
    /// Top `k` of rows `rows` of `logits` (rows of `vocab`), with
    /// log-probabilities, one [`TopK`] per row in order.
    pub fn top_k_logprobs(
        &self,
        logits: &CudaSlice<f32>,
        rows: std::ops::Range<usize>,
        vocab: usize,
        k: usize,
    ) -> Result<Vec<TopK>> {
        const OP: &str = "top-k";
        self.check_buf(OP, "logits", logits, rows.end * vocab)?;
        let first = rows.start;
        let rows = rows.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        if k == 0 || k > vocab || k > MAX_K || rows > MAX_GRID_YZ {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "k = {k} must be between 1 and min(vocab {vocab}, {MAX_K}); rows ({rows}) at most {MAX_GRID_YZ}"
                ),
            ));
        }
        let chunk = top_k_chunk(vocab, k).ok_or_else(|| {
            CudaError::invalid(OP, format!("k = {k} is too large for a vocabulary of {vocab}"))
        })?;
        let nch = vocab.div_ceil(chunk);
        let cand = rows * nch * k;
        // SAFETY (all): plain device allocations, each fully written by the
        // kernels before it is read (stage 1 writes k candidates and one
        // (max, sum) per chunk).
        let alloc_f = |n| {
            unsafe { self.stream.alloc::<f32>(n) }.map_err(driver("allocating top-k workspace"))
        };
        let alloc_u = |n| {
            unsafe { self.stream.alloc::<u32>(n) }.map_err(driver("allocating top-k workspace"))
        };
        let (cand_v, cand_i, chunk_m, chunk_s) = (
            alloc_f(cand)?,
            alloc_u(cand)?,
            alloc_f(rows * nch)?,
            alloc_f(rows * nch)?,
        );
        // The results start as NaN / u32::MAX, so anything the kernels failed
        // to write is visible to the caller instead of being stale memory.
        let out_ids = self.upload(&vec![u32::MAX; rows * k])?;
        let out_logits = self.upload(&vec![f32::NAN; rows * k])?;
        let out_lp = self.upload(&vec![f32::NAN; rows * k])?;
        let out_lse = self.upload(&vec![f32::NAN; rows])?;
        let (vocab_i, chunk_i, k_i, nch_i) = (
            arg_i32(OP, "vocab", vocab)?,
            arg_i32(OP, "chunk", chunk)?,
            arg_i32(OP, "k", k)?,
            arg_i32(OP, "chunks", nch)?,
        );

        let f = self.function(SAMPLE, None, "topk_stage1")?;
        let cfg = launch_cfg(
            (arg_u32(OP, "chunks", nch)?, rows as u32, 1),
            THREADS,
            (chunk * 4) as u32,
        );
        let mut b = self.stream.launch_builder(&f);
        let logits = logits.slice(first * vocab..);
        b.arg(&logits)
            .arg(&vocab_i)
            .arg(&chunk_i)
            .arg(&k_i)
            .arg(&cand_v)
            .arg(&cand_i)
            .arg(&chunk_m)
            .arg(&chunk_s);
        // SAFETY: logits hold the rows asked for (checked); workspace sizes as allocated.
        unsafe { b.launch(cfg) }.map_err(driver("launching topk_stage1"))?;

        let f = self.function(SAMPLE, None, "topk_stage2")?;
        let cfg = launch_cfg((rows as u32, 1, 1), THREADS, (nch * k * 8) as u32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&cand_v)
            .arg(&cand_i)
            .arg(&chunk_m)
            .arg(&chunk_s)
            .arg(&nch_i)
            .arg(&k_i);
        b.arg(&out_ids).arg(&out_logits).arg(&out_lp).arg(&out_lse);
        // SAFETY: reads what stage 1 wrote; writes rows*k results and rows lse.
        unsafe { b.launch(cfg) }.map_err(driver("launching topk_stage2"))?;

        let ids = self.download(&out_ids)?;
        let lg = self.download(&out_logits)?;
        let lp = self.download(&out_lp)?;
        let lse = self.download(&out_lse)?;
        Ok((0..rows)
            .map(|r| TopK {
                ids: ids[r * k..(r + 1) * k].to_vec(),
                logits: lg[r * k..(r + 1) * k].to_vec(),
                logprobs: lp[r * k..(r + 1) * k].to_vec(),
                logsumexp: lse[r],
            })
            .collect())
    }
}

/// Threads of the `choose_rows` block (one block per pick).
const CHOOSE_THREADS: u32 = 1024;

/// A step's picks flattened into the arrays the kernels read.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct FlatPicks {
    /// Row of the logits each pick chooses from.
    pub rows: Vec<u32>,
    /// Offset of each pick's mask in `masks`, or `u32::MAX` for none.
    pub mask_at: Vec<u32>,
    pub masks: Vec<u32>,
    /// One segment per distinct (pick, token) edited: its edits are
    /// `seg_start[s]..seg_start[s + 1]` of the op arrays, in order.
    pub seg_pick: Vec<u32>,
    pub seg_token: Vec<u32>,
    pub seg_start: Vec<u32>,
    /// 0: add, 1: CTRL penalty, 2: ban (the kernel's codes).
    pub op_kind: Vec<u32>,
    pub op_value: Vec<f32>,
    pub temperature: Vec<f32>,
    pub top_k: Vec<u32>,
    pub top_p: Vec<f32>,
    pub min_p: Vec<f32>,
    pub uniform: Vec<f64>,
}

impl FlatPicks {
    /// Check `picks` against `rows` rows of `vocab` logits and flatten them;
    /// each pick's edits are grouped by token, keeping their order.
    pub(crate) fn new(picks: &[Pick<'_>], rows: usize, vocab: usize) -> Result<Self> {
        const OP: &str = "choose";
        let words = vocab.div_ceil(32);
        let mut f = FlatPicks { seg_start: vec![0], ..Self::default() };
        for (p, pick) in picks.iter().enumerate() {
            if pick.row >= rows {
                return Err(CudaError::invalid(OP, format!("pick {p} names row {} of {rows}", pick.row)));
            }
            f.rows.push(pick.row as u32);
            match pick.mask {
                Some(mask) if mask.len() < words => {
                    return Err(CudaError::invalid(
                        OP,
                        format!("pick {p}'s mask has {} words; a vocabulary of {vocab} needs {words}", mask.len()),
                    ));
                }
                Some(mask) => {
                    f.mask_at.push(arg_u32(OP, "mask words", f.masks.len())?);
                    f.masks.extend_from_slice(&mask[..words]);
                }
                None => f.mask_at.push(u32::MAX),
            }
            if let Some(&(t, _)) = pick.edits.iter().find(|e| e.0 as usize >= vocab) {
                return Err(CudaError::invalid(OP, format!("pick {p} edits token {t}, outside the vocabulary of {vocab}")));
            }
            let mut order: Vec<usize> = (0..pick.edits.len()).collect();
            order.sort_by_key(|&i| pick.edits[i].0); // stable: each token's edits keep their order
            for run in order.chunk_by(|&a, &b| pick.edits[a].0 == pick.edits[b].0) {
                f.seg_pick.push(p as u32);
                f.seg_token.push(pick.edits[run[0]].0);
                for &i in run {
                    let (kind, value) = match pick.edits[i].1 {
                        LogitEdit::Add(d) => (0, d),
                        LogitEdit::Penalize(penalty) => (1, penalty),
                        LogitEdit::Ban => (2, 0.0),
                    };
                    f.op_kind.push(kind);
                    f.op_value.push(value);
                }
                f.seg_start.push(arg_u32(OP, "edits", f.op_kind.len())?);
            }
            f.temperature.push(pick.cuts.temperature);
            f.top_k.push(pick.cuts.top_k);
            f.top_p.push(pick.cuts.top_p);
            f.min_p.push(pick.cuts.min_p);
            f.uniform.push(pick.uniform);
        }
        Ok(f)
    }
}

/// The one upload [`CudaKernels::choose_tokens`] makes for its picks: every
/// array the three kernels read, packed in 32-bit words. Public so that
/// the kernels can be run on CPU threads with exactly these arrays
/// (kernels/cuda/emulator/choose_tokens.cpp).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedPicks {
    pub words: Vec<u32>,
    /// Start of each array in `words`: uniforms (f64), rows, mask offsets,
    /// masks, segment picks, segment tokens, segment starts, edit kinds,
    /// edit values (f32), temperatures (f32), top-k, top-p (f32), min-p
    /// (f32).
    pub at: [usize; 13],
    /// Edited (pick, token) pairs: the `edit_rows` threads.
    pub segments: usize,
}

/// [`PackedPicks`] for `picks` over `rows` rows of `vocab` logits,
/// checked as [`CudaKernels::choose_tokens`] checks them.
pub fn pack_picks(picks: &[Pick<'_>], rows: usize, vocab: usize) -> Result<PackedPicks> {
    Ok(FlatPicks::new(picks, rows, vocab)?.pack())
}

impl FlatPicks {
    /// Every array in one buffer of 32-bit words (floats by their bits),
    /// each starting at an even word so the doubles stay 8-byte aligned:
    /// one upload a step instead of thirteen.
    fn pack(&self) -> PackedPicks {
        let mut words: Vec<u32> = Vec::new();
        let mut at = [0; 13];
        let mut push = |i: usize, part: &mut dyn Iterator<Item = u32>| {
            if !words.len().is_multiple_of(2) {
                words.push(0);
            }
            at[i] = words.len();
            words.extend(part);
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        push(0, &mut self.uniform.iter().flat_map(|u| {
            let b = u.to_bits();
            [b as u32, (b >> 32) as u32]
        }));
        push(1, &mut self.rows.iter().copied());
        push(2, &mut self.mask_at.iter().copied());
        push(3, &mut self.masks.iter().copied());
        push(4, &mut self.seg_pick.iter().copied());
        push(5, &mut self.seg_token.iter().copied());
        push(6, &mut self.seg_start.iter().copied());
        push(7, &mut self.op_kind.iter().copied());
        push(8, &mut bits(&self.op_value).into_iter());
        push(9, &mut bits(&self.temperature).into_iter());
        push(10, &mut self.top_k.iter().copied());
        push(11, &mut bits(&self.top_p).into_iter());
        push(12, &mut bits(&self.min_p).into_iter());
        // The kernels never read past an array's own entries; one spare
        // word keeps an empty last array's view inside the buffer.
        words.push(0);
        PackedPicks { words, at, segments: self.seg_pick.len() }
    }
}

impl CudaKernels {
    /// One token per pick, in order, chosen from `rows` rows of `vocab`
    /// logits without copying them to the host: each pick's row is copied
    /// on the device with its mask and edits applied, then cut and drawn
    /// from by one block (see `kernels/choose.cu`).
    pub fn choose_tokens(&self, logits: &CudaSlice<f32>, rows: usize, vocab: usize, picks: &[Pick<'_>]) -> Result<Vec<u32>> {
        const OP: &str = "choose";
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = self.edited_rows(logits, rows, vocab, picks)?;
        let (n, part) = (picks.len(), |i: usize| prepared.upload.slice(prepared.at[i]..));
        let vocab_i = arg_i32(OP, "vocab", vocab)?;
        // SAFETY: written by choose_rows (one token per block) before it is read.
        let out = unsafe { self.stream.alloc::<u32>(n) }.map_err(driver("allocating the picks' tokens"))?;
        let func = self.function(CHOOSE, None, "choose_rows")?;
        let cfg = launch_cfg((n as u32, 1, 1), CHOOSE_THREADS, 0);
        let mut b = self.stream.launch_builder(&func);
        let (temperature, top_k, top_p, min_p, uniform) = (part(9), part(10), part(11), part(12), part(0));
        b.arg(&prepared.work).arg(&vocab_i).arg(&temperature).arg(&top_k).arg(&top_p).arg(&min_p).arg(&uniform).arg(&out);
        // SAFETY: n blocks, each on its own row of work; one output each.
        unsafe { b.launch(cfg) }.map_err(driver("launching choose_rows"))?;
        let tokens = self.download(&out)?;
        if let Some(p) = tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(CudaError::invalid(OP, format!("the kernel left pick {p} without a token ({})", tokens[p])));
        }
        Ok(tokens)
    }

    /// The `k` largest logits (largest first, ties by lower id) of each
    /// pick's row with its mask and edits applied, and the row's
    /// log-sum-exp after them; the picks' cuts and draws are not used.
    pub fn top_k_of_picks(&self, logits: &CudaSlice<f32>, rows: usize, vocab: usize, picks: &[Pick<'_>], k: usize) -> Result<Vec<TopK>> {
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = self.edited_rows(logits, rows, vocab, picks)?;
        self.top_k_logprobs(&prepared.work, 0..picks.len(), vocab, k)
    }

    /// Each pick's row, masked and edited, in a new buffer of
    /// `picks × vocab` (`pick_rows`, then `edit_rows`), with the packed
    /// upload the later kernels read their arrays from.
    fn edited_rows(&self, logits: &CudaSlice<f32>, rows: usize, vocab: usize, picks: &[Pick<'_>]) -> Result<EditedRows> {
        const OP: &str = "choose";
        if picks.len() > MAX_GRID_YZ {
            return Err(CudaError::invalid(OP, format!("{} picks; at most {MAX_GRID_YZ} a call", picks.len())));
        }
        self.check_buf(OP, "logits", logits, rows * vocab)?;
        let PackedPicks { words, at, segments } = pack_picks(picks, rows, vocab)?;
        let upload = self.upload(&words)?;
        let part = |i: usize| upload.slice(at[i]..);
        let n = picks.len();
        let vocab_i = arg_i32(OP, "vocab", vocab)?;
        // SAFETY: every element is written by pick_rows before it is read.
        let work = unsafe { self.stream.alloc::<f32>(n * vocab) }.map_err(driver("allocating the picks' rows"))?;

        let func = self.function(CHOOSE, None, "pick_rows")?;
        let cfg = launch_cfg((vocab.div_ceil(THREADS as usize).min(64) as u32, n as u32, 1), THREADS, 0);
        let mut b = self.stream.launch_builder(&func);
        let (rows_d, mask_at, masks) = (part(1), part(2), part(3));
        b.arg(logits).arg(&vocab_i).arg(&rows_d).arg(&mask_at).arg(&masks).arg(&work);
        // SAFETY: rows are below `rows` and masks hold every row's words from its offset (checked in FlatPicks::new).
        unsafe { b.launch(cfg) }.map_err(driver("launching pick_rows"))?;

        if segments > 0 {
            let segments_i = arg_i32(OP, "segments", segments)?;
            let func = self.function(CHOOSE, None, "edit_rows")?;
            let cfg = launch_cfg((arg_u32(OP, "segment blocks", segments.div_ceil(THREADS as usize))?, 1, 1), THREADS, 0);
            let mut b = self.stream.launch_builder(&func);
            let (seg_pick, seg_token, seg_start, op_kind, op_value) = (part(4), part(5), part(6), part(7), part(8));
            b.arg(&work).arg(&vocab_i).arg(&segments_i).arg(&seg_pick).arg(&seg_token).arg(&seg_start);
            b.arg(&op_kind).arg(&op_value);
            // SAFETY: segment picks are below n, tokens below vocab, starts index the op arrays.
            unsafe { b.launch(cfg) }.map_err(driver("launching edit_rows"))?;
        }
        Ok(EditedRows { work, upload, at })
    }
}

/// [`CudaKernels::edited_rows`]' result.
struct EditedRows {
    work: CudaSlice<f32>,
    upload: CudaSlice<u32>,
    at: [usize; 13],
}

#[cfg(test)]
mod tests {
    use weft_types::Cuts;

    use super::*;

    #[test]
    fn top_k_chunks_keep_both_stages_within_the_shared_memory_limit() {
        // Llama 3's vocabulary at k = 192 needs 48 KB of candidates in
        // chunks of 4096, which with the stage's static arrays would not
        // launch; chunks of 8192 halve them.
        assert_eq!(top_k_chunk(128_256, 192), Some(8192));
        assert_eq!(top_k_chunk(49_152, 256), Some(4096));
        assert_eq!(top_k_chunk(262_144, 256), None);
    }

    #[test]
    fn picks_flatten_into_segments_that_keep_each_tokens_order() {
        let greedy = Cuts { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0 };
        let edits = [(5, LogitEdit::Penalize(2.0)), (1, LogitEdit::Ban), (5, LogitEdit::Add(-1.0))];
        let mask = [u32::MAX, 1];
        let picks = [
            Pick { row: 1, mask: None, edits: &edits, cuts: greedy, uniform: 0.0 },
            Pick { row: 0, mask: Some(&mask), edits: &[], cuts: Cuts { temperature: 0.7, top_k: 40, top_p: 0.9, min_p: 0.05 }, uniform: 0.25 },
        ];
        let f = FlatPicks::new(&picks, 2, 33).unwrap();
        assert_eq!(f.rows, [1, 0]);
        assert_eq!(f.mask_at, [u32::MAX, 0]);
        assert_eq!(f.masks, [u32::MAX, 1]);
        assert_eq!((f.seg_pick, f.seg_token, f.seg_start), (vec![0, 0], vec![1, 5], vec![0, 1, 3]));
        assert_eq!((f.op_kind, f.op_value), (vec![2, 1, 0], vec![0.0, 2.0, -1.0]));
        assert_eq!((f.top_k, f.uniform), (vec![0, 40], vec![0.0, 0.25]));

        let short_mask = [Pick { mask: Some(&mask[..1]), ..picks[1] }];
        assert!(FlatPicks::new(&short_mask, 2, 33).is_err(), "33 tokens need two mask words");
        assert!(FlatPicks::new(&picks, 1, 33).is_err(), "row 1 of 1");
        let outside = [(33, LogitEdit::Ban)];
        assert!(FlatPicks::new(&[Pick { edits: &outside, ..picks[0] }], 2, 33).is_err());
    }

    #[test]
    fn packed_arrays_start_even_and_hold_their_values() {
        let cuts = Cuts { temperature: 0.7, top_k: 40, top_p: 0.9, min_p: 0.05 };
        let edits = [(3, LogitEdit::Add(0.5))];
        let picks = [Pick { row: 2, mask: None, edits: &edits, cuts, uniform: 0.3 }; 3];
        let f = FlatPicks::new(&picks, 3, 100).unwrap();
        let PackedPicks { words, at, segments } = f.pack();
        assert_eq!(segments, 3);
        assert!(at.iter().all(|a| a % 2 == 0), "{at:?}");
        let u = f64::from_bits(words[at[0]] as u64 | (words[at[0] + 1] as u64) << 32);
        assert_eq!(u, 0.3);
        assert_eq!(words[at[1]..at[1] + 3], [2, 2, 2]);
        assert_eq!(f32::from_bits(words[at[8]]), 0.5);
        assert_eq!(f32::from_bits(words[at[9] + 2]), 0.7);
        assert_eq!(words[at[10]], 40);
        assert_eq!(f32::from_bits(words[at[12]]), 0.05);
        assert!(at[12] + 3 < words.len());
    }
}
