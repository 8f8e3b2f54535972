//! The paged KV cache on the device and attention over it
//! (`kernels/attention.cu`).
//!
//! Block tables, slots and lengths come from the host scheduler and are
//! checked here before upload: every block a query row uses and every slot a
//! step writes must exist in the cache, so the kernels never touch memory
//! outside it.

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use crate::error::{CudaError, Result, driver};
use crate::runtime::ATTENTION;
use crate::{CudaKernels, DEFAULT_SHARED_BYTES, arg_i32, arg_u32, launch_cfg};

/// Largest query-heads-per-kv-head ratio the kernel handles (Llama 2 70B has 8).
pub const MAX_GROUP: usize = 16;
/// Largest head dimension the kernel handles.
pub const MAX_HEAD_DIM: usize = 256;
/// The prefill kernel's query rows per tile, key tile and largest head_dim
/// (`PF_TQ`, `PF_TK`, `PF_MAX_HEAD_DIM` in attention.cu).
const PREFILL_TILE_ROWS: usize = 16;
const PREFILL_TILE_TOKENS: usize = 32;
const PREFILL_MAX_HEAD_DIM: usize = 128;
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

/// How a [`PagedKv`] stores keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvType {
    F32,
    /// IEEE half: the CPU backend's default and llama.cpp's.
    F16,
    /// OCP FP8 E4M3 without a scale (saturating at ±448): half of F16's
    /// memory, at an accuracy cost measured by `weft parity`.
    E4M3,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
            KvType::E4M3 => 1,
        }
    }

    pub(crate) fn define(self) -> &'static str {
        match self {
            KvType::F32 => "WEFT_KV_F32",
            KvType::F16 => "WEFT_KV_F16",
            KvType::E4M3 => "WEFT_KV_E4M3",
        }
    }

    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::E4M3];
}

/// Keys and values of every layer in device memory, in blocks.
#[derive(Debug)]
pub struct PagedKv {
    ty: KvType,
    shape: KvCacheShape,
    /// Per layer: (keys, values), `shape.elements() × ty.bytes()` bytes each.
    layers: Vec<(CudaSlice<u8>, CudaSlice<u8>)>,
}

