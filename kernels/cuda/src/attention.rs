//! Paged-attention decode launches (`kernels/attention.cu`).
//!
//! The block tables and sequence lengths come from the host scheduler and are
//! checked here before upload: every block a sequence uses must exist in the
//! cache, so the kernels never read outside it.

use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::error::{CudaError, Result, driver};
use crate::runtime::ATTENTION;
use crate::{CudaKernels, DEFAULT_SHARED_BYTES, arg_i32, arg_u32, launch_cfg};

/// Largest query-heads-per-kv-head ratio the kernel handles (Llama 2 70B has 8).
pub const MAX_GROUP: usize = 16;
/// Largest head dimension the kernel handles; it must also be a multiple of 32.
pub const MAX_HEAD_DIM: usize = 256;
/// Grid y and z limit.
const MAX_GRID_YZ: usize = 65_535;

/// Geometry of a paged KV cache; K and V each hold
/// `num_blocks × block_size × n_kv_heads × head_dim` f32 values in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheShape {
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheShape {
    /// Elements in one of the K or V caches.
    pub fn elements(&self) -> usize {
        self.num_blocks * self.block_size * self.n_kv_heads * self.head_dim
    }
}

/// The sequences of one decode step: sequence s has `seq_lens[s]` cached
/// tokens (its new token included) in blocks
/// `block_tables[s * max_blocks_per_seq ..][.. ceil(seq_lens[s] / block_size)]`.
#[derive(Clone, Copy, Debug)]
pub struct DecodeBatch<'a> {
    pub seq_lens: &'a [u32],
    pub block_tables: &'a [u32],
    pub max_blocks_per_seq: usize,
}

