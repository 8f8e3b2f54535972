//! Top-k with log-softmax over vocabulary rows (`kernels/sample.cu`).
//!
//! Only `rows × k` candidates and one log-sum-exp per row come back to the
//! host; the full logits stay on the device.

use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::error::{CudaError, Result, driver};
use crate::runtime::SAMPLE;
use crate::{CudaKernels, DEFAULT_SHARED_BYTES, arg_i32, arg_u32, launch_cfg};

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

impl CudaKernels {
    /// Top `k` of each of `rows` rows of `vocab` logits, with log-probabilities.
    pub fn top_k_logprobs(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        k: usize,
    ) -> Result<Vec<TopK>> {
        const OP: &str = "top-k";
        if rows == 0 {
            return Ok(Vec::new());
        }
        if k == 0 || k > vocab || k > MAX_K || rows > 65_535 {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "k = {k} must be between 1 and min(vocab {vocab}, {MAX_K}); rows ({rows}) at most 65535"
                ),
            ));
        }
        self.check_buf(OP, "logits", logits, rows * vocab)?;
        // Chunk length: stage 2 holds chunks × k candidates (8 bytes each) in
        // shared memory, stage 1 one chunk of floats.
        let chunk = [4096usize, 8192]
            .into_iter()
            .find(|&c| vocab.div_ceil(c) * k * 8 <= DEFAULT_SHARED_BYTES)
            .ok_or_else(|| {
                CudaError::invalid(
                    OP,
                    format!("k = {k} is too large for a vocabulary of {vocab}"),
                )
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
        b.arg(logits)
            .arg(&vocab_i)
            .arg(&chunk_i)
            .arg(&k_i)
            .arg(&cand_v)
            .arg(&cand_i)
            .arg(&chunk_m)
            .arg(&chunk_s);
        // SAFETY: logits hold rows*vocab floats (checked); workspace sizes as allocated.
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
