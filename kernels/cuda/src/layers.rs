//! RMSNorm, RoPE and SwiGLU launches (`kernels/layers.cu`).

use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::error::{CudaError, Result, driver};
use crate::runtime::LAYERS;
use crate::{CudaKernels, arg_i32, arg_u32, launch_cfg};

/// Which dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): GGUF llama models (llama.cpp's "normal" mode).
    Adjacent,
    /// Pairs (i, i + rot_dim/2): Hugging Face / GPT-NeoX models.
    NeoX,
}

/// Inverse frequencies for RoPE, resident on the device.
#[derive(Debug)]
pub struct RopeTable {
    inv_freq: CudaSlice<f64>,
    rot_dim: usize,
    layout: RopeLayout,
}

impl RopeTable {
    pub fn rot_dim(&self) -> usize {
        self.rot_dim
    }
    pub fn layout(&self) -> RopeLayout {
        self.layout
    }
}

impl CudaKernels {
    /// RoPE over the first `rot_dim` dimensions of each head with frequency
    /// base `base` and linear position scaling `linear_factor` (positions are
    /// divided by it; 1.0 = no scaling).
    pub fn rope_table(
        &self,
        rot_dim: usize,
        base: f64,
        linear_factor: f64,
        layout: RopeLayout,
    ) -> Result<RopeTable> {
        const OP: &str = "building a RoPE table";
        if !(base > 0.0 && base.is_finite() && linear_factor > 0.0 && linear_factor.is_finite()) {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "base ({base}) and linear factor ({linear_factor}) must be positive and finite"
                ),
            ));
        }
        let inv: Vec<f64> = (0..rot_dim / 2)
            .map(|i| base.powf(-((2 * i) as f64) / rot_dim as f64) / linear_factor)
            .collect();
        self.rope_table_from_inv_freq(&inv, layout)
    }

    /// RoPE with explicit inverse frequencies (for Llama 3 or per-frequency
    /// scaling computed by the caller); rot_dim is twice their count.
    pub fn rope_table_from_inv_freq(
        &self,
        inv_freq: &[f64],
        layout: RopeLayout,
    ) -> Result<RopeTable> {
        if inv_freq.is_empty() || inv_freq.iter().any(|f| !f.is_finite()) {
            return Err(CudaError::invalid(
                "building a RoPE table",
                "inverse frequencies must be non-empty and finite",
            ));
        }
        Ok(RopeTable {
            inv_freq: self.upload(inv_freq)?,
            rot_dim: 2 * inv_freq.len(),
            layout,
        })
    }

    /// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight` for `rows` rows of `dim`.
    pub fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        self.check_buf(OP, "x", x, rows * dim)?;
        self.check_buf(OP, "weight", weight, dim)?;
        self.check_buf(OP, "out", out, rows * dim)?;
        let f = self.function(LAYERS, None, "rms_norm_f32")?;
        let dim_i = arg_i32(OP, "dim", dim)?;
        let cfg = launch_cfg((arg_u32(OP, "rows", rows)?, 1, 1), 256, 0);
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(weight).arg(out).arg(&dim_i).arg(&eps);
        // SAFETY: x and out hold rows*dim floats and weight dim floats (checked
        // above); the kernel indexes only below those bounds.
        unsafe { b.launch(cfg) }.map_err(driver("launching rms_norm"))?;
        Ok(())
    }

    /// Rotate `x` (`positions.len()` tokens × `n_heads` × `head_dim`) in place,
    /// token t at position `positions[t]`.
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        table: &RopeTable,
    ) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let pos = self.upload(positions)?;
        self.rope_at(x, &pos, positions.len(), n_heads, head_dim, table)
    }

    /// [`Self::rope`] with the positions of `tokens` tokens already on the
    /// device (uploaded once per step for every layer).
    pub fn rope_at(
        &self,
        x: &mut CudaSlice<f32>,
        positions: &CudaSlice<u32>,
        tokens: usize,
        n_heads: usize,
        head_dim: usize,
        table: &RopeTable,
    ) -> Result<()> {
        const OP: &str = "rope";
        if table.rot_dim > head_dim || !table.rot_dim.is_multiple_of(2) {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "rot_dim {} must be even and ≤ head_dim {head_dim}",
                    table.rot_dim
                ),
            ));
        }
        if tokens == 0 || n_heads == 0 {
            return Ok(());
        }
        self.check_buf(OP, "x", x, tokens * n_heads * head_dim)?;
        self.check_buf(OP, "positions", positions, tokens)?;
        self.check_buf(OP, "RoPE table", &table.inv_freq, table.rot_dim / 2)?;
        let f = self.function(LAYERS, None, "rope_f32")?;
        let (nh, hd, rd) = (
            arg_i32(OP, "n_heads", n_heads)?,
            arg_i32(OP, "head_dim", head_dim)?,
            arg_i32(OP, "rot_dim", table.rot_dim)?,
        );
        let neox = i32::from(table.layout == RopeLayout::NeoX);
        let smem = arg_u32(OP, "shared memory", table.rot_dim * 4)?;
        let cfg = launch_cfg((arg_u32(OP, "tokens", tokens)?, 1, 1), 128, smem);
        let mut b = self.stream.launch_builder(&f);
        b.arg(x)
            .arg(positions)
            .arg(&table.inv_freq)
            .arg(&nh)
            .arg(&hd)
            .arg(&rd)
            .arg(&neox);
        // SAFETY: x holds tokens*n_heads*head_dim floats, positions tokens ids
        // and the table rot_dim/2 doubles (checked); rot_dim ≤ head_dim.
        unsafe { b.launch(cfg) }.map_err(driver("launching rope"))?;
        Ok(())
    }

    /// `out[i] = silu(gate[i]) * up[i]` for i < n.
    pub fn swiglu(
        &self,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "swiglu";
        if n == 0 {
            return Ok(());
        }
        self.check_buf(OP, "gate", gate, n)?;
        self.check_buf(OP, "up", up, n)?;
        self.check_buf(OP, "out", out, n)?;
        let f = self.function(LAYERS, None, "swiglu_f32")?;
        let blocks = n.div_ceil(256).min(self.sm_count() as usize * 16);
        let cfg = launch_cfg((blocks as u32, 1, 1), 256, 0);
        let n_i = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(gate).arg(up).arg(out).arg(&n_i);
        // SAFETY: all three buffers hold at least n floats (checked).
        unsafe { b.launch(cfg) }.map_err(driver("launching swiglu"))?;
        Ok(())
    }

    /// `x[i] += y[i]` for i < n.
    pub fn add(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) -> Result<()> {
        const OP: &str = "add";
        if n == 0 {
            return Ok(());
        }
        self.check_buf(OP, "x", x, n)?;
        self.check_buf(OP, "y", y, n)?;
        let f = self.function(LAYERS, None, "add_f32")?;
        let blocks = n.div_ceil(256).min(self.sm_count() as usize * 16);
        let cfg = launch_cfg((blocks as u32, 1, 1), 256, 0);
        let n_i = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(y).arg(&n_i);
        // SAFETY: both buffers hold at least n floats (checked).
        unsafe { b.launch(cfg) }.map_err(driver("launching add"))?;
        Ok(())
    }

    /// `x[r] += bias` for each of `rows` rows of `bias.len()` floats.
    pub fn add_bias(&self, x: &mut CudaSlice<f32>, bias: &CudaSlice<f32>, rows: usize) -> Result<()> {
        const OP: &str = "add_bias";
        let dim = bias.len();
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        self.check_buf(OP, "x", x, rows * dim)?;
        let f = self.function(LAYERS, None, "add_bias_f32")?;
        let cfg = launch_cfg((arg_u32(OP, "rows", rows)?, 1, 1), 128, 0);
        let dim_i = arg_i32(OP, "dim", dim)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(bias).arg(&dim_i);
        // SAFETY: x holds rows*dim floats (checked), bias dim.
        unsafe { b.launch(cfg) }.map_err(driver("launching add_bias"))?;
        Ok(())
    }

    /// `out[i] = x[rows[i]]` for rows of `dim` floats; every index must be
    /// below `x_rows`.
    pub fn gather_rows(
        &self,
        x: &CudaSlice<f32>,
        x_rows: usize,
        rows: &[u32],
        dim: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        if rows.is_empty() || dim == 0 {
            return Ok(());
        }
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= x_rows) {
            return Err(CudaError::invalid(OP, format!("row {bad} of {x_rows}")));
        }
        self.check_buf(OP, "x", x, x_rows * dim)?;
        self.check_buf(OP, "out", out, rows.len() * dim)?;
        let rows_dev = self.upload(rows)?;
        let f = self.function(LAYERS, None, "gather_rows_f32")?;
        let cfg = launch_cfg((arg_u32(OP, "rows", rows.len())?, 1, 1), 128, 0);
        let dim_i = arg_i32(OP, "dim", dim)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(&rows_dev).arg(out).arg(&dim_i);
        // SAFETY: every row index is below x_rows (checked); x holds
        // x_rows*dim floats and out rows.len()*dim.
        unsafe { b.launch(cfg) }.map_err(driver("launching gather_rows"))?;
        Ok(())
    }
}
