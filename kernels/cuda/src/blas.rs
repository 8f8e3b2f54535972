//! cuBLAS products for shapes where a GEMM beats the GEMV kernels (prefill,
//! large batches). The cuBLAS handle is created on first use, so machines
//! without libcublas can still use every other kernel.

use std::sync::Arc;

use std::ffi::c_void;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, result as bresult, sys as bsys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};

use crate::error::{CudaError, Result, driver};
use crate::runtime::LAYERS;
use crate::weights::{DeviceMatrix, WeightType};
use crate::{CudaKernels, arg_i32, launch_cfg};

impl CudaKernels {
    fn blas(&self) -> Result<Arc<CudaBlas>> {
        let mut slot = self.blas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        // SAFETY: only tries to open the library with the dynamic loader.
        if !unsafe { bsys::is_culib_present() } {
            return Err(CudaError::NoCublas(
                "libcublas (libcublas.so.13) could not be opened by the dynamic loader; \
                 install the CUDA 13 cuBLAS library or add its directory to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let stream = self.stream.clone();
        let blas = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| CudaBlas::new(stream)))
            .map_err(|_| CudaError::NoCublas("cuBLAS is missing a required symbol".into()))?
            .map_err(|source| CudaError::Cublas {
                phase: "creating a handle",
                source,
            })?;
        let blas = Arc::new(blas);
        *slot = Some(blas.clone());
        Ok(blas)
    }

    /// `y = x · wᵀ` in f32 (row-major: x is `n × k`, w is `m × k`, y is `n × m`),
    /// the layout of a linear layer over `n` tokens. Uses cuBLAS SGEMM with
    /// its default (full fp32, no TF32) math mode.
    pub fn gemm_f32(&self, x: &CudaSlice<f32>, w: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize, m: usize, k: usize) -> Result<()> {
        self.gemm_f32_columns(x, w, y, n, k, 0..m, m)
    }

    /// Columns `cols` of `y = x · wᵀ`, where y's rows are `ldy` wide and
    /// `w` holds just those columns' weights (`cols.len() × k`): one panel
    /// of a linear layer whose weights do not fit in one dense buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f32_columns(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        n: usize,
        k: usize,
        cols: std::ops::Range<usize>,
        ldy: usize,
    ) -> Result<()> {
        const OP: &str = "gemm_f32";
        let m = cols.len();
        if cols.start > cols.end || cols.end > ldy {
            return Err(CudaError::invalid(OP, format!("columns {cols:?} of rows {ldy} wide")));
        }
        if n == 0 || m == 0 {
            return Ok(());
        }
        self.check_buf(OP, "x", x, n * k)?;
        self.check_buf(OP, "w", w, m * k)?;
        self.check_buf(OP, "y", y, n * ldy)?;
        let (n_i, m_i, k_i, ldy_i) = (arg_i32(OP, "n", n)?, arg_i32(OP, "m", m)?, arg_i32(OP, "k", k)?, arg_i32(OP, "ldy", ldy)?);
        // Column-major view: yᵀ (m × n, leading dimension ldy) = wᵀᵀ (m × k)
        // · xᵀ (k × n), where the row-major w and x read as column-major
        // k × m and k × n matrices.
        let cfg = GemmConfig {
            transa: bsys::cublasOperation_t::CUBLAS_OP_T,
            transb: bsys::cublasOperation_t::CUBLAS_OP_N,
            m: m_i,
            n: n_i,
            k: k_i,
            alpha: 1.0f32,
            lda: k_i,
            ldb: k_i,
            beta: 0.0f32,
            ldc: ldy_i,
        };
        let blas = self.blas()?;
        let mut out = y.slice_mut(cols.start..);
        // SAFETY: x and w hold n*k and m*k floats, y n*ldy from column 0
        // (checked), so every row's columns cols lie inside it.
        unsafe { blas.gemm(cfg, w, x, &mut out) }.map_err(|source| CudaError::Cublas {
            phase: "running SGEMM",
            source,
        })
    }