impl CudaKernels {
    /// Attention of one query token per sequence over its paged K/V:
    /// `q` and `out` are `n_seqs × n_heads × head_dim`; scores are scaled by
    /// 1/sqrt(head_dim) and softmax-normalised over all cached tokens.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention_decode(
        &self,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<f32>,
        v_cache: &CudaSlice<f32>,
        shape: &KvCacheShape,
        n_heads: usize,
        batch: &DecodeBatch<'_>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "paged attention";
        let KvCacheShape {
            num_blocks,
            block_size,
            n_kv_heads,
            head_dim,
        } = *shape;
        let n_seqs = batch.seq_lens.len();
        if n_seqs == 0 {
            return Ok(());
        }
        if n_kv_heads == 0
            || !n_heads.is_multiple_of(n_kv_heads)
            || n_heads / n_kv_heads > MAX_GROUP
        {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads}) at most {MAX_GROUP} times"
                ),
            ));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(32) || head_dim > MAX_HEAD_DIM {
            return Err(CudaError::invalid(
                OP,
                format!("head_dim {head_dim} must be a multiple of 32 up to {MAX_HEAD_DIM}"),
            ));
        }
        if block_size == 0 || n_seqs > MAX_GRID_YZ {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "block_size {block_size} must be ≥ 1 and sequences ({n_seqs}) ≤ {MAX_GRID_YZ}"
                ),
            ));
        }
        let mb = batch.max_blocks_per_seq;
        if batch.block_tables.len() != n_seqs * mb {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "block_tables has {} entries; {n_seqs} sequences × {mb} blocks need {}",
                    batch.block_tables.len(),
                    n_seqs * mb
                ),
            ));
        }
        let mut max_len = 0usize;
        for (s, &len) in batch.seq_lens.iter().enumerate() {
            let len = len as usize;
            if len == 0 || len > mb * block_size {
                return Err(CudaError::invalid(
                    OP,
                    format!(
                        "sequence {s} has length {len}; it must be between 1 and {mb} blocks × {block_size} tokens"
                    ),
                ));
            }
            let used = &batch.block_tables[s * mb..s * mb + len.div_ceil(block_size)];
            if let Some(&bad) = used.iter().find(|&&b| b as usize >= num_blocks) {
                return Err(CudaError::invalid(
                    OP,
                    format!("sequence {s} uses block {bad}; the cache has {num_blocks} blocks"),
                ));
            }
            max_len = max_len.max(len);
        }
        self.check_buf(OP, "q", q, n_seqs * n_heads * head_dim)?;
        self.check_buf(OP, "k_cache", k_cache, shape.elements())?;
        self.check_buf(OP, "v_cache", v_cache, shape.elements())?;
        self.check_buf(OP, "out", out, n_seqs * n_heads * head_dim)?;

        let group = n_heads / n_kv_heads;
        let threads = head_dim.max(128);
        // Partition length: the longest that still gives two blocks per SM,
        // so one long sequence is spread over the whole GPU; then shrunk until
        // the block's shared memory fits the default limit.
        let want_blocks = 2 * self.sm_count() as usize;
        let mut part_len = [512usize, 256, 128, 64]
            .into_iter()
            .find(|&p| n_kv_heads * n_seqs * max_len.div_ceil(p) >= want_blocks)
            .unwrap_or(64);
        let smem = |p: usize| group * (head_dim + p + threads) * 4;
        while smem(part_len) > DEFAULT_SHARED_BYTES && part_len > 32 {
            part_len /= 2;
        }
        if smem(part_len) > DEFAULT_SHARED_BYTES {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "{group} heads per kv head × head_dim {head_dim} need too much shared memory"
                ),
            ));
        }
        let n_parts = max_len.div_ceil(part_len);
        if n_parts > MAX_GRID_YZ {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "sequence length {max_len} needs {n_parts} partitions; limit {MAX_GRID_YZ}"
                ),
            ));
        }

        let lens = self.upload(batch.seq_lens)?;
        let tables = self.upload(batch.block_tables)?;
        let partials = n_seqs * n_heads * n_parts;
        // SAFETY (all three): plain device allocations; the kernels write every
        // partition they later read (partitions below each sequence's length).
        let part_m = unsafe { self.stream.alloc::<f32>(partials) }
            .map_err(driver("allocating attention workspace"))?;
        let part_l = unsafe { self.stream.alloc::<f32>(partials) }
            .map_err(driver("allocating attention workspace"))?;
        let part_acc = unsafe { self.stream.alloc::<f32>(partials * head_dim) }
            .map_err(driver("allocating attention workspace"))?;

        let (nh, nkv, hd, bs, mbi, pl, np) = (
            arg_i32(OP, "n_heads", n_heads)?,
            arg_i32(OP, "n_kv_heads", n_kv_heads)?,
            arg_i32(OP, "head_dim", head_dim)?,
            arg_i32(OP, "block_size", block_size)?,
            arg_i32(OP, "max_blocks_per_seq", mb)?,
            arg_i32(OP, "partition length", part_len)?,
            arg_i32(OP, "partitions", n_parts)?,
        );
        let scale = 1.0f32 / (head_dim as f32).sqrt();

        let f = self.function(ATTENTION, None, "paged_attn_partial")?;
        let cfg = launch_cfg(
            (n_kv_heads as u32, n_seqs as u32, n_parts as u32),
            threads as u32,
            arg_u32(OP, "shared memory", smem(part_len))?,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(q).arg(k_cache).arg(v_cache).arg(&tables).arg(&lens);
        b.arg(&part_m).arg(&part_l).arg(&part_acc);
        b.arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&bs)
            .arg(&mbi)
            .arg(&pl)
            .arg(&np)
            .arg(&scale);
        // SAFETY: q/out hold n_seqs*n_heads*head_dim floats, the caches
        // shape.elements(), every block id read is < num_blocks and every
        // table index < max_blocks_per_seq (checked above); the workspace is
        // sized n_seqs*n_heads*n_parts(*head_dim).
        unsafe { b.launch(cfg) }.map_err(driver("launching paged_attn_partial"))?;

        let f = self.function(ATTENTION, None, "paged_attn_reduce")?;
        let cfg = launch_cfg((n_heads as u32, n_seqs as u32, 1), head_dim as u32, 0);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&part_m)
            .arg(&part_l)
            .arg(&part_acc)
            .arg(&lens)
            .arg(out);
        b.arg(&nh).arg(&hd).arg(&pl).arg(&np);
        // SAFETY: as above; the reduce reads the partitions the first kernel wrote.
        unsafe { b.launch(cfg) }.map_err(driver("launching paged_attn_reduce"))?;
        Ok(())
    }
}
