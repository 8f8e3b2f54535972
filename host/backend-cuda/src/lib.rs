//! Weft's CUDA backend: the engine's [`Backend`] on one NVIDIA GPU.
//!
//! [`CudaBackend::new`] uploads a loaded [`LlamaModel`] once, quantised
//! formats as they are (the kernels dequantise on the fly), and keeps the
//! paged KV cache in device memory in f32, f16 or FP8 E4M3. A step is the
//! CPU forward pass's sequence of operations on the device: embedding,
//! then per layer RMSNorm, the Q/K/V projections, RoPE, the KV write,
//! paged attention over every query row (decode and prefill alike), the
//! output projection, the SwiGLU MLP, residual adds; then the final norm
//! and the logits of the rows that want them, which stay on the device
//! ([`DeviceRows`]): the samplers' choices run there, and a row comes to the
//! host only when asked for (prompt scores, log-probabilities, a plugin
//! reading it).
//!
//! Linear layers use the GEMV kernels (weights read once per launch of up
//! to 8 tokens) for small batches; from [`GEMM_MIN_TOKENS`] tokens, BF16 and
//! F16 weights go to cuBLAS GemmEx on tensor cores (activations rounded to
//! the weight's type, f32 accumulation) and quantised or F32 weights are
//! dequantised to f32, a panel of at most 64 MiB at a time, in a reused
//! scratch buffer for cuBLAS SGEMM (full f32: the quantised default model
//! keeps its parity with the CPU).
//!
//! The engine's thread waits in [`Backend::forward`] while the device
//! works, so the guide workers computing masks on the CPU run under the
//! GPU's forward pass (see the engine's `guide_workers`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use thiserror::Error;
use weft_engine::model::{ForwardBatch, LlamaModel, ModelConfig, RopeLayout as HostRopeLayout, Weight};
use weft_engine::{Backend, BackendError};
use weft_kernels_cpu::WeightType as HostType;
use weft_types::{LogProbs, LogitEdit, LogitsError, LogitsRows, Pick, TokenId};
use weft_kernels_cuda::{
    AttentionPlan, AttentionRows, CudaError, CudaKernels, DeviceBuffer, DeviceMatrix, Graph, KvCacheShape, KvSlots,
    KvType, PagedKv, RopeLayout, RopeTable, TokenIds, TopK, WeightType,
};

pub use weft_kernels_cuda::KvType as KvCacheType;
/// Keep compiled kernel images in this directory between runs (see
/// `weft_kernels_cuda::set_cache_dir`).
pub use weft_kernels_cuda::set_cache_dir as set_kernel_cache;

/// From this many tokens in a step, linear layers run as a GEMM instead of
/// GEMV launches of at most 8 tokens each.
pub const GEMM_MIN_TOKENS: usize = 32;

/// What can go wrong opening the backend.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error("tensor {name}: {reason}")]
    Unsupported { name: String, reason: String },
}

/// How to open the backend.
#[derive(Clone, Copy, Debug)]
pub struct CudaOptions {
    /// The device ordinal (`cuda:N`).
    pub device: usize,
    /// How the KV cache stores keys and values; `None` follows the model
    /// (f16 for GGUF models as llama.cpp, f32 for float32 references).
    pub kv: Option<KvType>,
    /// Capture decode steps of fewer than [`GEMM_MIN_TOKENS`] sequences as
    /// CUDA graphs and replay them (one launch instead of ~15 per layer).
    pub graphs: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self { device: 0, kv: None, graphs: true }
    }
}

struct DeviceLayer {
    attn_norm: DeviceBuffer<f32>,
    wq: DeviceMatrix,
    wk: DeviceMatrix,
    wv: DeviceMatrix,
    bq: Option<DeviceBuffer<f32>>,
    bk: Option<DeviceBuffer<f32>>,
    bv: Option<DeviceBuffer<f32>>,
    wo: DeviceMatrix,
    ffn_norm: DeviceBuffer<f32>,
    gate: DeviceMatrix,
    up: DeviceMatrix,
    down: DeviceMatrix,
}

