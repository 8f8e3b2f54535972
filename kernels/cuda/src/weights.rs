//! Weight matrices on the device, kept in their GGUF block layout.
//!
//! A [`DeviceMatrix`] is the raw bytes of a row-major `rows × cols` tensor as
//! GGUF stores it (each row a whole number of blocks), uploaded once; the
//! kernels dequantise on the fly. Nothing here converts or repacks weights.

use cudarc::driver::CudaSlice;

/// The weight formats the GEMV and embedding kernels read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    /// 34-byte blocks of 32: f16 scale, 32 × i8.
    Q8_0,
    /// 18-byte blocks of 32: f16 scale, 16 bytes of nibbles, value (q − 8)·d.
    Q4_0,
    /// 20-byte blocks of 32: f16 scale, f16 min, 16 bytes of nibbles, value q·d + m.
    Q4_1,
    /// 144-byte superblocks of 256 (ggml `block_q4_K`).
    Q4K,
    /// 210-byte superblocks of 256 (ggml `block_q6_K`).
    Q6K,
}

impl WeightType {
    pub const ALL: [WeightType; 8] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::BF16,
        WeightType::Q8_0,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q4K,
        WeightType::Q6K,
    ];

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q8_0 | WeightType::Q4_0 | WeightType::Q4_1 => 32,
            WeightType::Q4K | WeightType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q8_0 => 34,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q4K => 144,
            WeightType::Q6K => 210,
        }
    }

    /// Row length must be a multiple of this: the block length, and at least
    /// the 8 elements one lane of the float kernels loads at a time.
    pub fn col_multiple(self) -> usize {
        self.block_len().max(8)
    }

    /// Bytes of one row of `cols` elements.
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// Elements one thread decodes at a time in the row kernels (`WT::CHUNK`).
    pub(crate) fn chunk(self) -> usize {
        if matches!(self, WeightType::Q4K | WeightType::Q6K) { 16 } else { 8 }
    }

    /// The preprocessor define that selects this type's variant of
    /// `gemv.cu` (compiled once per weight type).
    pub fn define(self) -> &'static str {
        match self {
            WeightType::F32 => "WEFT_WT_F32",
            WeightType::F16 => "WEFT_WT_F16",
            WeightType::BF16 => "WEFT_WT_BF16",
            WeightType::Q8_0 => "WEFT_WT_Q8_0",
            WeightType::Q4_0 => "WEFT_WT_Q4_0",
            WeightType::Q4_1 => "WEFT_WT_Q4_1",
            WeightType::Q4K => "WEFT_WT_Q4_K",
            WeightType::Q6K => "WEFT_WT_Q6_K",
        }
    }
}

/// A `rows × cols` weight matrix on the device, in GGUF block layout.
#[derive(Debug)]
pub struct DeviceMatrix {
    pub(crate) ty: WeightType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) data: CudaSlice<u8>,
}

impl DeviceMatrix {
    pub fn weight_type(&self) -> WeightType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes on the device.
    pub fn bytes(&self) -> usize {
        self.rows * self.ty.row_bytes(self.cols)
    }
}
