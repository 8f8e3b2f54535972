//! Which hardware runs the model: `--device cpu` (the default) or
//! `--device cuda[:N]`, and how a GPU's KV cache stores keys and values.
//!
//! The CUDA backend is compiled in with the `cuda` cargo feature (it builds
//! on machines without CUDA; the libraries are opened at run time). Without
//! the feature, `cuda` answers that this binary lacks CUDA support: the one
//! place that knows whether the feature is on is this module.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Result, bail};
use weft_engine::model::LlamaModel;
use weft_engine::{Backend, CpuBackend};

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// A GPU by ordinal.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("{s:?} is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

/// How a GPU's KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvCacheType {
    /// As the CPU backend: f16 for GGUF models, f32 for float32 references.
    #[default]
    Auto,
    F32,
    F16,
    /// FP8 E4M3: half of f16's memory, at an accuracy cost.
    Fp8,
}

/// What `--device`, `--kv-cache-type` and `--no-cuda-graphs` chose.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub device: Device,
    pub kv: KvCacheType,
    /// Replay decode steps as CUDA graphs (GPU only).
    pub graphs: bool,
    /// Where compiled GPU kernels are kept between runs (`None`: where
    /// `$WEFT_CUDA_CACHE` says, or nowhere).
    pub kernel_cache: Option<std::path::PathBuf>,
}

/// The backend for `model` where `placement` puts it.
pub fn backend(model: &Arc<LlamaModel>, placement: Placement) -> Result<Box<dyn Backend>> {
    match placement.device {
        Device::Cpu if placement.kv != KvCacheType::Auto => {
            bail!("--kv-cache-type chooses a GPU's KV cache; the CPU backend stores it as the model's numerics")
        }
        Device::Cpu => Ok(Box::new(CpuBackend::new(Arc::clone(model)))),
        Device::Cuda(ordinal) => cuda(model, ordinal, &placement),
    }
}

#[cfg(feature = "cuda")]
fn cuda(model: &Arc<LlamaModel>, ordinal: usize, placement: &Placement) -> Result<Box<dyn Backend>> {
    use anyhow::Context;
    use weft_backend_cuda::{CudaOptions, KvCacheType as Kv};
    if let Some(dir) = &placement.kernel_cache {
        weft_backend_cuda::set_kernel_cache(Some(dir.clone()));
    }
    let kv = match placement.kv {
        KvCacheType::Auto => None,
        KvCacheType::F32 => Some(Kv::F32),
        KvCacheType::F16 => Some(Kv::F16),
        KvCacheType::Fp8 => Some(Kv::E4M3),
    };
    weft_backend_cuda::open(model, CudaOptions { device: ordinal, kv, graphs: placement.graphs })
        .with_context(|| format!("opening cuda:{ordinal}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &Arc<LlamaModel>, ordinal: usize, _: &Placement) -> Result<Box<dyn Backend>> {
    bail!("cuda:{ordinal}: this weft was not compiled with CUDA support; build it with `cargo build --release --features cuda -p weft`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
    }
}
