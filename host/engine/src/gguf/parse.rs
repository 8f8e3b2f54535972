//! The GGUF header parser: magic, version, metadata and tensor directory.
//!
//! It works on a byte slice (usually the memory-mapped file) and trusts
//! nothing in it. Every length is checked against the bytes that remain
//! before anything proportional to it is allocated, so a hostile file can make
//! the parser allocate at most a small multiple of its own size; every
//! arithmetic step on file-controlled numbers is checked; every failure is an
//! [`GgufError`] naming what was wrong and where. It never panics and never
//! reads out of bounds (the fuzz target in `host/engine/fuzz` holds it to that).

use std::collections::HashSet;

use weft_kernels_cpu::WeightType;

use super::value::Value;
use super::{GgufError, TensorInfo, TensorType};

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// The alignment GGUF uses when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest array nesting we accept; real files use at most 2.
const MAX_NESTING: u32 = 8;

/// The parsed header of a GGUF file.
#[derive(Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
}

/// Parse and validate a whole GGUF header against the file's bytes.
pub fn parse_header(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic);
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(GgufError::Unsupported("big-endian GGUF files are not supported".into()));
        }
        v => return Err(GgufError::Unsupported(format!("GGUF version {v} (supported: 2 and 3)"))),
    }
    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata count")?;

    // A key-value pair takes at least 8 (key length) + 4 (type) bytes, a
    // tensor info at least 8 + 4 + 4 + 8: counts beyond what the file could
    // hold are rejected before any allocation.
    let remaining = c.remaining() as u64;
    if kv_count > remaining / 12 {
        return Err(GgufError::malformed(c.pos, format!("metadata count {kv_count} exceeds what the file can hold")));
    }
    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut keys = HashSet::new();
    for _ in 0..kv_count {
        let at = c.pos;
        let key = c.string("metadata key")?;
        let ty = c.u32("metadata type")?;
        let value = c.value(ty, 0)?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::malformed(at, format!("duplicate metadata key {key:?}")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(GgufError::malformed(0, format!("general.alignment must be a power of two ≤ 1 MiB, got {v}"))),
        },
    };

    if tensor_count > c.remaining() as u64 / 24 {
        return Err(GgufError::malformed(c.pos, format!("tensor count {tensor_count} exceeds what the file can hold")));
    }
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let at = c.pos;
        let info = c.tensor_info()?;
        if !names.insert(info.name.clone()) {
            return Err(GgufError::malformed(at, format!("duplicate tensor name {:?}", info.name)));
        }
        tensors.push(info);
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    if data_offset > file_len && !tensors.is_empty() {
        return Err(GgufError::malformed(c.pos, "file ends before the tensor data section".to_string()));
    }
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::Tensor {
                name: t.name.clone(),
                reason: format!("data offset {} is not a multiple of the alignment {alignment}", t.offset),
            });
        }
        let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.size_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(GgufError::Tensor {
                    name: t.name.clone(),
                    reason: format!(
                        "data at offset {} with {} bytes runs past the end of the file ({file_len} bytes)",
                        t.offset, t.size_bytes
                    ),
                });
            }
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::malformed(
                self.pos,
                format!("file ends while reading {what} ({n} bytes needed, {} left)", self.remaining()),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(GgufError::malformed(at, format!("{what}: string length {len} exceeds the file")));
        }
        let s = self.take(len as usize, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufError::malformed(at, format!("{what} is not valid UTF-8")))
    }

    /// The smallest encoding of a value of GGUF type `ty`, for bounding
    /// array counts before allocation.
    fn min_size(ty: u32) -> usize {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => 8,
            9 => 12,
            _ => 8,
        }
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, GgufError> {
        let at = self.pos;
        Ok(match ty {
            0 => Value::U8(self.array::<1>("u8")?[0]),
            1 => Value::I8(self.array::<1>("i8")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(self.u32("u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::malformed(at, format!("bool value {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string("string value")?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(GgufError::malformed(at, format!("arrays nested deeper than {MAX_NESTING}")));
                }
                let elem_ty = self.u32("array element type")?;
                if elem_ty > 12 {
                    return Err(GgufError::malformed(at, format!("unknown array element type {elem_ty}")));
                }
                let count = self.u64("array length")?;
                let min = Self::min_size(elem_ty) as u64;
                if count > self.remaining() as u64 / min {
                    return Err(GgufError::malformed(at, format!("array of {count} elements exceeds the file")));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            t => return Err(GgufError::malformed(at, format!("unknown metadata value type {t}"))),
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let at = self.pos;
        let name = self.string("tensor name")?;
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::malformed(at, format!("tensor {name:?} has {n_dims} dimensions (1..={MAX_DIMS} allowed)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("tensor dimension")?);
        }
        let raw_type = self.u32("tensor type")?;
        let offset = self.u64("tensor offset")?;
        let ty = tensor_type(raw_type).ok_or_else(|| GgufError::Tensor {
            name: name.clone(),
            reason: format!("unknown tensor type id {raw_type}"),
        })?;
        let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| GgufError::Tensor {
            name: name.clone(),
            reason: format!("dimensions {dims:?} overflow"),
        })?;
        let size_bytes = match ty {
            TensorType::Supported(w) => {
                if dims[0] % w.block_len() as u64 != 0 {
                    return Err(GgufError::Tensor {
                        name,
                        reason: format!("row length {} is not a multiple of {}'s block of {}", dims[0], w.name(), w.block_len()),
                    });
                }
                w.checked_bytes(elements).ok_or_else(|| GgufError::Tensor {
                    name: name.clone(),
                    reason: format!("byte size of {elements} {} elements overflows", w.name()),
                })?
            }
            TensorType::Unsupported { block_len, block_bytes, .. } => {
                if elements % block_len != 0 {
                    return Err(GgufError::Tensor { name, reason: "element count is not a whole number of blocks".into() });
                }
                (elements / block_len).checked_mul(block_bytes).ok_or_else(|| GgufError::Tensor {
                    name: name.clone(),
                    reason: "byte size overflows".into(),
                })?
            }
        };
        Ok(TensorInfo { name, dims, ty, offset, size_bytes })
    }
}

/// Map a ggml type id to what we can do with it. `None` for ids ggml does not
/// define.
fn tensor_type(id: u32) -> Option<TensorType> {
    let supported = |w| Some(TensorType::Supported(w));
    let unsupported = |name: &'static str, block_len: u64, block_bytes: u64| {
        Some(TensorType::Unsupported { id, name, block_len, block_bytes })
    };
    match id {
        0 => supported(WeightType::F32),
        1 => supported(WeightType::F16),
        2 => supported(WeightType::Q4_0),
        3 => supported(WeightType::Q4_1),
        6 => supported(WeightType::Q5_0),
        7 => supported(WeightType::Q5_1),
        8 => supported(WeightType::Q8_0),
        9 => unsupported("q8_1", 32, 36),
        10 => unsupported("q2_k", 256, 84),
        11 => unsupported("q3_k", 256, 110),
        12 => supported(WeightType::Q4K),
        13 => supported(WeightType::Q5K),
        14 => supported(WeightType::Q6K),
        15 => unsupported("q8_k", 256, 292),
        16 => unsupported("iq2_xxs", 256, 66),
        17 => unsupported("iq2_xs", 256, 74),
        18 => unsupported("iq3_xxs", 256, 98),
        19 => unsupported("iq1_s", 256, 50),
        20 => unsupported("iq4_nl", 32, 18),
        21 => unsupported("iq3_s", 256, 110),
        22 => unsupported("iq2_s", 256, 82),
        23 => unsupported("iq4_xs", 256, 136),
        24 => unsupported("i8", 1, 1),
        25 => unsupported("i16", 1, 2),
        26 => unsupported("i32", 1, 4),
        27 => unsupported("i64", 1, 8),
        28 => unsupported("f64", 1, 8),
        29 => unsupported("iq1_m", 256, 56),
        30 => supported(WeightType::BF16),
        34 => unsupported("tq1_0", 256, 54),
        35 => unsupported("tq2_0", 256, 66),
        39 => unsupported("mxfp4", 32, 17),
        _ => None,
    }
}
