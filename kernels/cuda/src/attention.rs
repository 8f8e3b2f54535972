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
use crate::{CudaKernels, DEFAULT_SHARED_BYTES, MAX_GRID_YZ, arg_i32, arg_u32, launch_cfg};

/// Largest query-heads-per-kv-head ratio the kernel handles (Llama 2 70B has 8).
pub const MAX_GROUP: usize = 16;
/// Largest head dimension the kernel handles.
pub const MAX_HEAD_DIM: usize = 256;
/// The prefill kernel's query rows per tile, key tile and largest head_dim
/// (`PF_TQ`, `PF_TK`, `PF_MAX_HEAD_DIM` in attention.cu).
const PREFILL_TILE_ROWS: usize = 16;
const PREFILL_TILE_TOKENS: usize = 32;
const PREFILL_MAX_HEAD_DIM: usize = 128;

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

    /// The preprocessor define that selects this storage type's variant of
    /// `attention.cu` (compiled once per type).
    pub fn define(self) -> &'static str {
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

/// Cache slots of a step's tokens, checked and on the device
/// ([`CudaKernels::kv_slots`]).
#[derive(Debug)]
pub struct KvSlots {
    shape: KvCacheShape,
    len: usize,
    slots: Option<CudaSlice<u32>>,
}

/// A step's attention rows, checked, on the device, with the kernels chosen
/// and their workspace allocated ([`CudaKernels::plan_attention`]): runs of
/// prefill rows go to the tiled kernel, single rows (decode) to the
/// partitioned one.
#[derive(Debug)]
pub struct AttentionPlan {
    ty: KvType,
    shape: KvCacheShape,
    n_heads: usize,
    rows: usize,
    max_blocks: usize,
    tables: Option<CudaSlice<u32>>,
    prefill: Option<PrefillPart>,
    decode: Option<DecodePart>,
}

/// A plan's launch decisions and indices on the host.
struct Layout {
    max_blocks: usize,
    /// Flattened (table row, first row, count, first length) runs of 2+ rows.
    tiles: Vec<u32>,
    decode: Option<DecodeLayout>,
}

struct DecodeLayout {
    row_ids: Vec<u32>,
    row_seq: Vec<u32>,
    lens: Vec<u32>,
    part_len: usize,
    n_parts: usize,
    threads: usize,
    smem: usize,
}

/// `paged_attn_prefill` over tiles of (table row, first row, count, first length).
#[derive(Debug)]
struct PrefillPart {
    tiles: CudaSlice<u32>,
    n_tiles: usize,
}

