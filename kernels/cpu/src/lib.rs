//! CPU compute kernels.
//!
//! Everything here is pure computation over slices: no model knowledge, no
//! file formats beyond the byte layout of quantised blocks, no allocation on
//! hot paths beyond per-thread scratch. The engine composes these into a
//! forward pass.
//!
//! Every kernel is *batch-invariant*: the value computed for one row of a
//! batch depends only on that row's inputs, never on the batch size or on the
//! other rows, so a request produces bit-identical logits alone or batched.

pub mod attention;
pub mod dequant;
pub mod dot;
pub mod dtype;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod qdot;
pub mod vocab;

pub use dtype::{WeightType, WeightTypeError};
pub use matmul::{Matrix, matmul, matmul_group};
