//! The Llama-family forward pass over a batch of tokens.
//!
//! A batch mixes tokens from many sequences: a prefill chunk contributes
//! several consecutive positions, a decoding sequence one. Each layer writes
//! the batch's keys and values into the paged cache first and then attends,
//! so a token sees every earlier position of its own sequence, whether that
//! position was computed in an earlier step or earlier in this batch.
//!
//! Every per-token computation (norms, projections, rotary encoding,
//! attention) depends only on that token's inputs and its sequence's cached
//! keys and values, never on the rest of the batch: logits are bit-identical
//! alone or batched, chunked or not.

use weft_kernels_cpu::attention;
use weft_kernels_cpu::dot::Isa;
use weft_kernels_cpu::ops::{rms_norm, silu_mul};
use weft_kernels_cpu::pool::{for_each_chunk, parallel_for, threads};
use weft_kernels_cpu::{matmul, matmul_group};

use super::config::{ModelConfig, RopeScaling};
use super::rope::Rope;
use super::weights::{Weight, WeightSource};
use super::ModelError;
use crate::kv_cache::{KvLayer, KvStorage};

/// One decoder layer's weights (public for backends that upload them).
#[derive(Debug)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub wo: Weight,
    pub ffn_norm: Vec<f32>,
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

/// One token of a forward batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchToken {
    pub token: u32,
    /// Position of the token in its sequence.
    pub pos: usize,
    /// Index of the sequence's block table in [`ForwardBatch::block_tables`].
    pub seq: usize,
    /// Whether to compute logits for this token.
    pub logits: bool,
}

/// The tokens of one step and the block tables of their sequences.
#[derive(Debug, Default)]
pub struct ForwardBatch<'a> {
    pub tokens: Vec<BatchToken>,
    pub block_tables: Vec<&'a [u32]>,
}

/// A loaded Llama-family model.
pub struct LlamaModel {
    pub config: ModelConfig,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Weight,
    rope: Rope,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel").field("config", &self.config).finish()
    }
}

/// Tensor names in the two naming schemes we load.
#[derive(Clone, Copy)]
pub enum Naming {
    Gguf,
    HuggingFace,
}

impl Naming {
    fn global(self, what: &str) -> &'static str {
        match (self, what) {
            (Naming::Gguf, "embed") => "token_embd.weight",
            (Naming::Gguf, "norm") => "output_norm.weight",
            (Naming::Gguf, _) => "output.weight",
            (Naming::HuggingFace, "embed") => "model.embed_tokens.weight",
            (Naming::HuggingFace, "norm") => "model.norm.weight",
            (Naming::HuggingFace, _) => "lm_head.weight",
        }
    }

    fn layer(self, i: usize, what: &str) -> String {
        let (gguf, hf) = match what {
            "attn_norm" => ("attn_norm.weight", "input_layernorm.weight"),
            "q" => ("attn_q.weight", "self_attn.q_proj.weight"),
            "k" => ("attn_k.weight", "self_attn.k_proj.weight"),
            "v" => ("attn_v.weight", "self_attn.v_proj.weight"),
            "bq" => ("attn_q.bias", "self_attn.q_proj.bias"),
            "bk" => ("attn_k.bias", "self_attn.k_proj.bias"),
            "bv" => ("attn_v.bias", "self_attn.v_proj.bias"),
            "o" => ("attn_output.weight", "self_attn.o_proj.weight"),
            "ffn_norm" => ("ffn_norm.weight", "post_attention_layernorm.weight"),
            "gate" => ("ffn_gate.weight", "mlp.gate_proj.weight"),
            "up" => ("ffn_up.weight", "mlp.up_proj.weight"),
            _ => ("ffn_down.weight", "mlp.down_proj.weight"),
        };
        match self {
            Naming::Gguf => format!("blk.{i}.{gguf}"),
            Naming::HuggingFace => format!("model.layers.{i}.{hf}"),
        }
    }
}

