//! cuBLAS products for shapes where a GEMM beats the GEMV kernels (prefill,
//! large batches). The cuBLAS handle is created on first use, so machines
//! without libcublas can still use every other kernel.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys as bsys};
use cudarc::driver::CudaSlice;

use crate::error::{CudaError, Result};
use crate::{CudaKernels, arg_i32};

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
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f32(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        n: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        const OP: &str = "gemm_f32";
        if n == 0 || m == 0 {
            return Ok(());
        }
        self.check_buf(OP, "x", x, n * k)?;
        self.check_buf(OP, "w", w, m * k)?;
        self.check_buf(OP, "y", y, n * m)?;
        let (n_i, m_i, k_i) = (
            arg_i32(OP, "n", n)?,
            arg_i32(OP, "m", m)?,
            arg_i32(OP, "k", k)?,
        );
        // Column-major view: yᵀ (m × n) = wᵀᵀ (m × k) · xᵀ (k × n), where the
        // row-major w and x read as column-major k × m and k × n matrices.
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
            ldc: m_i,
        };
        let blas = self.blas()?;
        // SAFETY: x, w and y hold n*k, m*k and n*m floats (checked), matching
        // the leading dimensions above.
        unsafe { blas.gemm(cfg, w, x, y) }.map_err(|source| CudaError::Cublas {
            phase: "running SGEMM",
            source,
        })
    }
}