/// `paged_attn_partial` then `paged_attn_reduce` over `n` rows: grid row i
/// is query row `row_ids[i]`.
#[derive(Debug)]
struct DecodePart {
    n: usize,
    row_ids: CudaSlice<u32>,
    row_seq: CudaSlice<u32>,
    lens: CudaSlice<u32>,
    part_len: usize,
    n_parts: usize,
    threads: usize,
    smem: usize,
    part_m: CudaSlice<f32>,
    part_l: CudaSlice<f32>,
    part_acc: CudaSlice<f32>,
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
        let plan = self.plan_attention(KvType::F32, shape, n_heads, &rows)?;
        self.attend(q, k_cache, v_cache, &plan, out)
    }

    /// A KV cache of `layers` layers of `shape`, stored as `ty`, zeroed.
    pub fn paged_kv(&self, ty: KvType, shape: KvCacheShape, layers: usize) -> Result<PagedKv> {
        let bytes = shape.elements() * ty.bytes();
        let layers = (0..layers)
            .map(|_| Ok((self.zeros::<u8>(bytes)?, self.zeros::<u8>(bytes)?)))
            .collect::<Result<_>>()?;
        Ok(PagedKv { ty, shape, layers })
    }

    /// Check `slots` (slot = block × block_size + offset) against `kv`'s
    /// capacity and upload them, once per step, for [`Self::kv_write_at`].
    pub fn kv_slots(&self, kv: &PagedKv, slots: &[u32]) -> Result<KvSlots> {
        self.kv_slots_checked(kv, slots)?;
        Ok(KvSlots { shape: kv.shape, len: slots.len(), slots: (!slots.is_empty()).then(|| self.upload(slots)).transpose()? })
    }

    /// Put a later step's `slots` into `dev` in place (same count, checked
    /// against `kv`), for a replayed CUDA graph; false when the count differs.
    pub fn refill_kv_slots(&self, dev: &mut KvSlots, kv: &PagedKv, slots: &[u32]) -> Result<bool> {
        if slots.len() != dev.len || dev.shape != kv.shape {
            return Ok(false);
        }
        self.kv_slots_checked(kv, slots)?;
        if let Some(buf) = &mut dev.slots {
            self.refill(buf, slots)?;
        }
        Ok(true)
    }

    fn kv_slots_checked(&self, kv: &PagedKv, slots: &[u32]) -> Result<()> {
        let capacity = kv.shape.num_blocks * kv.shape.block_size;
        match slots.iter().find(|&&s| s as usize >= capacity) {
            Some(&bad) => Err(CudaError::invalid("kv write", format!("slot {bad}; the cache has {capacity} slots"))),
            None => Ok(()),
        }
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
        let slots = self.kv_slots(kv, slots)?;
        self.kv_write_at(kv, layer, k, v, &slots)
    }

    /// [`Self::kv_write`] at slots uploaded by [`Self::kv_slots`].
    pub fn kv_write_at(
        &self,
        kv: &mut PagedKv,
        layer: usize,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        slots: &KvSlots,
    ) -> Result<()> {
        const OP: &str = "kv write";
        let shape = kv.shape;
        let kv_dim = shape.n_kv_heads * shape.head_dim;
        if layer >= kv.layers.len() {
            return Err(CudaError::invalid(OP, format!("layer {layer} of {}", kv.layers.len())));
        }
        if slots.shape != shape {
            return Err(CudaError::invalid(OP, "the slots were checked against another cache"));
        }
        let Some(slots_dev) = &slots.slots else { return Ok(()) };
        self.check_buf(OP, "k", k, slots.len * kv_dim)?;
        self.check_buf(OP, "v", v, slots.len * kv_dim)?;
        let kv_dim_i = arg_i32(OP, "kv_dim", kv_dim)?;
        let f = self.function(ATTENTION, Some(kv.ty.define()), "kv_write")?;
        let cfg = launch_cfg((arg_u32(OP, "tokens", slots.len)?, 1, 1), 128, 0);
        let (kc, vc) = &mut kv.layers[layer];
        let mut b = self.stream.launch_builder(&f);
        b.arg(k).arg(v).arg(slots_dev).arg(kc).arg(vc).arg(&kv_dim_i);
        // SAFETY: k and v hold tokens*kv_dim floats (checked); every slot is
        // below the capacity of a cache of this shape (checked by kv_slots),
        // whose buffers hold capacity*kv_dim elements of the cache's type.
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
        let plan = self.plan_attention(kv.ty, &kv.shape, n_heads, rows)?;
        self.paged_attention_planned(q, kv, layer, &plan, out)
    }

    /// [`Self::paged_attention`] with rows planned by [`Self::plan_attention`]
    /// (once per step, for every layer).
    pub fn paged_attention_planned(
        &self,
        q: &CudaSlice<f32>,
        kv: &PagedKv,
        layer: usize,
        plan: &AttentionPlan,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (kc, vc) = kv.layers.get(layer).ok_or_else(|| {
            CudaError::invalid("paged attention", format!("layer {layer} of {}", kv.layers.len()))
        })?;
        if (plan.ty, plan.shape) != (kv.ty, kv.shape) {
            return Err(CudaError::invalid("paged attention", "the plan was made for another cache"));
        }
        self.attend(q, kc, vc, plan, out)
    }

    /// Check `rows` against a cache of `shape` stored as `ty`, split them
    /// between the kernels (runs of prefill rows tiled, single rows
    /// partitioned), upload the indices and allocate the workspace.
    pub fn plan_attention(
        &self,
        ty: KvType,
        shape: &KvCacheShape,
        n_heads: usize,
        rows: &AttentionRows<'_>,
    ) -> Result<AttentionPlan> {
        let l = self.attention_layout(shape, n_heads, rows)?;
        let upload = |v: &[u32]| (!v.is_empty()).then(|| self.upload(v)).transpose();
        let prefill = match upload(&l.tiles)? {
            Some(tiles) => Some(PrefillPart { n_tiles: l.tiles.len() / 4, tiles }),
            None => None,
        };
        let decode = match &l.decode {
            Some(d) => {
                let partials = d.row_ids.len() * n_heads * d.n_parts;
                // SAFETY (all three): plain device allocations; the kernels write
                // every partition they later read (partitions below each row's length).
                let alloc =
                    |len: usize| unsafe { self.stream.alloc::<f32>(len) }.map_err(driver("allocating attention workspace"));
                Some(DecodePart {
                    n: d.row_ids.len(),
                    row_ids: self.upload(&d.row_ids)?,
                    row_seq: self.upload(&d.row_seq)?,
                    lens: self.upload(&d.lens)?,
                    part_len: d.part_len,
                    n_parts: d.n_parts,
                    threads: d.threads,
                    smem: d.smem,
                    part_m: alloc(partials)?,
                    part_l: alloc(partials)?,
                    part_acc: alloc(partials * shape.head_dim)?,
                })
            }
            None => None,
        };
        Ok(AttentionPlan {
            ty,
            shape: *shape,
            n_heads,
            rows: rows.lens.len(),
            max_blocks: l.max_blocks,
            tables: upload(rows.block_tables)?,
            prefill,
            decode,
        })
    }

    /// Put a later step's `rows` into `plan`'s device buffers, in place, when
    /// they need the same launches (row count, table width, tiles and
    /// partitioning); the buffers keep their addresses, so a CUDA graph
    /// captured over the plan replays with the new rows. Returns false (and
    /// changes nothing) when the launches would differ.
    pub fn refill_attention(&self, plan: &mut AttentionPlan, rows: &AttentionRows<'_>) -> Result<bool> {
        let l = self.attention_layout(&plan.shape, plan.n_heads, rows)?;
        let same = rows.lens.len() == plan.rows
            && l.max_blocks == plan.max_blocks
            && plan.tables.as_ref().map_or(0, |t| t.len()) == rows.block_tables.len()
            && plan.prefill.as_ref().map_or(0, |p| p.n_tiles) == l.tiles.len() / 4
            && match (&plan.decode, &l.decode) {
                (None, None) => true,
                (Some(p), Some(d)) => {
                    (p.n, p.part_len, p.n_parts, p.threads) == (d.row_ids.len(), d.part_len, d.n_parts, d.threads)
                }
                _ => false,
            };
        if !same {
            return Ok(false);
        }
        if let Some(t) = &mut plan.tables {
            self.refill(t, rows.block_tables)?;
        }
        if let Some(p) = &mut plan.prefill {
            self.refill(&mut p.tiles, &l.tiles)?;
        }
        if let (Some(p), Some(d)) = (&mut plan.decode, &l.decode) {
            self.refill(&mut p.row_ids, &d.row_ids)?;
            self.refill(&mut p.row_seq, &d.row_seq)?;
            self.refill(&mut p.lens, &d.lens)?;
        }
        Ok(true)
    }

    /// The checks and launch decisions of [`Self::plan_attention`], on the host.
    fn attention_layout(&self, shape: &KvCacheShape, n_heads: usize, rows: &AttentionRows<'_>) -> Result<Layout> {
        const OP: &str = "paged attention";
        let KvCacheShape {
            num_blocks,
            block_size,
            n_kv_heads,
            head_dim,
        } = *shape;
        let n_seqs = rows.lens.len();
        if n_seqs == 0 {
            return Ok(Layout { max_blocks: 1, tiles: Vec::new(), decode: None });
        }
        if rows.row_seq.len() != n_seqs {
            return Err(CudaError::invalid(
                OP,
                format!("{} row_seq entries for {n_seqs} rows", rows.row_seq.len()),
            ));
        }
        if n_kv_heads == 0
            || n_heads == 0
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
        }

        // Runs of two or more rows to the tiled kernel (head_dim ≤ 128);
        // every other row to the partitioned one.
        let (tiled, single): (Vec<[u32; 4]>, Vec<[u32; 4]>) =
            runs(rows).into_iter().partition(|run| run[2] >= 2 && head_dim <= PREFILL_MAX_HEAD_DIM);
        arg_u32(OP, "tiles", tiled.len())?;
        let row_ids: Vec<u32> = single.iter().flat_map(|run| run[1]..run[1] + run[2]).collect();
        let decode = if row_ids.is_empty() { None } else { Some(self.decode_layout(shape, n_heads, rows, row_ids)?) };
        Ok(Layout { max_blocks: mb, tiles: tiled.as_flattened().to_vec(), decode })
    }

    /// The partitioned kernels' share of a layout: the rows `row_ids`.
    fn decode_layout(
        &self,
        shape: &KvCacheShape,
        n_heads: usize,
        rows: &AttentionRows<'_>,
        row_ids: Vec<u32>,
    ) -> Result<DecodeLayout> {
        const OP: &str = "paged attention";
        let KvCacheShape { n_kv_heads, head_dim, block_size, .. } = *shape;
        let n = row_ids.len();
        let lens: Vec<u32> = row_ids.iter().map(|&r| rows.lens[r as usize]).collect();
        let row_seq: Vec<u32> = row_ids.iter().map(|&r| rows.row_seq[r as usize]).collect();
        // Partitions cover the tables' capacity, not the longest row: the
        // launch then changes only when the table width does (partitions
        // past a row's length return at once), so a captured decode step
        // replays over many steps of growing sequences.
        let max_len = rows.max_blocks_per_seq * block_size;
        let group = n_heads / n_kv_heads;
        // Whole warps (the kernel reduces with full-warp shuffles).
        let threads = head_dim.max(128).next_multiple_of(32);
        // Partition length: the longest that still gives two blocks per SM,
        // so one long sequence is spread over the whole GPU; then shrunk until
        // the block's shared memory fits the default limit.
        let want_blocks = 2 * self.sm_count() as usize;
        let mut part_len = [512usize, 256, 128, 64]
            .into_iter()
            .find(|&p| n_kv_heads * n * max_len.div_ceil(p) >= want_blocks)
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
        Ok(DecodeLayout { row_ids, row_seq, lens, part_len, n_parts, threads, smem: smem(part_len) })
    }

    /// The launches of a planned attention call. The caches hold
    /// `shape.elements()` values of the plan's type, as elements of `K`
    /// (f32 values, or bytes).
    fn attend<K: DeviceRepr>(
        &self,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<K>,
        v_cache: &CudaSlice<K>,
        plan: &AttentionPlan,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "paged attention";
        let KvCacheShape { block_size, n_kv_heads, head_dim, .. } = plan.shape;
        let (n_seqs, n_heads) = (plan.rows, plan.n_heads);
        let Some(tables) = &plan.tables else { return Ok(()) };
        let cache_len = plan.shape.elements() * plan.ty.bytes() / std::mem::size_of::<K>();
        self.check_buf(OP, "q", q, n_seqs * n_heads * head_dim)?;
        self.check_buf(OP, "k_cache", k_cache, cache_len)?;
        self.check_buf(OP, "v_cache", v_cache, cache_len)?;
        self.check_buf(OP, "out", out, n_seqs * n_heads * head_dim)?;
        let (nh, nkv, hd, bs, mbi) = (
            arg_i32(OP, "n_heads", n_heads)?,
            arg_i32(OP, "n_kv_heads", n_kv_heads)?,
            arg_i32(OP, "head_dim", head_dim)?,
            arg_i32(OP, "block_size", block_size)?,
            arg_i32(OP, "max_blocks_per_seq", plan.max_blocks)?,
        );
        let scale = 1.0f32 / (head_dim as f32).sqrt();
        let define = Some(plan.ty.define());
        if let Some(PrefillPart { tiles, n_tiles }) = &plan.prefill {
            let f = self.function(ATTENTION, define, "paged_attn_prefill")?;
            let smem = arg_u32(OP, "shared memory", 2 * PREFILL_TILE_TOKENS * head_dim * 4)?;
            let cfg = launch_cfg((n_heads as u32, *n_tiles as u32, 1), 128, smem);
            let mut b = self.stream.launch_builder(&f);
            b.arg(q).arg(k_cache).arg(v_cache).arg(tables).arg(tiles).arg(&mut *out);
            b.arg(&nh).arg(&nkv).arg(&hd).arg(&bs).arg(&mbi).arg(&scale);
            // SAFETY: the tiles cover rows checked by plan_attention (table
            // rows, lengths and the blocks they read are inside the cache
            // and the tables); q/out hold rows*n_heads*head_dim floats and
            // the caches cache_len elements (checked); head_dim ≤ 128.
            unsafe { b.launch(cfg) }.map_err(driver("launching paged_attn_prefill"))?;
        }
        if let Some(d) = &plan.decode {
            let (pl, np) = (arg_i32(OP, "partition length", d.part_len)?, arg_i32(OP, "partitions", d.n_parts)?);
            let f = self.function(ATTENTION, define, "paged_attn_partial")?;
            let cfg = launch_cfg(
                (n_kv_heads as u32, d.n as u32, d.n_parts as u32),
                d.threads as u32,
                arg_u32(OP, "shared memory", d.smem)?,
            );
            let mut b = self.stream.launch_builder(&f);
            b.arg(q).arg(k_cache).arg(v_cache).arg(tables).arg(&d.row_ids).arg(&d.row_seq).arg(&d.lens);
            b.arg(&d.part_m).arg(&d.part_l).arg(&d.part_acc);
            b.arg(&nh).arg(&nkv).arg(&hd).arg(&bs).arg(&mbi).arg(&pl).arg(&np).arg(&scale);
            // SAFETY: q/out hold rows*n_heads*head_dim floats and every row id
            // is below rows; the caches hold cache_len elements (checked);
            // every table row read exists, every block id read is <
            // num_blocks and every table index < max_blocks_per_seq (checked
            // by plan_attention); the workspace is sized
            // n*n_heads*n_parts(*head_dim).
            unsafe { b.launch(cfg) }.map_err(driver("launching paged_attn_partial"))?;

            let f = self.function(ATTENTION, define, "paged_attn_reduce")?;
            let cfg = launch_cfg((n_heads as u32, d.n as u32, 1), head_dim as u32, 0);
            let mut b = self.stream.launch_builder(&f);
            b.arg(&d.part_m).arg(&d.part_l).arg(&d.part_acc).arg(&d.row_ids).arg(&d.lens).arg(out);
            b.arg(&nh).arg(&hd).arg(&pl).arg(&np);
            // SAFETY: as above; the reduce reads the partitions the first kernel wrote.
            unsafe { b.launch(cfg) }.map_err(driver("launching paged_attn_reduce"))?;
        }
        Ok(())
    }
}

