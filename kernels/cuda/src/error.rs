//! The crate's one error type.
//!
//! Variants name the phase that failed. The `No*` variants mean "CUDA is not
//! usable on this machine" (no driver, no device, no NVRTC, no cuBLAS) and
//! are what callers turn into a CPU fallback or a test skip; everything else
//! is a real failure on a machine that does have CUDA.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// Every way a call into this crate can fail.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `libcuda` could not be opened or initialised.
    #[error("no CUDA driver found: {0}")]
    NoDriver(String),
    /// The driver works but the requested device does not exist.
    #[error("no CUDA device {ordinal}: {detail}")]
    NoDevice { ordinal: usize, detail: String },
    /// `libnvrtc` (the run-time compiler for the kernels) could not be opened.
    #[error("no NVRTC library found: {0}")]
    NoNvrtc(String),
    /// `libcublas` could not be opened.
    #[error("no cuBLAS library found: {0}")]
    NoCublas(String),
    /// A driver call failed.
    #[error("CUDA driver call failed while {phase}: {source}")]
    Driver {
        phase: &'static str,
        #[source]
        source: DriverError,
    },
    /// NVRTC rejected a kernel source (the log says why).
    #[error("NVRTC failed to compile {module} for {arch}: {detail}")]
    Compile {
        module: String,
        arch: String,
        detail: String,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS call failed while {phase}: {source}")]
    Cublas {
        phase: &'static str,
        #[source]
        source: CublasError,
    },
    /// Arguments that do not describe a valid launch (sizes, ids, limits).
    #[error("{op}: {detail}")]
    Invalid { op: &'static str, detail: String },
}

impl CudaError {
    /// True when CUDA is not usable here at all (no driver, device, NVRTC or
    /// cuBLAS), as opposed to a failure on a working CUDA installation.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CudaError::NoDriver(_)
                | CudaError::NoDevice { .. }
                | CudaError::NoNvrtc(_)
                | CudaError::NoCublas(_)
        )
    }

    pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        CudaError::Invalid {
            op,
            detail: detail.into(),
        }
    }
}

/// Attach a phase to a driver error: `.map_err(driver("launching rms_norm"))`.
pub(crate) fn driver(phase: &'static str) -> impl FnOnce(DriverError) -> CudaError {
    move |source| CudaError::Driver { phase, source }
}

pub type Result<T, E = CudaError> = std::result::Result<T, E>;