/// Activations of one step, sized for `tokens` tokens and grown on demand.
struct Workspace {
    tokens: usize,
    x: DeviceBuffer<f32>,
    xn: DeviceBuffer<f32>,
    q: DeviceBuffer<f32>,
    k: DeviceBuffer<f32>,
    v: DeviceBuffer<f32>,
    attn: DeviceBuffer<f32>,
    proj: DeviceBuffer<f32>,
    gate: DeviceBuffer<f32>,
    up: DeviceBuffer<f32>,
    /// silu(gate) · up.
    act: DeviceBuffer<f32>,
}

impl Workspace {
    fn new(k: &CudaKernels, c: &ModelConfig, tokens: usize) -> Result<Self, CudaError> {
        let (h, qd, kvd, f) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn);
        Ok(Self {
            tokens,
            x: k.zeros(tokens * h)?,
            xn: k.zeros(tokens * h)?,
            q: k.zeros(tokens * qd)?,
            k: k.zeros(tokens * kvd)?,
            v: k.zeros(tokens * kvd)?,
            attn: k.zeros(tokens * qd)?,
            proj: k.zeros(tokens * h)?,
            gate: k.zeros(tokens * f)?,
            up: k.zeros(tokens * f)?,
            act: k.zeros(tokens * f)?,
        })
    }
}

/// A model resident on one GPU.
pub struct CudaBackend {
    kernels: CudaKernels,
    config: ModelConfig,
    layers: Vec<DeviceLayer>,
    embed: DeviceMatrix,
    norm: DeviceBuffer<f32>,
    output: DeviceMatrix,
    rope: RopeTable,
    kv_type: KvType,
    kv: Option<PagedKv>,
    work: Option<Workspace>,
    gemm_scratch: GemmScratch,
    /// Logits of the rows that want them, grown on demand.
    logits: Option<DeviceBuffer<f32>>,
    /// Capture decode steps as CUDA graphs ([`CudaOptions::graphs`]).
    graphs_on: bool,
    /// Captured decode steps by token count.
    graphs: HashMap<usize, Captured>,
    /// Token counts run once already (the next one is captured).
    warmed: HashSet<usize>,
    name: String,
}

