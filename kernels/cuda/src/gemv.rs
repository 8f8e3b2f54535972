//! Weight upload, GEMV and embedding launches (`kernels/gemv.cu`).
//!
//! The GEMV kernels exist for batch sizes 1, 2, 4 and 8 (activation vectors
//! per launch, each weight read once per launch); other batch sizes are split
//! into those pieces, largest first. For batches well past 8 a GEMM (see
//! [`CudaKernels::gemm_f32`]) is the better tool.

use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::error::{CudaError, Result, driver};
use crate::runtime::GEMV;
use crate::weights::{DeviceMatrix, WeightType};
use crate::{CudaKernels, arg_i32, arg_u32, grid_y_pieces, launch_cfg};

/// Kernel names by (batch index in [1, 2, 4, 8], rows-per-warp index in [1, 2, 4]).
const NAMES: [[&str; 3]; 4] = [
    ["gemv_b1_r1", "gemv_b1_r2", "gemv_b1_r4"],
    ["gemv_b2_r1", "gemv_b2_r2", "gemv_b2_r4"],
    ["gemv_b4_r1", "gemv_b4_r2", "gemv_b4_r4"],
    ["gemv_b8_r1", "gemv_b8_r2", "gemv_b8_r4"],
];
/// The staged (shared-memory, cp.async) variants of the same.
const STAGED_NAMES: [[&str; 3]; 4] = [
    ["gemvs_b1_r1", "gemvs_b1_r2", "gemvs_b1_r4"],
    ["gemvs_b2_r1", "gemvs_b2_r2", "gemvs_b2_r4"],
    ["gemvs_b4_r1", "gemvs_b4_r2", "gemvs_b4_r4"],
    ["gemvs_b8_r1", "gemvs_b8_r2", "gemvs_b8_r4"],
];

/// Token ids checked against an embedding table and on the device
/// ([`CudaKernels::token_ids`]).
#[derive(Debug)]
pub struct TokenIds {
    rows: usize,
    len: usize,
    ids: Option<CudaSlice<u32>>,
}

/// Which GEMV implementation to launch.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvPath {
    /// The measured-faster kernels for the format and batch (see `prefer_staged`).
    Auto,
    /// Staged through shared memory whenever format and alignment allow it.
    Staged,
    /// Always the direct kernels.
    Direct,
}

fn staged_possible(ty: WeightType, cols: usize) -> bool {
    ty != WeightType::F32 && ty.row_bytes(cols).is_multiple_of(16)
}

/// Whether the staged kernels are the faster choice for `ty` at a batch
/// piece of `piece` vectors, from H100 measurements at the Llama-3-8B shapes
/// (the `bench` timing harness in tests/kernels): the 16-bit formats stream
/// well with direct 16-byte loads except at batch 8, and Q4_1's 4-byte
/// aligned blocks favour direct loads at batch 1; every other block format
/// is faster staged.
fn prefer_staged(ty: WeightType, piece: usize) -> bool {
    match ty {
        WeightType::F32 => false,
        WeightType::F16 | WeightType::BF16 => piece >= 8,
        WeightType::Q4_1 => piece > 1,
        _ => true,
    }
}

/// Warps per GEMV block (the kernels are compiled for 128 threads).
const WARPS: usize = 4;