/// The query rows as runs — up to [`PREFILL_TILE_ROWS`] consecutive rows of
/// one sequence whose lengths grow by one (a prefill chunk; a decode row is
/// a run of one) — each (table row, first row, count, first length).
fn runs(rows: &AttentionRows<'_>) -> Vec<[u32; 4]> {
    let mut runs: Vec<[u32; 4]> = Vec::new();
    for (r, (&seq, &len)) in rows.row_seq.iter().zip(rows.lens).enumerate() {
        match runs.last_mut() {
            Some(run) if run[0] == seq && (run[2] as usize) < PREFILL_TILE_ROWS && run[3] + run[2] == len => run[2] += 1,
            _ => runs.push([seq, r as u32, 1, len]),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_rows_group_into_runs_and_decode_rows_stand_alone() {
        let tables = [0u32; 8];
        let rows = |row_seq: &'static [u32], lens: &'static [u32]| AttentionRows {
            row_seq,
            lens,
            block_tables: &tables,
            max_blocks_per_seq: 4,
        };
        // A decode step: one row per sequence.
        assert_eq!(runs(&rows(&[0, 1], &[7, 30])), [[0, 0, 1, 7], [1, 1, 1, 30]]);
        // A decode row, then a 3-token prefill chunk at positions 4..6.
        assert_eq!(runs(&rows(&[0, 1, 1, 1], &[9, 5, 6, 7])), [[0, 0, 1, 9], [1, 1, 3, 5]]);
        // 18 rows of one chunk: a run of 16, then 2.
        let lens: Vec<u32> = (1..=18).collect();
        let seqs = vec![0u32; 18];
        let r = AttentionRows { row_seq: &seqs, lens: &lens, block_tables: &tables, max_blocks_per_seq: 8 };
        assert_eq!(runs(&r), [[0, 0, 16, 1], [0, 16, 2, 17]]);
    }
}