impl LlamaModel {
    /// Assemble a model from `source`, checking every tensor's shape.
    pub fn load(mut config: ModelConfig, source: &dyn WeightSource, naming: Naming) -> Result<Self, ModelError> {
        let c = config.clone();
        let (h, qd, kvd) = (c.hidden, c.q_dim(), c.kv_dim());
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            Ok(source.require(name)?.expect_shape(1, len)?.to_f32())
        };
        let optional_vector = |name: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
            source.get(name)?.map(|w| w.expect_shape(1, len).map(|w| w.to_f32())).transpose()
        };
        let matrix = |name: &str, rows: usize, cols: usize| source.require(name)?.expect_shape(rows, cols);
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let n = |w| naming.layer(i, w);
            layers.push(Layer {
                attn_norm: vector(&n("attn_norm"), h)?,
                wq: matrix(&n("q"), qd, h)?,
                wk: matrix(&n("k"), kvd, h)?,
                wv: matrix(&n("v"), kvd, h)?,
                bq: optional_vector(&n("bq"), qd)?,
                bk: optional_vector(&n("bk"), kvd)?,
                bv: optional_vector(&n("bv"), kvd)?,
                wo: matrix(&n("o"), h, qd)?,
                ffn_norm: vector(&n("ffn_norm"), h)?,
                gate: matrix(&n("gate"), c.ffn, h)?,
                up: matrix(&n("up"), c.ffn, h)?,
                down: matrix(&n("down"), h, c.ffn)?,
            });
        }
        let embed = matrix(naming.global("embed"), c.vocab_size, h)?;
        let output = match source.get(naming.global("output"))? {
            Some(w) => w.expect_shape(c.vocab_size, h)?,
            None => embed.clone(),
        };
        if let Naming::Gguf = naming {
            if let Some(ff) = source.get("rope_freqs.weight")? {
                config.rope_scaling = RopeScaling::FreqFactors(ff.expect_shape(1, c.rope_dim / 2)?.to_f32());
            }
        }
        let rope = Rope::new(&config);
        Ok(Self { embed, layers, norm: vector(naming.global("norm"), h)?, output, rope, config })
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The token embedding table (`vocab_size × hidden`).
    pub fn embedding(&self) -> &Weight {
        &self.embed
    }

    /// The final RMSNorm's weight.
    pub fn output_norm(&self) -> &[f32] {
        &self.norm
    }

    /// The output projection (`vocab_size × hidden`; the embedding when tied).
    pub fn output(&self) -> &Weight {
        &self.output
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Bytes of every weight matrix a decode step reads once (the
    /// embedding table is only gathered from, unless it is also the output).
    pub fn matrix_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].iter().map(|w| w.bytes().len()).sum::<usize>())
            .sum();
        layers + self.output.bytes().len()
    }

    /// Run one step. Returns the logits of the tokens marked `logits`, in
    /// batch order, each `vocab_size` long.
    ///
    /// The caller guarantees every token id is below `vocab_size`, every
    /// block table covers its token's position, and `kv` was sized for this
    /// model; the engine's scheduler builds batches that way.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvStorage) -> Vec<f32> {
        let c = &self.config;
        let n = batch.tokens.len();
        let (h, qd, kvd, hd) = (c.hidden, c.q_dim(), c.kv_dim(), c.head_dim);
        let bs = kv.block_size();
        let slots: Vec<usize> = batch
            .tokens
            .iter()
            .map(|t| batch.block_tables[t.seq][t.pos / bs] as usize * bs + t.pos % bs)
            .collect();

        // Rotation angles depend only on the position: once per token.
        let angles: Vec<Vec<(f32, f32)>> = batch.tokens.iter().map(|t| self.rope.angles(t.pos)).collect();
        let mut x = vec![0f32; n * h];
        for (t, row) in batch.tokens.iter().zip(x.chunks_exact_mut(h)) {
            self.embed.matrix().row_into(t.token as usize, row);
        }
        let mut xn = vec![0f32; n * h];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut attn = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * h];
        let mut gate = vec![0f32; n * c.ffn];
        let mut up = vec![0f32; n * c.ffn];

        for (li, layer) in self.layers.iter().enumerate() {
            norm_rows(&x, &layer.attn_norm, c.rms_eps, &mut xn, h);
            matmul_group(&[layer.wq.matrix(), layer.wk.matrix(), layer.wv.matrix()], &xn, n, &mut [&mut q, &mut k, &mut v]);
            add_bias(&mut q, layer.bq.as_deref());
            add_bias(&mut k, layer.bk.as_deref());
            add_bias(&mut v, layer.bv.as_deref());
            for i in 0..n {
                self.rope.rotate(&mut q[i * qd..(i + 1) * qd], &angles[i]);
                self.rope.rotate(&mut k[i * kvd..(i + 1) * kvd], &angles[i]);
                kv.write(li, slots[i], &k[i * kvd..(i + 1) * kvd], &v[i * kvd..(i + 1) * kvd]);
            }
            self.attention(li, batch, &q, kv, &mut attn, hd);
            matmul(&layer.wo.matrix(), &attn, n, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);

            norm_rows(&x, &layer.ffn_norm, c.rms_eps, &mut xn, h);
            matmul_group(&[layer.gate.matrix(), layer.up.matrix()], &xn, n, &mut [&mut gate, &mut up]);
            for_each_chunk(&mut gate, c.ffn, |t, g| silu_mul(g, &up[t * c.ffn..(t + 1) * c.ffn]));
            matmul(&layer.down.matrix(), &gate, n, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }

        let wanted: Vec<usize> = (0..n).filter(|&i| batch.tokens[i].logits).collect();
        let mut last = vec![0f32; wanted.len() * h];
        for (row, &i) in last.chunks_exact_mut(h).zip(&wanted) {
            rms_norm(&x[i * h..(i + 1) * h], &self.norm, c.rms_eps, row);
        }
        let mut logits = vec![0f32; wanted.len() * c.vocab_size];
        if !wanted.is_empty() {
            matmul(&self.output.matrix(), &last, wanted.len(), &mut logits);
        }
        logits
    }

    fn attention(&self, layer: usize, batch: &ForwardBatch, q: &[f32], kv: &KvStorage, out: &mut [f32], hd: usize) {
        let c = &self.config;
        let group = c.heads / c.kv_heads;
        let n = batch.tokens.len();
        let out_ptr = SharedOut(out.as_mut_ptr());
        // One item per token and key/value head: the query heads sharing
        // that head are computed together.
        let items = n * c.kv_heads;
        let tasks = threads().min(items).max(1);
        parallel_for(tasks, |task| {
            let out_ptr = out_ptr;
            // Interleaved: later tokens attend over more positions, so
            // contiguous ranges would leave one task with most of the work.
            for item in (task..items).step_by(tasks) {
                let (i, kvh) = (item / c.kv_heads, item % c.kv_heads);
                // Heads kvh·group .. (kvh+1)·group, at most four at a time.
                let heads = kvh * group..(kvh + 1) * group;
                for first in heads.clone().step_by(4) {
                    let count = (heads.end - first).min(4);
                    // SAFETY: each (token, head) slice is written by exactly
                    // one task, and the heads of one call are distinct.
                    let out_of = |head: usize| unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.0.add(i * c.q_dim() + head * hd), hd)
                    };
                    match count {
                        4 => self.attend::<4>(layer, batch, q, kv, i, kvh, first, std::array::from_fn(|g| out_of(first + g))),
                        3 => self.attend::<3>(layer, batch, q, kv, i, kvh, first, std::array::from_fn(|g| out_of(first + g))),
                        2 => self.attend::<2>(layer, batch, q, kv, i, kvh, first, std::array::from_fn(|g| out_of(first + g))),
                        _ => self.attend::<1>(layer, batch, q, kv, i, kvh, first, [out_of(first)]),
                    }
                }
            }
        });
    }

    /// Attention of token `i` for the `G` query heads from `first`, which
    /// all read key/value head `kvh`.
    #[allow(clippy::too_many_arguments)]
    fn attend<const G: usize>(
        &self,
        layer: usize,
        batch: &ForwardBatch,
        q: &[f32],
        kv: &KvStorage,
        i: usize,
        kvh: usize,
        first: usize,
        outs: [&mut [f32]; G],
    ) {
        let c = &self.config;
        let (qd, hd) = (c.q_dim(), c.head_dim);
        let scale = 1.0 / (hd as f32).sqrt();
        let bs = kv.block_size();
        let t = batch.tokens[i];
        let table = batch.block_tables[t.seq];
        let qs: [&[f32]; G] = std::array::from_fn(|g| &q[i * qd + (first + g) * hd..i * qd + (first + g + 1) * hd]);
        let kvd = kv.kv_dim();
        let at = |p: usize| {
            let start = (table[p / bs] as usize * bs + p % bs) * kvd + kvh * hd;
            start..start + hd
        };
        match kv.layer(layer) {
            KvLayer::F16 { keys, values } => attention::attend_group_llama_cpp(
                Isa::current(),
                qs,
                t.pos + 1,
                scale,
                |p| &keys[at(p)],
                |p| &values[at(p)],
                outs,
            ),
            KvLayer::F32 { keys, values } => {
                for (qh, oh) in qs.into_iter().zip(outs) {
                    attention::attend_exact(qh, t.pos + 1, scale, |p| &keys[at(p)], |p| &values[at(p)], oh)
                }
            }
        }
    }
}

fn norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], width: usize) {
    for_each_chunk(out, width, |t, o| rms_norm(&x[t * width..(t + 1) * width], weight, eps, o));
}

/// Output pointer shared by attention tasks writing disjoint head slices.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint slices; see `LlamaModel::attention`.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
    }
}