impl CudaKernels {
    /// Upload a `rows × cols` tensor given as its GGUF bytes (row-major, each
    /// row `cols / block_len` whole blocks).
    pub fn upload_matrix(
        &self,
        ty: WeightType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<DeviceMatrix> {
        const OP: &str = "uploading a weight matrix";
        if rows == 0 || cols == 0 || !cols.is_multiple_of(ty.col_multiple()) {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "{ty:?} needs rows ≥ 1 and cols a positive multiple of {}; given {rows} × {cols}",
                    ty.col_multiple()
                ),
            ));
        }
        arg_i32(OP, "rows", rows)?;
        arg_i32(OP, "cols", cols)?;
        let want = rows * ty.row_bytes(cols);
        if bytes.len() != want {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "{rows} × {cols} {ty:?} is {want} bytes; given {}",
                    bytes.len()
                ),
            ));
        }
        Ok(DeviceMatrix {
            ty,
            rows,
            cols,
            data: self.upload(bytes)?,
        })
    }

    /// `y[b] = W · x[b]` for `b < batch`; x is `batch × cols`, y `batch × rows`.
    pub fn gemv(
        &self,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        batch: usize,
    ) -> Result<()> {
        self.gemv_with_path(w, x, y, batch, GemvPath::Auto)
    }

    /// [`Self::gemv`] with an explicit implementation choice.
    #[doc(hidden)]
    pub fn gemv_with_path(
        &self,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        batch: usize,
        path: GemvPath,
    ) -> Result<()> {
        const OP: &str = "gemv";
        let (rows, cols) = (w.rows, w.cols);
        if batch == 0 {
            return Ok(());
        }
        self.check_buf(OP, "weights", &w.data, w.bytes())?;
        self.check_buf(OP, "x", x, batch * cols)?;
        self.check_buf(OP, "y", y, batch * rows)?;
        let rows_i = arg_i32(OP, "rows", rows)?;
        let cols_i = arg_i32(OP, "cols", cols)?;
        let row_bytes = w.ty.row_bytes(cols) as i64;

        let min_warps = 8 * self.sm_count() as usize;
        let can_stage = path != GemvPath::Direct && staged_possible(w.ty, cols);
        // Rows per warp: as many as keep at least 8 warps per SM busy (more
        // rows per warp reuse each x load; fewer give more warps). Staged
        // Q6_K, F16 and BF16 have no 4-row variant (two pipeline stages of
        // four rows would pass 48 KB of shared memory).
        let rows_per_warp = |staged: bool| {
            let max_r =
                if staged && matches!(w.ty, WeightType::Q6K | WeightType::F16 | WeightType::BF16) {
                    1
                } else {
                    2
                };
            [2usize, 1, 0]
                .into_iter()
                .find(|&i| i <= max_r && rows.div_ceil(1 << i) >= min_warps)
                .unwrap_or(0)
        };
        let mut done = 0;
        while done < batch {
            let left = batch - done;
            let (b_idx, piece) = match left {
                8.. => (3, 8),
                4..=7 => (2, 4),
                2..=3 => (1, 2),
                _ => (0, 1),
            };
            let staged = can_stage && (path == GemvPath::Staged || prefer_staged(w.ty, piece));
            let r_idx = rows_per_warp(staged);
            let names = if staged { &STAGED_NAMES } else { &NAMES };
            let f = self.function(GEMV, Some(w.ty.define()), names[b_idx][r_idx])?;
            let rows_per_block = WARPS << r_idx;
            let cfg = launch_cfg(
                (arg_u32(OP, "blocks", rows.div_ceil(rows_per_block))?, 1, 1),
                32 * WARPS as u32,
                0,
            );
            let xs = x.slice(done * cols..(done + piece) * cols);
            let mut ys = y.slice_mut(done * rows..(done + piece) * rows);
            let mut b = self.stream.launch_builder(&f);
            b.arg(&w.data)
                .arg(&xs)
                .arg(&mut ys)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&row_bytes);
            // SAFETY: the weights hold rows*row_bytes bytes in the declared
            // format, xs piece*cols floats and ys piece*rows floats (checked);
            // the kernel reads rows < rows and chunks < cols / CHUNK only.
            unsafe { b.launch(cfg) }.map_err(driver("launching gemv"))?;
            done += piece;
        }
        Ok(())
    }

    /// `out[t] = dequantised row ids[t] of table` (`ids.len() × cols` floats).
    pub fn embed(&self, table: &DeviceMatrix, ids: &[u32], out: &mut CudaSlice<f32>) -> Result<()> {
        let ids = self.token_ids(table, ids)?;
        self.embed_at(table, &ids, out)
    }

    /// Check `ids` against `table`'s rows and upload them, once per step,
    /// for [`Self::embed_at`].
    pub fn token_ids(&self, table: &DeviceMatrix, ids: &[u32]) -> Result<TokenIds> {
        self.check_ids(table, ids)?;
        Ok(TokenIds {
            rows: table.rows,
            len: ids.len(),
            ids: (!ids.is_empty()).then(|| self.upload(ids)).transpose()?,
        })
    }

    fn check_ids(&self, table: &DeviceMatrix, ids: &[u32]) -> Result<()> {
        match ids.iter().enumerate().find(|&(_, &id)| id as usize >= table.rows) {
            Some((t, &id)) => Err(CudaError::invalid(
                "embedding lookup",
                format!("token {t} has id {id}; the table has {} rows", table.rows),
            )),
            None => Ok(()),
        }
    }

    /// Put a later step's `ids` into `dev` in place (same count, checked
    /// against `table`), for a replayed CUDA graph; false when the count differs.
    pub fn refill_token_ids(&self, dev: &mut TokenIds, table: &DeviceMatrix, ids: &[u32]) -> Result<bool> {
        if ids.len() != dev.len || dev.rows > table.rows {
            return Ok(false);
        }
        self.check_ids(table, ids)?;
        if let Some(buf) = &mut dev.ids {
            self.refill(buf, ids)?;
        }
        Ok(true)
    }

    /// [`Self::embed`] of ids uploaded by [`Self::token_ids`].
    pub fn embed_at(&self, table: &DeviceMatrix, ids: &TokenIds, out: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "embedding lookup";
        let Some(ids_dev) = &ids.ids else { return Ok(()) };
        if ids.rows > table.rows {
            return Err(CudaError::invalid(OP, "the ids were checked against a larger table"));
        }
        self.check_buf(OP, "table", &table.data, table.bytes())?;
        self.check_buf(OP, "out", out, ids.len * table.cols)?;
        let f = self.function(GEMV, Some(table.ty.define()), "embed_rows")?;
        let blocks = arg_u32(OP, "blocks", (table.cols / table.ty.chunk()).div_ceil(128))?;
        let cols_i = arg_i32(OP, "cols", table.cols)?;
        let row_bytes = table.ty.row_bytes(table.cols) as i64;
        // grid.y is limited, so long prompts go in pieces.
        for piece in grid_y_pieces(ids.len) {
            let (start, n) = (piece.start, piece.len());
            let ids_piece = ids_dev.slice(piece);
            let mut out_piece = out.slice_mut(start * table.cols..(start + n) * table.cols);
            let cfg = launch_cfg((blocks, n as u32, 1), 128, 0);
            let mut b = self.stream.launch_builder(&f);
            b.arg(&table.data)
                .arg(&ids_piece)
                .arg(&mut out_piece)
                .arg(&cols_i)
                .arg(&row_bytes);
            // SAFETY: every id is below the row count (checked by token_ids
            // against a table at most this large), out_piece holds n*cols floats.
            unsafe { b.launch(cfg) }.map_err(driver("launching embed_rows"))?;
        }
        Ok(())
    }

    /// `out = W` as `rows × cols` f32 values.
    pub fn dequantize(&self, w: &DeviceMatrix, out: &mut CudaSlice<f32>) -> Result<()> {
        self.dequantize_rows(w, 0..w.rows, out)
    }

    /// Rows `rows` of `W` as f32 values, from the start of `out` (a panel
    /// for [`CudaKernels::gemm_dequantized`]).
    pub fn dequantize_rows(&self, w: &DeviceMatrix, rows: std::ops::Range<usize>, out: &mut CudaSlice<f32>) -> Result<()> {
        const OP: &str = "dequantize";
        if rows.start > rows.end || rows.end > w.rows {
            return Err(CudaError::invalid(OP, format!("rows {rows:?} of a {}-row matrix", w.rows)));
        }
        self.check_buf(OP, "weights", &w.data, w.bytes())?;
        self.check_buf(OP, "out", out, rows.len() * w.cols)?;
        let f = self.function(GEMV, Some(w.ty.define()), "dequant_rows")?;
        let blocks = arg_u32(OP, "blocks", (w.cols / w.ty.chunk()).div_ceil(128))?;
        let cols_i = arg_i32(OP, "cols", w.cols)?;
        let row_bytes = w.ty.row_bytes(w.cols) as i64;
        let out_first = arg_i32(OP, "first row", rows.start)?;
        for piece in grid_y_pieces(rows.len()) {
            let n = piece.len();
            let first_i = arg_i32(OP, "first row", rows.start + piece.start)?;
            let cfg = launch_cfg((blocks, n as u32, 1), 128, 0);
            let mut b = self.stream.launch_builder(&f);
            b.arg(&w.data).arg(&mut *out).arg(&cols_i).arg(&row_bytes).arg(&first_i).arg(&out_first);
            // SAFETY: rows first..first+n exist in the weights (checked size)
            // and out holds the panel's rows.len()*cols floats.
            unsafe { b.launch(cfg) }.map_err(driver("launching dequant_rows"))?;
        }
        Ok(())
    }
}
