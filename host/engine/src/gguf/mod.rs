//! Reading GGUF files: header, metadata and memory-mapped tensor data.
//!
//! [`GgufFile::open`] maps the file and validates the whole header up front
//! (see [`parse`] for what is checked), so every tensor handed out afterwards
//! is known to lie inside the file. Interpreting the metadata as a model is
//! the job of `model::config`, not of this module.

mod parse;
mod value;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use thiserror::Error;
use weft_kernels_cpu::WeightType;

pub use parse::{DEFAULT_ALIGNMENT, Header, parse_header};
pub use value::Value;

/// What can go wrong reading a GGUF file.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    #[error("unsupported GGUF file: {0}")]
    Unsupported(String),
    #[error("malformed GGUF at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: String },
    #[error("tensor {name:?}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("metadata key {key:?}: {reason}")]
    Metadata { key: String, reason: String },
}

impl GgufError {
    fn malformed(offset: usize, reason: String) -> Self {
        GgufError::Malformed { offset, reason }
    }
}

/// The storage type of a tensor as declared in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    /// A type our kernels compute with.
    Supported(WeightType),
    /// A type ggml defines but we do not load; its size is still known so the
    /// directory can be validated.
    Unsupported { id: u32, name: &'static str, block_len: u64, block_bytes: u64 },
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorType::Supported(w) => f.write_str(w.name()),
            TensorType::Unsupported { name, .. } => f.write_str(name),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGUF stores them.
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub size_bytes: u64,
}

/// An open, validated, memory-mapped GGUF file.
#[derive(Clone)]
pub struct GgufFile {
    header: Arc<Header>,
    map: Arc<Mmap>,
    path: PathBuf,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Map and validate `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated underneath us by
        // another process could fault, the same contract every mmap-based
        // model loader (llama.cpp included) accepts.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = parse_header(&map)?;
        Ok(Self { header: Arc::new(header), map: Arc::new(map), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A required unsigned integer.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key).ok_or_else(|| missing(key))?;
        v.as_u64().ok_or_else(|| wrong_type(key, "an unsigned integer", v))
    }

    /// A required float.
    pub fn f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key).ok_or_else(|| missing(key))?;
        v.as_f64().ok_or_else(|| wrong_type(key, "a number", v))
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.get(key).ok_or_else(|| missing(key))?;
        v.as_str().ok_or_else(|| wrong_type(key, "a string", v))
    }

    /// A required array.
    pub fn array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.get(key).ok_or_else(|| missing(key))?;
        v.as_array().ok_or_else(|| wrong_type(key, "an array", v))
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor from this file's directory. Bounds were checked
    /// when the header was parsed.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.map[start..start + info.size_bytes as usize]
    }

    /// The shared map, for weights that borrow from it.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// Absolute byte range of a tensor inside the map.
    pub fn tensor_range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        let start = (self.header.data_offset + info.offset) as usize;
        start..start + info.size_bytes as usize
    }
}

fn missing(key: &str) -> GgufError {
    GgufError::Metadata { key: key.to_string(), reason: "missing".into() }
}

fn wrong_type(key: &str, expected: &str, got: &Value) -> GgufError {
    GgufError::Metadata { key: key.to_string(), reason: format!("expected {expected}, found {}", got.type_name()) }
}