impl CudaBackend {
    /// Upload `model` to device `options.device`.
    pub fn new(model: &LlamaModel, options: CudaOptions) -> Result<Self, OpenError> {
        let kernels = CudaKernels::with_own_stream(options.device)?;
        let k = &kernels;
        let matrix = |w: &Weight| -> Result<DeviceMatrix, OpenError> {
            let ty = device_type(w.ty).ok_or_else(|| OpenError::Unsupported {
                name: w.name.clone(),
                reason: format!("{} weights are not supported by the CUDA kernels", w.ty.name()),
            })?;
            Ok(k.upload_matrix(ty, w.rows, w.cols, w.bytes())?)
        };
        let vector = |v: &[f32]| k.upload(v);
        let optional = |v: &Option<Vec<f32>>| v.as_deref().map(vector).transpose();
        let layers = model
            .layers()
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    attn_norm: vector(&l.attn_norm)?,
                    wq: matrix(&l.wq)?,
                    wk: matrix(&l.wk)?,
                    wv: matrix(&l.wv)?,
                    bq: optional(&l.bq)?,
                    bk: optional(&l.bk)?,
                    bv: optional(&l.bv)?,
                    wo: matrix(&l.wo)?,
                    ffn_norm: vector(&l.ffn_norm)?,
                    gate: matrix(&l.gate)?,
                    up: matrix(&l.up)?,
                    down: matrix(&l.down)?,
                })
            })
            .collect::<Result<Vec<_>, OpenError>>()?;
        let layout = match model.rope().layout() {
            HostRopeLayout::Interleaved => RopeLayout::Adjacent,
            HostRopeLayout::Halves => RopeLayout::NeoX,
        };
        let rope = k.rope_table_from_inv_freq(model.rope().inv_freq(), layout)?;
        let config = model.config.clone();
        let kv_type = options.kv.unwrap_or(match config.kv_precision() {
            weft_engine::kv_cache::KvPrecision::F16 => KvType::F16,
            weft_engine::kv_cache::KvPrecision::F32 => KvType::F32,
        });
        let name = format!("cuda:{} ({}, {}, KV {kv_type:?})", options.device, k.device_name(), k.arch());
        Ok(Self {
            embed: matrix(model.embedding())?,
            norm: vector(model.output_norm())?,
            output: matrix(model.output())?,
            layers,
            rope,
            kv_type,
            kv: None,
            work: None,
            gemm_scratch: GemmScratch::default(),
            logits: None,
            graphs_on: options.graphs,
            graphs: HashMap::new(),
            warmed: HashSet::new(),
            config,
            name,
            kernels,
        })
    }

    /// Run `batch`; the number of logits rows it left in `self.logits`.
    fn step(&mut self, kv: &mut PagedKv, batch: &ForwardBatch) -> Result<usize, CudaError> {
        if batch.tokens.is_empty() {
            return Ok(0);
        }
        let host = HostIndex::new(batch, kv.shape().block_size);
        let (n, m) = (batch.tokens.len(), host.wanted.len());
        // With graphs, room for the largest captured step from the start, so
        // that growing (which moves buffers and drops graphs) is rare.
        let floor = if self.graphs_on { GEMM_MIN_TOKENS - 1 } else { 0 };
        self.reserve(n.max(floor), m.max(floor))?;
        let graphable = self.graphs_on && n < GEMM_MIN_TOKENS && m == n && host.single_rows();
        if !graphable {
            let index = self.upload(kv, &host)?;
            self.launch(kv, &index, n, Some(&host.wanted))?;
            return Ok(m);
        }
        let k = &self.kernels;
        let rows = host.rows();
        // A decode step of a size seen before: replay its graph over the new
        // indices, refilled in place; recapture when the launches differ.
        if let Some(mut g) = self.graphs.remove(&n) {
            let same = k.refill_token_ids(&mut g.index.ids, &self.embed, &host.ids)?
                && k.refill_kv_slots(&mut g.index.slots, kv, &host.slots)?
                && k.refill_attention(&mut g.index.plan, &rows)?;
            if same {
                k.refill(&mut g.index.positions, &host.positions)?;
                k.replay(&g.graph)?;
                self.graphs.insert(n, g);
                return Ok(m);
            }
        }
        let index = self.upload(kv, &host)?;
        if !self.warmed.contains(&n) {
            // First step of this size: run it as it is (kernels compile and
            // load outside any capture), capture the next one.
            self.launch(kv, &index, n, None)?;
            self.warmed.insert(n);
        } else {
            let k = self.kernels.clone();
            let graph = k.capture(|| self.launch(kv, &index, n, None))?;
            k.replay(&graph)?;
            self.graphs.insert(n, Captured { graph, index });
        }
        Ok(m)
    }

    /// Grow the activations to `tokens` tokens and the logits to `rows`
    /// rows; a growth moves buffers, so captured graphs are dropped.
    fn reserve(&mut self, tokens: usize, rows: usize) -> Result<(), CudaError> {
        let c = &self.config;
        let grow_work = self.work.as_ref().is_none_or(|w| w.tokens < tokens);
        let grow_logits = self.logits.as_ref().is_none_or(|l| l.len() < rows * c.vocab_size);
        if grow_work || grow_logits {
            // The graphs go first: they read the buffers about to move.
            self.graphs.clear();
        }
        let k = &self.kernels;
        if grow_work {
            self.work = None; // free the smaller one first
            self.work = Some(Workspace::new(k, c, tokens.next_power_of_two())?);
        }
        if grow_logits {
            self.logits = None;
            self.logits = Some(k.zeros(rows.next_power_of_two() * c.vocab_size)?);
        }
        Ok(())
    }

    fn upload(&self, kv: &PagedKv, host: &HostIndex) -> Result<StepIndex, CudaError> {
        let k = &self.kernels;
        Ok(StepIndex {
            ids: k.token_ids(&self.embed, &host.ids)?,
            positions: k.upload(&host.positions)?,
            slots: k.kv_slots(kv, &host.slots)?,
            plan: k.plan_attention(kv.kv_type(), kv.shape(), self.config.heads, &host.rows())?,
        })
    }

    /// The step's `m` logits rows, copied out of the buffer the next step
    /// (or graph replay) overwrites; waits for the step, so a device fault
    /// fails the step that caused it.
    fn step_rows(&self, m: usize) -> Result<DeviceRows, CudaError> {
        let k = &self.kernels;
        let vocab = self.config.vocab_size;
        let logits = match m {
            0 => None,
            _ => Some(k.copy_prefix(self.logits.as_ref().expect("reserved by step"), m * vocab)?),
        };
        k.synchronize()?;
        Ok(DeviceRows { kernels: k.clone(), logits, rows: m, vocab, backend: self.name.clone() })
    }

    /// Enqueue the step: the layers over `n` tokens, then the final norm and
    /// the logits of the rows `wanted` (every row when `None`, as in a
    /// decode step) into the logits buffer. With `wanted = None` and fewer
    /// than [`GEMM_MIN_TOKENS`] tokens it neither allocates nor copies from
    /// the host, so it can be captured as a graph.
    fn launch(&mut self, kv: &mut PagedKv, index: &StepIndex, n: usize, wanted: Option<&[u32]>) -> Result<(), CudaError> {
        let c = &self.config;
        let h = c.hidden;
        let k = &self.kernels;
        let w = self.work.as_mut().expect("reserved by step");
        let scratch = &mut self.gemm_scratch;

        k.embed_at(&self.embed, &index.ids, &mut w.x)?;
        for (li, layer) in self.layers.iter().enumerate() {
            k.rms_norm(&w.x, &layer.attn_norm, &mut w.xn, n, h, c.rms_eps)?;
            linear(k, scratch, &layer.wq, &w.xn, &mut w.q, n)?;
            linear(k, scratch, &layer.wk, &w.xn, &mut w.k, n)?;
            linear(k, scratch, &layer.wv, &w.xn, &mut w.v, n)?;
            for (out, bias) in [(&mut w.q, &layer.bq), (&mut w.k, &layer.bk), (&mut w.v, &layer.bv)] {
                if let Some(b) = bias {
                    k.add_bias(out, b, n)?;
                }
            }
            k.rope_at(&mut w.q, &index.positions, n, c.heads, c.head_dim, &self.rope)?;
            k.rope_at(&mut w.k, &index.positions, n, c.kv_heads, c.head_dim, &self.rope)?;
            k.kv_write_at(kv, li, &w.k, &w.v, &index.slots)?;
            k.paged_attention_planned(&w.q, kv, li, &index.plan, &mut w.attn)?;
            linear(k, scratch, &layer.wo, &w.attn, &mut w.proj, n)?;
            k.add(&mut w.x, &w.proj, n * h)?;

            k.rms_norm(&w.x, &layer.ffn_norm, &mut w.xn, n, h, c.rms_eps)?;
            linear(k, scratch, &layer.gate, &w.xn, &mut w.gate, n)?;
            linear(k, scratch, &layer.up, &w.xn, &mut w.up, n)?;
            k.swiglu(&w.gate, &w.up, &mut w.act, n * c.ffn)?;
            linear(k, scratch, &layer.down, &w.act, &mut w.proj, n)?;
            k.add(&mut w.x, &w.proj, n * h)?;
        }

        let m = wanted.map_or(n, <[u32]>::len);
        if m == 0 {
            return Ok(());
        }
        // Normalise the wanted rows into xn (gathered first unless all are
        // wanted), then project into the logits buffer.
        match wanted {
            Some(rows) if rows.len() < n => {
                k.gather_rows(&w.x, n, rows, h, &mut w.proj)?;
                k.rms_norm(&w.proj, &self.norm, &mut w.xn, m, h, c.rms_eps)?;
            }
            _ => k.rms_norm(&w.x, &self.norm, &mut w.xn, m, h, c.rms_eps)?,
        }
        linear(k, scratch, &self.output, &w.xn, self.logits.as_mut().expect("reserved by step"), m)
    }
}

