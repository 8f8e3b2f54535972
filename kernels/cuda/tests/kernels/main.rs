//! Every CUDA kernel against a float64 CPU reference, on fresh random
//! inputs, with outputs poisoned (NaN) before each launch.
//!
//! Without a CUDA driver each test prints why it is skipping and passes;
//! with `WEFT_REQUIRE_GPU=1` a missing GPU fails instead (scripts/gpu-check.sh
//! sets it). Each check prints a `RESULT` line that the script tabulates.
//! The GEMV timing harness is an ignored test in `bench`. `emulated` runs
//! the GEMV kernels' sources on CPU threads, so it checks them everywhere.

mod attention;
mod bench;
mod blas;
mod common;
mod emulated;
mod gemv;
mod kv;
mod layers;
mod sample;
mod sources;
