//! The kernel sources compile with NVRTC for Hopper. Needs libnvrtc only,
//! not a GPU, so it also runs on development machines that have NVRTC.

use weft_kernels_cuda::{CudaError, compile_all_for_sm};

#[test]
fn every_kernel_module_compiles_for_sm90() {
    match compile_all_for_sm(90) {
        Ok(mods) => {
            for (name, bytes) in &mods {
                println!("compiled {name}: {bytes} bytes of cubin");
            }
            // layers, sample; attention per KV type; GEMV per weight type.
            assert_eq!(mods.len(), 2 + weft_kernels_cuda::KvType::ALL.len() + weft_kernels_cuda::WeightType::ALL.len());
        }
        Err(e @ CudaError::NoNvrtc(_)) if std::env::var("WEFT_REQUIRE_GPU").is_err() => {
            eprintln!("skipping every_kernel_module_compiles_for_sm90: {e}");
        }
        Err(e) => panic!("{e}"),
    }
}