/// A step's indices on the host.
struct HostIndex {
    ids: Vec<u32>,
    positions: Vec<u32>,
    slots: Vec<u32>,
    /// Block tables padded to the longest, `max_blocks` each.
    tables: Vec<u32>,
    max_blocks: usize,
    row_seq: Vec<u32>,
    lens: Vec<u32>,
    /// Rows whose logits the engine wants.
    wanted: Vec<u32>,
}

impl HostIndex {
    fn new(batch: &ForwardBatch, bs: usize) -> Self {
        let tokens = &batch.tokens;
        // Tables padded to a power of two: the width (and so the launch)
        // changes only when the longest table doubles, not with every
        // block a sequence takes.
        let max_blocks = batch.block_tables.iter().map(|t| t.len()).max().unwrap_or(1).max(1).next_power_of_two();
        let mut tables = vec![0u32; batch.block_tables.len() * max_blocks];
        for (row, table) in tables.chunks_exact_mut(max_blocks).zip(&batch.block_tables) {
            row[..table.len()].copy_from_slice(table);
        }
        Self {
            ids: tokens.iter().map(|t| t.token).collect(),
            positions: tokens.iter().map(|t| t.pos as u32).collect(),
            slots: tokens.iter().map(|t| batch.block_tables[t.seq][t.pos / bs] * bs as u32 + (t.pos % bs) as u32).collect(),
            tables,
            max_blocks,
            row_seq: tokens.iter().map(|t| t.seq as u32).collect(),
            lens: tokens.iter().map(|t| t.pos as u32 + 1).collect(),
            wanted: (0..tokens.len() as u32).filter(|&i| tokens[i as usize].logits).collect(),
        }
    }