impl PagedKv {
    pub fn kv_type(&self) -> KvType {
        self.ty
    }
    pub fn shape(&self) -> &KvCacheShape {
        &self.shape
    }
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `i`'s (keys, values) as raw bytes of the cache's type (for
    /// tests and diagnostics).
    pub fn layer_bytes(&self, i: usize) -> Option<(&CudaSlice<u8>, &CudaSlice<u8>)> {
        self.layers.get(i).map(|(k, v)| (k, v))
    }
}

/// Query rows of one attention call: row r reads the block table of row
/// `row_seq[r]` of `block_tables` (`max_blocks_per_seq` entries each) and
/// attends to the first `lens[r]` cached tokens of that sequence.
#[derive(Clone, Copy, Debug)]
pub struct AttentionRows<'a> {
    pub row_seq: &'a [u32],
    pub lens: &'a [u32],
    pub block_tables: &'a [u32],
    pub max_blocks_per_seq: usize,
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
    /// Attention of one query token per sequence over its paged f32 K/V:
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
        let row_seq: Vec<u32> = (0..batch.seq_lens.len() as u32).collect();
        let rows = AttentionRows {
            row_seq: &row_seq,
            lens: batch.seq_lens,
            block_tables: batch.block_tables,
            max_blocks_per_seq: batch.max_blocks_per_seq,
        };
        self.attend(q, k_cache, v_cache, KvType::F32, shape.elements(), shape, n_heads, &rows, out)
    }

    /// A KV cache of `layers` layers of `shape`, stored as `ty`, zeroed.
    pub fn paged_kv(&self, ty: KvType, shape: KvCacheShape, layers: usize) -> Result<PagedKv> {
        let bytes = shape.elements() * ty.bytes();
        let layers = (0..layers)
            .map(|_| Ok((self.zeros::<u8>(bytes)?, self.zeros::<u8>(bytes)?)))
            .collect::<Result<_>>()?;
        Ok(PagedKv { ty, shape, layers })
    }

    /// Store `tokens` keys and values (`tokens × n_kv_heads × head_dim`
    /// floats each) of `layer` at cache slots `slots` (slot = block ×
    /// block_size + offset), converted to the cache's type.
    pub fn kv_write(
        &self,
        kv: &mut PagedKv,
        layer: usize,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        slots: &[u32],
    ) -> Result<()> {
        const OP: &str = "kv write";
        let shape = kv.shape;
        let kv_dim = shape.n_kv_heads * shape.head_dim;
        let capacity = shape.num_blocks * shape.block_size;
        if layer >= kv.layers.len() {
            return Err(CudaError::invalid(OP, format!("layer {layer} of {}", kv.layers.len())));
        }
        if let Some(&bad) = slots.iter().find(|&&s| s as usize >= capacity) {
            return Err(CudaError::invalid(OP, format!("slot {bad}; the cache has {capacity} slots")));
        }
        if slots.is_empty() {
            return Ok(());
        }
        self.check_buf(OP, "k", k, slots.len() * kv_dim)?;
        self.check_buf(OP, "v", v, slots.len() * kv_dim)?;
        let slots_dev = self.upload(slots)?;
        let kv_dim_i = arg_i32(OP, "kv_dim", kv_dim)?;
        let f = self.function(ATTENTION, Some(kv.ty.define()), "kv_write")?;
        let cfg = launch_cfg((arg_u32(OP, "tokens", slots.len())?, 1, 1), 128, 0);
        let (kc, vc) = &mut kv.layers[layer];
        let mut b = self.stream.launch_builder(&f);
        b.arg(k).arg(v).arg(&slots_dev).arg(kc).arg(vc).arg(&kv_dim_i);
        // SAFETY: k and v hold tokens*kv_dim floats (checked); every slot is
        // below the cache's capacity, whose buffers hold capacity*kv_dim
        // elements of the cache's type.
        unsafe { b.launch(cfg) }.map_err(driver("launching kv_write"))?;
        Ok(())
    }

    /// Attention of `rows` query rows over `layer` of `kv`: `q` and `out`
    /// are `rows × n_heads × head_dim`.
    pub fn paged_attention(
        &self,
        q: &CudaSlice<f32>,
        kv: &PagedKv,
        layer: usize,
        n_heads: usize,
        rows: &AttentionRows<'_>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (kc, vc) = kv.layers.get(layer).ok_or_else(|| {
            CudaError::invalid("paged attention", format!("layer {layer} of {}", kv.layers.len()))
        })?;
        let bytes = kv.shape.elements() * kv.ty.bytes();
        self.attend(q, kc, vc, kv.ty, bytes, &kv.shape, n_heads, rows, out)
    }

    /// The launch behind every attention call. The caches hold
    /// `shape.elements()` values of `ty`, which is `cache_len` elements of
    /// `K` (f32 values, or bytes).
    #[allow(clippy::too_many_arguments)]
    fn attend<K: DeviceRepr>(
        &self,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<K>,
        v_cache: &CudaSlice<K>,
        ty: KvType,
        cache_len: usize,
        shape: &KvCacheShape,
        n_heads: usize,
        rows: &AttentionRows<'_>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "paged attention";
        let KvCacheShape {
            num_blocks,
            block_size,
            n_kv_heads,
            head_dim,
        } = *shape;
        let n_seqs = rows.lens.len();
        if n_seqs == 0 {
            return Ok(());
        }
        if rows.row_seq.len() != n_seqs {
            return Err(CudaError::invalid(
                OP,
                format!("{} row_seq entries for {n_seqs} rows", rows.row_seq.len()),
            ));
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
        if head_dim == 0 || head_dim > MAX_HEAD_DIM {
            return Err(CudaError::invalid(
                OP,
                format!("head_dim {head_dim} must be between 1 and {MAX_HEAD_DIM}"),
            ));
        }
        if block_size == 0 || n_seqs > MAX_GRID_YZ {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "block_size {block_size} must be ≥ 1 and rows ({n_seqs}) ≤ {MAX_GRID_YZ}"
                ),
            ));
        }
        let mb = rows.max_blocks_per_seq;
        if mb == 0 || !rows.block_tables.len().is_multiple_of(mb) {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "block_tables has {} entries, not a whole number of tables of {mb}",
                    rows.block_tables.len()
                ),
            ));
        }
        let tables_n = rows.block_tables.len() / mb;
        let mut max_len = 0usize;
        for (s, (&len, &table)) in rows.lens.iter().zip(rows.row_seq).enumerate() {
            let (len, table) = (len as usize, table as usize);
            if len == 0 || len > mb * block_size || table >= tables_n {
                return Err(CudaError::invalid(
                    OP,
                    format!(
                        "row {s} reads table {table} of {tables_n} and length {len}; it must be between 1 and {mb} blocks × {block_size} tokens"
                    ),
                ));
            }
            let used = &rows.block_tables[table * mb..table * mb + len.div_ceil(block_size)];
            if let Some(&bad) = used.iter().find(|&&b| b as usize >= num_blocks) {
                return Err(CudaError::invalid(
                    OP,
                    format!("sequence {s} uses block {bad}; the cache has {num_blocks} blocks"),
                ));
            }
            max_len = max_len.max(len);
        }
        self.check_buf(OP, "q", q, n_seqs * n_heads * head_dim)?;
        self.check_buf(OP, "k_cache", k_cache, cache_len)?;
        self.check_buf(OP, "v_cache", v_cache, cache_len)?;
        self.check_buf(OP, "out", out, n_seqs * n_heads * head_dim)?;

        let scale = 1.0f32 / (head_dim as f32).sqrt();
        if head_dim <= PREFILL_MAX_HEAD_DIM
            && let Some(tiles) = prefill_tiles(rows)
        {
            let (nh, nkv, hd, bs, mbi) = (
                arg_i32(OP, "n_heads", n_heads)?,
                arg_i32(OP, "n_kv_heads", n_kv_heads)?,
                arg_i32(OP, "head_dim", head_dim)?,
                arg_i32(OP, "block_size", block_size)?,
                arg_i32(OP, "max_blocks_per_seq", mb)?,
            );
            let n_tiles = tiles.len() / 4;
            let tiles = self.upload(&tiles)?;
            let tables = self.upload(rows.block_tables)?;
            let f = self.function(ATTENTION, Some(ty.define()), "paged_attn_prefill")?;
            let smem = arg_u32(OP, "shared memory", 2 * PREFILL_TILE_TOKENS * head_dim * 4)?;
            let cfg = launch_cfg((n_heads as u32, arg_u32(OP, "tiles", n_tiles)?, 1), 128, smem);
            let mut b = self.stream.launch_builder(&f);
            b.arg(q).arg(k_cache).arg(v_cache).arg(&tables).arg(&tiles).arg(out);
            b.arg(&nh).arg(&nkv).arg(&hd).arg(&bs).arg(&mbi).arg(&scale);
            // SAFETY: the tiles cover rows checked above (table rows, lengths
            // and the blocks they read are inside the cache and the tables);
            // q/out hold rows*n_heads*head_dim floats; head_dim ≤ 128.
            unsafe { b.launch(cfg) }.map_err(driver("launching paged_attn_prefill"))?;
            return Ok(());
        }

        let group = n_heads / n_kv_heads;
        // Whole warps (the kernel reduces with full-warp shuffles).
        let threads = head_dim.max(128).next_multiple_of(32);
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

        let lens = self.upload(rows.lens)?;
        let row_seq = self.upload(rows.row_seq)?;
        let tables = self.upload(rows.block_tables)?;
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

        let f = self.function(ATTENTION, Some(ty.define()), "paged_attn_partial")?;
        let cfg = launch_cfg(
            (n_kv_heads as u32, n_seqs as u32, n_parts as u32),
            threads as u32,
            arg_u32(OP, "shared memory", smem(part_len))?,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(q).arg(k_cache).arg(v_cache).arg(&tables).arg(&row_seq).arg(&lens);
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
        // shape.elements() values of ty (checked above), every table
        // row read exists, every block id read is < num_blocks and every
        // table index < max_blocks_per_seq (checked above); the workspace is
        // sized n_seqs*n_heads*n_parts(*head_dim).
        unsafe { b.launch(cfg) }.map_err(driver("launching paged_attn_partial"))?;

        let f = self.function(ATTENTION, Some(ty.define()), "paged_attn_reduce")?;
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

/// The query rows as prefill tiles — runs of up to [`PREFILL_TILE_ROWS`]
/// consecutive rows of one sequence whose lengths grow by one — flattened
/// as (table row, first row, count, first length); `None` when every run is
/// a single row (a decode step: the partitioned kernel spreads long
/// sequences over the GPU instead).
fn prefill_tiles(rows: &AttentionRows<'_>) -> Option<Vec<u32>> {
    let mut tiles: Vec<u32> = Vec::new();
    let mut longest = 0;
    for (r, (&seq, &len)) in rows.row_seq.iter().zip(rows.lens).enumerate() {
        let n = tiles.len();
        let extends = n >= 4
            && tiles[n - 4] == seq
            && (tiles[n - 2] as usize) < PREFILL_TILE_ROWS
            && tiles[n - 1] + tiles[n - 2] == len;
        if extends {
            tiles[n - 2] += 1;
            longest = longest.max(tiles[n - 2]);
        } else {
            tiles.extend([seq, r as u32, 1, len]);
            longest = longest.max(1);
        }
    }
    (longest >= 2).then_some(tiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_rows_group_into_tiles_and_decode_rows_do_not() {
        let tables = [0u32; 8];
        let rows = |row_seq: &'static [u32], lens: &'static [u32]| AttentionRows {
            row_seq,
            lens,
            block_tables: &tables,
            max_blocks_per_seq: 4,
        };
        // A decode step: one row per sequence.
        assert_eq!(prefill_tiles(&rows(&[0, 1], &[7, 30])), None);
        // A decode row, then a 3-token prefill chunk at positions 4..6.
        assert_eq!(prefill_tiles(&rows(&[0, 1, 1, 1], &[9, 5, 6, 7])), Some(vec![0, 0, 1, 9, 1, 1, 3, 5]));
        // 18 rows of one chunk: a tile of 16, then 2.
        let lens: Vec<u32> = (1..=18).collect();
        let seqs = vec![0u32; 18];
        let r = AttentionRows { row_seq: &seqs, lens: &lens, block_tables: &tables, max_blocks_per_seq: 8 };
        assert_eq!(prefill_tiles(&r), Some(vec![0, 0, 16, 1, 0, 16, 2, 17]));
    }
}
