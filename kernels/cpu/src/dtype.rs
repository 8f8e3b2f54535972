//! The element and block formats weights can be stored in.

use thiserror::Error;

/// A weight storage format: a plain float type or a GGML quantised block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// A row length that is not a whole number of blocks.
#[derive(Debug, Error)]
#[error("{ty:?} stores elements in blocks of {block}; a row of {len} elements is not a multiple")]
pub struct WeightTypeError {
    pub ty: WeightType,
    pub block: usize,
    pub len: usize,
}

impl WeightType {
    /// Every supported type, for tests and listings.
    pub const ALL: [WeightType; 11] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    /// Elements per block (1 for float types).
    pub const fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Lower-case name as llama.cpp prints it (`q4_1`, `f16`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
        }
    }

    /// Bytes taken by `len` elements, or an error when `len` is not a whole
    /// number of blocks. `None` inside the error is impossible: overflow is
    /// reported by returning `None` from [`WeightType::checked_bytes`].
    pub fn row_bytes(self, len: usize) -> Result<usize, WeightTypeError> {
        if len % self.block_len() != 0 {
            return Err(WeightTypeError { ty: self, block: self.block_len(), len });
        }
        Ok(len / self.block_len() * self.block_bytes())
    }

    /// Bytes taken by `elements` elements, `None` on overflow or partial block.
    pub fn checked_bytes(self, elements: u64) -> Option<u64> {
        let block = self.block_len() as u64;
        if elements % block != 0 {
            return None;
        }
        (elements / block).checked_mul(self.block_bytes() as u64)
    }
}
