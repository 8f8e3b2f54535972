//! The kernel sources compile with NVRTC for Hopper. Needs libnvrtc only,
//! not a GPU, so it also runs on development machines that have NVRTC.

use weft_kernels_cuda::{CudaError, compile_all_for_sm};

#[test]
fn every_kernel_module_compiles_for_sm90() {
    // Compiled into an empty disk cache, then read back from it.
    let cache = tempfile::tempdir().unwrap();
    weft_kernels_cuda::set_cache_dir(Some(cache.path().to_path_buf()));
    let start = std::time::Instant::now();
    let compiled = compile_all_for_sm(90);
    let compile_time = start.elapsed();
    match compiled {
        Ok(mods) => {
            for (name, bytes) in &mods {
                println!("compiled {name}: {bytes} bytes of cubin");
            }
            // Entries are named by 64 hex digits (other tests of this binary
            // may be writing temporary files beside them).
            let entries = std::fs::read_dir(cache.path())
                .unwrap()
                .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().len() == 64))
                .count();
            assert_eq!(entries, mods.len(), "one disk-cache entry per module");
            let start = std::time::Instant::now();
            let again = compile_all_for_sm(90).unwrap();
            println!("compiled in {compile_time:?}; read back from the disk cache in {:?}", start.elapsed());
            assert_eq!(again, mods, "the cached images are the compiled ones");
            weft_kernels_cuda::set_cache_dir(None);
            // layers, sample, choose; attention per KV type; GEMV per weight type.
            assert_eq!(mods.len(), 3 + weft_kernels_cuda::KvType::ALL.len() + weft_kernels_cuda::WeightType::ALL.len());
        }
        Err(e @ CudaError::NoNvrtc(_)) if std::env::var("WEFT_REQUIRE_GPU").is_err() => {
            eprintln!("skipping every_kernel_module_compiles_for_sm90: {e}");
        }
        Err(e) => panic!("{e}"),
    }
}
