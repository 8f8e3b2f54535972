//! Matrix products between stored weight matrices and a batch of
//! activations.
//!
//! Every weight row is read once per call for the whole batch. Q4_0, Q4_1
//! and Q8_0 weights use integer kernels against activations quantised to 8
//! bits per token (`qdot`); other types dequantise a row into scratch and
//! use the `f32` dot. Rows are split across the compute pool. A row's output
//! depends only on that weight row and that token's activations, so results
//! are batch-invariant.
//!
//! [`matmul_group`] runs several matrices that read the same input (Q, K and
//! V; gate and up) as one parallel loop, quantising the input once.

use crate::dequant::dequantize;
use crate::dot::{Isa, dot_with};
use crate::dtype::WeightType;
use crate::pool::{parallel_for, split, threads};
use crate::qdot::{BlockQ8, block_sums, dot_row_pair, dot_rows, has_integer_kernel, quantize_row};

/// A borrowed weight matrix of `rows × cols` elements in `ty`'s layout, row
/// major (GGUF's `[cols, rows]` dimension order).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub ty: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl Matrix<'_> {
    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_len() * self.ty.block_bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantise row `r` into `out` (`cols` long).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        dequantize(self.ty, self.row(r), out);
    }
}

/// Weight bytes the 512-bit path keeps in cache while it passes every
/// token tile over them (a quarter of a typical 1-2 MiB L2).
const WIDE_CHUNK_BYTES: usize = 256 * 1024;

/// Raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, token) elements; see `matmul_group`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Quantised-activation pointer shared by tasks quantising disjoint tokens.
#[derive(Clone, Copy)]
struct QPtr(*mut BlockQ8);
// SAFETY: tasks write disjoint tokens' blocks; see `matmul_group`.
unsafe impl Send for QPtr {}
unsafe impl Sync for QPtr {}

/// `out[t][r] = Σ_c w[r][c] · x[t][c]` for `t < n`.
///
/// `x` holds `n × w.cols` floats, `out` holds `n × w.rows`.
pub fn matmul(w: &Matrix, x: &[f32], n: usize, out: &mut [f32]) {
    matmul_group(&[*w], x, n, &mut [out]);
}

