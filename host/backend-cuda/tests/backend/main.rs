//! The CUDA backend against its references, on a GPU. Every test skips
//! (printing why) where there is no usable CUDA device; with
//! `WEFT_REQUIRE_GPU=1` (scripts/gpu-check.sh) a missing GPU fails instead.
//!
//! - `transformers`: the tiny Hugging Face Llamas of tests/data/hf-tiny
//!   against the logits transformers computed for them;
//! - `parity`: the default model (`WEFT_TEST_MODEL`, a GGUF path) against
//!   the CPU backend: teacher-forced argmax agreement and perplexity, with
//!   the KV cache in f16 and in FP8;
//! - `engine`: the engine's continuous batching on the GPU backend;
//! - `graphs`: decode steps replayed as CUDA graphs against the same steps
//!   launched one by one;
//! - `sampling`: tokens chosen on the device against the host's choice
//!   over the same rows.
//!
//! - `emulated` (needs no GPU): kernel sources compiled as C++ and run on
//!   CPU threads: the choice kernel against the host's choices, the
//!   attention kernels against f64 attention.
//!
//! Lines starting `RESULT ` are collected into scripts/gpu-check.sh's table.

mod common;
mod emulated;
mod engine;
mod graphs;
mod parity;
mod sampling;
mod transformers;