    fn rows(&self) -> AttentionRows<'_> {
        AttentionRows { row_seq: &self.row_seq, lens: &self.lens, block_tables: &self.tables, max_blocks_per_seq: self.max_blocks }
    }

    /// Whether every row is its sequence's only one (a decode step).
    fn single_rows(&self) -> bool {
        let mut seqs = self.row_seq.clone();
        seqs.sort_unstable();
        seqs.windows(2).all(|w| w[0] != w[1])
    }
}

/// A step's indices on the device.
struct StepIndex {
    ids: TokenIds,
    positions: DeviceBuffer<u32>,
    slots: KvSlots,
    plan: AttentionPlan,
}

/// A captured decode step and the indices it reads (refilled before each replay).
struct Captured {
    graph: Graph,
    index: StepIndex,
}

/// Most f32 values of a weight dequantised at once for SGEMM (64 MiB): a
/// 128k × 4096 output projection goes through in 32 panels instead of a
/// 2 GiB buffer.
const DEQUANTIZED_PANEL_FLOATS: usize = 16 << 20;

/// Buffers of the GEMM paths, grown on demand and reused.
#[derive(Default)]
struct GemmScratch {
    /// A panel of dequantised weight rows (SGEMM path).
    weight: Option<DeviceBuffer<f32>>,
    /// Activations rounded to 16 bits (GemmEx path).
    x16: Option<DeviceBuffer<u16>>,
}

/// A device buffer of at least `len` elements in `slot`, (re)allocated when
/// smaller.
fn at_least<'a, T: weft_kernels_cuda::cudarc::driver::DeviceRepr + weft_kernels_cuda::cudarc::driver::ValidAsZeroBits>(
    k: &CudaKernels,
    slot: &'a mut Option<DeviceBuffer<T>>,
    len: usize,
) -> Result<&'a mut DeviceBuffer<T>, CudaError> {
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = None; // free the smaller one first
        *slot = Some(k.zeros(len)?);
    }
    Ok(slot.as_mut().expect("allocated above"))
}

/// `y = W · x` for `n` tokens (see the module documentation for the paths).
fn linear(
    k: &CudaKernels,
    scratch: &mut GemmScratch,
    w: &DeviceMatrix,
    x: &DeviceBuffer<f32>,
    y: &mut DeviceBuffer<f32>,
    n: usize,
) -> Result<(), CudaError> {
    if n < GEMM_MIN_TOKENS {
        return k.gemv(w, x, y, n);
    }
    if matches!(w.weight_type(), WeightType::BF16 | WeightType::F16) {
        let x16 = at_least(k, &mut scratch.x16, n * w.cols())?;
        return k.gemm_half(x, w, y, n, x16);
    }
    let panel = at_least(k, &mut scratch.weight, (w.rows() * w.cols()).min(DEQUANTIZED_PANEL_FLOATS))?;
    k.gemm_dequantized(x, w, y, n, panel)
}