/// [`matmul`] for several matrices with the same input width, in one
/// parallel loop.
pub fn matmul_group(ws: &[Matrix], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len(), "one output per matrix");
    let cols = ws[0].cols;
    assert_eq!(x.len(), n * cols, "activation shape");
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(w.cols, cols, "matrices in a group share the input width");
        assert_eq!(out.len(), n * w.rows, "output shape");
        assert_eq!(w.data.len(), w.rows * w.row_bytes(), "weight shape");
    }
    let isa = Isa::current();
    let quantized: Vec<BlockQ8> = if ws.iter().any(|w| has_integer_kernel(w.ty)) {
        let bpr = cols / 32;
        let mut q = vec![BlockQ8::default(); n * bpr];
        let qp = QPtr(q.as_mut_ptr());
        let tasks = threads().min(n);
        parallel_for(tasks, |task| {
            let qp = qp;
            for t in split(n, tasks, task) {
                // SAFETY: token `t`'s blocks are written by this task only.
                let blocks = unsafe { std::slice::from_raw_parts_mut(qp.0.add(t * bpr), bpr) };
                quantize_row(&x[t * cols..(t + 1) * cols], blocks);
            }
        });
        q
    } else {
        Vec::new()
    };
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    // With 512-bit registers, integer matrices go two rows at a time over
    // tiles of tokens.
    let wide = isa == Isa::Avx512Vnni && ws.iter().all(|w| has_integer_kernel(w.ty));
    let total_rows: usize = ws.iter().map(|w| w.rows).sum();
    // Enough tasks to balance, few enough that each amortises its claim.
    let tasks = (threads() * 4).min(total_rows.div_ceil(4)).max(1);
    parallel_for(tasks, |task| {
        let mut scratch = Vec::new();
        // Split on even rows so that row pairs stay within one task.
        let pairs = split(total_rows.div_ceil(2), tasks, task);
        let rows = 2 * pairs.start..(2 * pairs.end).min(total_rows);
        if wide {
            // SAFETY: `t < n` and `r < ws[wi].rows`, and this task owns
            // its rows of every matrix (as in the loop below).
            let put = |wi: usize, r: usize, t: usize, v: f32| unsafe { *ptrs[wi].0.add(t * ws[wi].rows + r) = v };
            let bpr = cols / 32;
            let act = |t: usize| &quantized[t * bpr..(t + 1) * bpr];
            // Rows in chunks whose weights stay in L2 while every token
            // tile passes over them, so each weight is read from memory
            // once per call however many tokens there are.
            let chunk = (WIDE_CHUNK_BYTES / ws[0].row_bytes()).max(2) & !1;
            for start in rows.clone().step_by(chunk) {
                let chunk = start..(start + chunk).min(rows.end);
                let mut t = 0;
                while t < n {
                    let tile = tile_len(n - t);
                    let put = &put;
                    let put_tile = move |wi: usize, r: usize, k: usize, v: f32| put(wi, r, t + k, v);
                    match tile {
                        16 => wide_tile::<16>(ws, chunk.clone(), std::array::from_fn(|k| act(t + k)), put_tile),
                        8 => wide_tile::<8>(ws, chunk.clone(), std::array::from_fn(|k| act(t + k)), put_tile),
                        4 => wide_tile::<4>(ws, chunk.clone(), std::array::from_fn(|k| act(t + k)), put_tile),
                        2 => wide_tile::<2>(ws, chunk.clone(), std::array::from_fn(|k| act(t + k)), put_tile),
                        _ => wide_tile::<1>(ws, chunk.clone(), [act(t)], put_tile),
                    }
                    t += tile;
                }
            }
            return;
        }
        let mut global = rows.start;
        while global < rows.end {
            let (wi, r) = locate(ws, global);
            let w = &ws[wi];
            let out = ptrs[wi];
            // SAFETY (all writes): `t < n`, `r < w.rows`: inside this
            // output, and each (matrix, row) belongs to exactly one task.
            let put = |r: usize, t: usize, v: f32| unsafe { *out.0.add(t * w.rows + r) = v };
            if has_integer_kernel(w.ty) {
                let bpr = cols / 32;
                let act = |t: usize| &quantized[t * bpr..(t + 1) * bpr];
                let tiled = n / 4 * 4;
                for t in (0..tiled).step_by(4) {
                    let v = dot_rows::<1, 4>(isa, w.ty, [w.row(r)], [act(t), act(t + 1), act(t + 2), act(t + 3)]);
                    v[0].iter().enumerate().for_each(|(k, &v)| put(r, t + k, v));
                }
                for t in tiled..n {
                    put(r, t, dot_rows::<1, 1>(isa, w.ty, [w.row(r)], [act(t)])[0][0]);
                }
            } else {
                scratch.resize(cols, 0.0);
                dequantize(w.ty, w.row(r), &mut scratch);
                for t in 0..n {
                    put(r, t, dot_with(isa, &scratch, &x[t * cols..(t + 1) * cols]));
                }
            }
            global += 1;
        }
    });
}

/// One tile of `T` tokens against rows `rows` of the concatenated group,
/// two rows at a time (a row whose partner lies in another matrix or task
/// goes alone, with the same arithmetic). `put(matrix, row, k, v)` stores
/// token `k` of the tile.
fn wide_tile<const T: usize>(
    ws: &[Matrix],
    rows: std::ops::Range<usize>,
    acts: [&[BlockQ8]; T],
    put: impl Fn(usize, usize, usize, f32),
) {
    let isa = Isa::Avx512Vnni;
    let sums = block_sums(acts);
    let mut global = rows.start;
    while global < rows.end {
        let (wi, r) = locate(ws, global);
        let w = &ws[wi];
        if r + 1 < w.rows && global + 1 < rows.end {
            let v = dot_row_pair::<T>(isa, w.ty, [w.row(r), w.row(r + 1)], acts, &sums);
            for (k, (&first, &second)) in v[0].iter().zip(&v[1]).enumerate() {
                put(wi, r, k, first);
                put(wi, r + 1, k, second);
            }
            global += 2;
        } else {
            for (k, a) in acts.iter().enumerate() {
                put(wi, r, k, dot_rows::<1, 1>(isa, w.ty, [w.row(r)], [a])[0][0]);
            }
            global += 1;
        }
    }
}

/// The largest token tile (16, 8, 4, 2 or 1) that fits in `left` tokens.
/// Sixteen tokens' accumulators are as many as the 32 vector registers
/// hold beside the weights, scales and offsets.
fn tile_len(left: usize) -> usize {
    [16, 8, 4, 2].into_iter().find(|&k| left >= k).unwrap_or(1)
}

/// Which matrix and row a row index of the concatenated group names.
fn locate(ws: &[Matrix], mut row: usize) -> (usize, usize) {
    for (i, w) in ws.iter().enumerate() {
        if row < w.rows {
            return (i, row);
        }
        row -= w.rows;
    }
    unreachable!("row index within the group")
}
