//! Matrix products between a stored weight matrix and a batch of activations.
//!
//! The weight is read once per call for the whole batch: each task
//! dequantises a row into scratch and dots it with every activation row.
//! Work is split over rows across the rayon pool. A row's output depends only
//! on that weight row and that activation row, so results are batch-invariant.

use rayon::prelude::*;

use crate::dequant::dequantize;
use crate::dot::dot;
use crate::dtype::WeightType;

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

    /// Dequantise row `r` into `out` (`cols` long).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        dequantize(self.ty, &self.data[r * rb..(r + 1) * rb], out);
    }
}

/// Raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, token) elements; see `matmul`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[t][r] = Σ_c w[r][c] · x[t][c]` for `t < n`.
///
/// `x` holds `n × w.cols` floats, `out` holds `n × w.rows`.
pub fn matmul(w: &Matrix, x: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols, "activation shape");
    assert_eq!(out.len(), n * w.rows, "output shape");
    assert_eq!(w.data.len(), w.rows * w.row_bytes(), "weight shape");
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task = (w.rows / (threads * 8)).clamp(4, 256);
    let ptr = OutPtr(out.as_mut_ptr());
    let (rows, cols) = (w.rows, w.cols);
    (0..rows.div_ceil(rows_per_task)).into_par_iter().for_each_init(
        || vec![0f32; cols],
        |scratch, task| {
            let ptr = ptr;
            let start = task * rows_per_task;
            let end = (start + rows_per_task).min(rows);
            for r in start..end {
                w.row_into(r, scratch);
                for t in 0..n {
                    let v = dot(scratch, &x[t * cols..(t + 1) * cols]);
                    // SAFETY: `t < n` and `r < rows`, so the index is inside
                    // `out`, and each (t, r) pair belongs to exactly one task.
                    unsafe { *ptr.0.add(t * rows + r) = v };
                }
            }
        },
    );
}