/// The device kernels' name for a host weight format, if they read it.
fn device_type(ty: HostType) -> Option<WeightType> {
    Some(match ty {
        HostType::F32 => WeightType::F32,
        HostType::F16 => WeightType::F16,
        HostType::BF16 => WeightType::BF16,
        HostType::Q8_0 => WeightType::Q8_0,
        HostType::Q4_0 => WeightType::Q4_0,
        HostType::Q4_1 => WeightType::Q4_1,
        HostType::Q4K => WeightType::Q4K,
        HostType::Q6K => WeightType::Q6K,
        HostType::Q5_0 | HostType::Q5_1 | HostType::Q5K => return None,
    })
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn kv_bytes_per_token(&self) -> usize {
        2 * self.config.layers * self.config.kv_dim() * self.kv_type.bytes()
    }

    /// GEMMs over 512 tokens keep the tensor cores busy; shorter chunks
    /// would leave prefill throughput on the table.
    fn default_step_tokens(&self) -> usize {
        512
    }

    fn allocate_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), BackendError> {
        let c = &self.config;
        let shape = KvCacheShape { num_blocks, block_size, n_kv_heads: c.kv_heads, head_dim: c.head_dim };
        self.kv = None;
        self.graphs.clear();
        self.warmed.clear();
        self.kv = Some(self.kernels.paged_kv(self.kv_type, shape, c.layers).map_err(|e| self.error(e))?);
        Ok(())
    }

    fn forward(&mut self, batch: &ForwardBatch) -> Result<Box<dyn LogitsRows>, BackendError> {
        let Some(mut kv) = self.kv.take() else {
            return Err(BackendError::new(self.name.clone(), "forward before allocate_kv"));
        };
        let rows = self.step(&mut kv, batch);
        self.kv = Some(kv);
        let rows = rows.and_then(|m| self.step_rows(m)).map_err(|e| self.error(e))?;
        Ok(Box::new(rows))
    }
}

/// One step's logits rows, left on the GPU.
pub struct DeviceRows {
    kernels: CudaKernels,
    /// `rows × vocab` logits; none when the step wanted no rows.
    logits: Option<DeviceBuffer<f32>>,
    rows: usize,
    vocab: usize,
    backend: String,
}

impl DeviceRows {
    fn error(&self, e: CudaError) -> LogitsError {
        LogitsError(format!("{}: {e}", self.backend))
    }

    fn buffer(&self) -> Result<&DeviceBuffer<f32>, LogitsError> {
        self.logits.as_ref().ok_or_else(|| LogitsError(format!("{}: the step has no logits rows", self.backend)))
    }
}

impl LogitsRows for DeviceRows {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn len(&self) -> usize {
        self.rows
    }