    /// `y = x · Wᵀ` (`n` tokens) for quantised or F32 weights through
    /// SGEMM, `W` dequantised into `scratch` a panel of whole rows at a
    /// time (as many as it holds): the scratch stays bounded however large
    /// the matrix (a 128k-entry vocabulary's output projection included).
    pub fn gemm_dequantized(&self, x: &CudaSlice<f32>, w: &DeviceMatrix, y: &mut CudaSlice<f32>, n: usize, scratch: &mut CudaSlice<f32>) -> Result<()> {
        let (m, k) = (w.rows(), w.cols());
        let panel = (scratch.len() / k).min(m);
        if panel == 0 {
            return Err(CudaError::invalid("gemm_dequantized", format!("a scratch of {} floats holds no row of {k}", scratch.len())));
        }
        let mut start = 0;
        while start < m {
            let rows = start..(start + panel).min(m);
            self.dequantize_rows(w, rows.clone(), scratch)?;
            self.gemm_f32_columns(x, scratch, y, n, k, rows.clone(), m)?;
            start = rows.end;
        }
        Ok(())
    }

    /// `y = x · wᵀ` for `w` stored as F16 or BF16 (`m × k`, row-major) on
    /// tensor cores: `x` (`n × k` f32) is rounded to w's type into
    /// `scratch` (at least `n × k` elements), cuBLAS GemmEx multiplies and
    /// accumulates in f32 into `y` (`n × m`). Operands are 16-bit, so
    /// expect ~1e-3 relative error against an f32 product; with F16 weights
    /// an activation beyond ±65504 becomes infinite (as in llama.cpp's F16
    /// path).
    pub fn gemm_half(
        &self,
        x: &CudaSlice<f32>,
        w: &DeviceMatrix,
        y: &mut CudaSlice<f32>,
        n: usize,
        scratch: &mut CudaSlice<u16>,
    ) -> Result<()> {
        const OP: &str = "gemm_half";
        let (m, k) = (w.rows(), w.cols());
        let data_type = match w.weight_type() {
            WeightType::BF16 => bsys::cudaDataType::CUDA_R_16BF,
            WeightType::F16 => bsys::cudaDataType::CUDA_R_16F,
            other => return Err(CudaError::invalid(OP, format!("{other:?} weights need dequantize + gemm_f32"))),
        };
        // A matrix has rows and cols ≥ 1 (upload_matrix); nothing to do
        // for no tokens.
        if n == 0 || m == 0 || k == 0 {
            return Ok(());
        }
        self.check_buf(OP, "x", x, n * k)?;
        self.check_buf(OP, "w", &w.data, w.bytes())?;
        self.check_buf(OP, "y", y, n * m)?;
        self.check_buf(OP, "scratch", scratch, n * k)?;
        let (n_i, m_i, k_i) = (arg_i32(OP, "n", n)?, arg_i32(OP, "m", m)?, arg_i32(OP, "k", k)?);

        let f = self.function(LAYERS, None, "f32_to_16")?;
        let len = (n * k) as i64;
        let bf16 = i32::from(data_type == bsys::cudaDataType::CUDA_R_16BF);
        let blocks = (n * k).div_ceil(256).min(self.sm_count() as usize * 16) as u32;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(&mut *scratch).arg(&len).arg(&bf16);
        // SAFETY: x and scratch hold at least n*k elements (checked).
        unsafe { b.launch(launch_cfg((blocks, 1, 1), 256, 0)) }.map_err(driver("launching f32_to_16"))?;

        let blas = self.blas()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (a, _a) = w.data.device_ptr(&self.stream);
        let (bx, _b) = scratch.device_ptr(&self.stream);
        let (c, _c) = y.device_ptr_mut(&self.stream);
        // Column-major: yᵀ (m × n) = wᵀᵀ (m × k) · xᵀ (k × n); the row-major w
        // and x read as column-major k × m and k × n (as gemm_f32).
        // SAFETY: w holds m*k 16-bit values, scratch n*k and y n*m floats
        // (checked); alpha and beta are f32 as CUBLAS_COMPUTE_32F requires.
        unsafe {
            bresult::gemm_ex(
                *blas.handle(),
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                m_i,
                n_i,
                k_i,
                (&alpha as *const f32).cast::<c_void>(),
                a as *const c_void,
                data_type,
                k_i,
                bx as *const c_void,
                data_type,
                k_i,
                (&beta as *const f32).cast::<c_void>(),
                c as *mut c_void,
                bsys::cudaDataType::CUDA_R_32F,
                m_i,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|source| CudaError::Cublas { phase: "running GemmEx", source })
    }
}