    fn row(&self, i: usize) -> Result<Cow<'_, [f32]>, LogitsError> {
        let range = i * self.vocab..(i + 1) * self.vocab;
        Ok(Cow::Owned(self.kernels.download_range(self.buffer()?, range).map_err(|e| self.error(e))?))
    }

    fn choose(&self, picks: &[Pick<'_>]) -> Result<Vec<TokenId>, LogitsError> {
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        self.kernels.choose_tokens(self.buffer()?, self.rows, self.vocab, picks).map_err(|e| self.error(e))
    }

    /// The top-k kernel over the edited row (past its largest k, the row is
    /// edited and ranked on the host).
    fn top_k(&self, i: usize, mask: Option<&[u32]>, edits: &[(TokenId, LogitEdit)], k: usize) -> Result<Vec<(TokenId, f32)>, LogitsError> {
        let k = k.min(self.vocab);
        if k == 0 {
            return Ok(Vec::new());
        }
        if k > weft_kernels_cuda::MAX_TOP_K {
            let mut row = self.row(i)?.into_owned();
            weft_types::logits::edit_row(&mut row, mask, edits);
            return Ok(weft_engine::sampling::largest(&row, k));
        }
        // Cuts and draw are not used: only the edited row is.
        let cuts = weft_types::Cuts { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0 };
        let pick = Pick { row: i, mask, edits, cuts, uniform: 0.0 };
        let found = self.kernels.top_k_of_picks(self.buffer()?, self.rows, self.vocab, &[pick], k).map_err(|e| self.error(e))?;
        let TopK { ids, logits, .. } = found.into_iter().next().expect("one pick asked, one answered");
        Ok(ids.into_iter().zip(logits).collect())
    }

    /// The top-k kernel over the one row (at least its argmax), plus the
    /// token's own logit when it is not among them: `top + 1` values and a
    /// log-sum-exp cross to the host instead of the row.
    fn log_probs(&self, i: usize, token: TokenId, top: usize) -> Result<LogProbs, LogitsError> {
        let buf = self.buffer()?;
        let k = top.clamp(1, self.vocab);
        let found = self.kernels.top_k_logprobs(buf, i..i + 1, self.vocab, k).map_err(|e| self.error(e))?;
        let TopK { ids, logprobs, logsumexp, .. } = found.into_iter().next().expect("one row asked, one answered");
        let token_lp = match ids.iter().position(|&t| t == token) {
            Some(at) => logprobs[at],
            None => {
                let at = i * self.vocab + token as usize;
                let logit = self.kernels.download_range(buf, at..at + 1).map_err(|e| self.error(e))?[0];
                logit - logsumexp
            }
        };
        Ok(LogProbs { token: token_lp, top: ids.into_iter().zip(logprobs).take(top).collect() })
    }
}

impl CudaBackend {
    fn error(&self, e: CudaError) -> BackendError {
        BackendError::new(self.name.clone(), e)
    }
}

/// Open `model` on the GPU as a boxed [`Backend`] for the engine.
pub fn open(model: &Arc<LlamaModel>, options: CudaOptions) -> Result<Box<dyn Backend>, OpenError> {
    Ok(Box::new(CudaBackend::new(model, options)?))
}

#[cfg(test)]
mod tests {
    use weft_engine::model::BatchToken;

    use super::*;

    #[test]
    fn a_steps_host_index_names_each_tokens_slot_length_and_logits_row() {
        // Sequence 0 decodes position 5 (blocks 7 then 2 of size 4);
        // sequence 1 prefills positions 0..3 (block 9), wanting the last.
        let (t0, t1) = ([7u32, 2], [9u32]);
        let token = |token, pos, seq, logits| BatchToken { token, pos, seq, logits };
        let batch = ForwardBatch {
            tokens: vec![token(11, 5, 0, true), token(20, 0, 1, false), token(21, 1, 1, false), token(22, 2, 1, true)],
            block_tables: vec![&t0, &t1],
        };
        let index = HostIndex::new(&batch, 4);
        assert_eq!(index.ids, [11, 20, 21, 22]);
        assert_eq!(index.positions, [5, 0, 1, 2]);
        assert_eq!(index.slots, [2 * 4 + 1, 9 * 4, 9 * 4 + 1, 9 * 4 + 2]);
        assert_eq!(index.max_blocks, 2);
        assert_eq!(index.tables, [7, 2, 9, 0]);
        assert_eq!((index.row_seq.as_slice(), index.lens.as_slice()), ([0, 1, 1, 1].as_slice(), [6, 1, 2, 3].as_slice()));
        assert_eq!(index.wanted, [0, 3]);
        assert!(!index.single_rows(), "sequence 1 has three rows");

        // A decode step: one row per sequence; a 3-block table pads to 4.
        let (t0, t1) = ([1u32, 2, 3], [4u32]);
        let batch = ForwardBatch { tokens: vec![token(1, 9, 0, true), token(2, 0, 1, true)], block_tables: vec![&t0, &t1] };
        let index = HostIndex::new(&batch, 4);
        assert!(index.single_rows());
        assert_eq!((index.max_blocks, index.tables.as_slice()), (4, [1, 2, 3, 0, 4, 0, 0, 0].as_slice()));
        assert_eq!(index.slots, [3 * 4 + 1, 4 * 4]);
    }
}
