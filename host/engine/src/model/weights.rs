//! Weight tensors, borrowed from memory-mapped GGUF or safetensors files.
//!
//! A [`Weight`] never copies its bytes: quantised GGUF blocks and
//! F32/F16/BF16 safetensors data are both used in place, and the kernels
//! dequantise rows as they go. Small vectors (norm weights, biases) are
//! converted to `f32` once at load.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use weft_kernels_cpu::dequant::dequantize;
use weft_kernels_cpu::{Matrix, WeightType};

use super::ModelError;
use crate::gguf::{GgufFile, TensorType};

/// A 1-D or 2-D weight in its stored format.
#[derive(Clone)]
pub struct Weight {
    pub name: String,
    pub ty: WeightType,
    pub rows: usize,
    pub cols: usize,
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Weight({} {} {}×{})", self.name, self.ty.name(), self.rows, self.cols)
    }
}

impl Weight {
    /// A `rows × cols` tensor of `ty` at `range` of `map`.
    pub(crate) fn mapped(name: &str, ty: WeightType, rows: usize, cols: usize, map: Arc<Mmap>, range: Range<usize>) -> Self {
        Self { name: name.into(), ty, rows, cols, map, range }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }

    pub fn matrix(&self) -> Matrix<'_> {
        Matrix { ty: self.ty, rows: self.rows, cols: self.cols, data: self.bytes() }
    }

    /// All elements as `f32` (for small vectors).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        dequantize(self.ty, self.bytes(), &mut out);
        out
    }

    /// Check the shape is `rows × cols` (a vector is `1 × len`).
    pub fn expect_shape(self, rows: usize, cols: usize) -> Result<Self, ModelError> {
        if self.rows != rows || self.cols != cols {
            return Err(ModelError::Tensor {
                name: self.name.clone(),
                reason: format!("expected shape {rows}×{cols}, found {}×{}", self.rows, self.cols),
            });
        }
        Ok(self)
    }
}

/// Where weights come from, by name.
pub trait WeightSource {
    /// The tensor called `name`, if the source has it.
    fn get(&self, name: &str) -> Result<Option<Weight>, ModelError>;

    /// The tensor called `name`, or an error naming it.
    fn require(&self, name: &str) -> Result<Weight, ModelError> {
        self.get(name)?.ok_or_else(|| ModelError::Tensor { name: name.into(), reason: "missing".into() })
    }
}

fn shape_2d(name: &str, dims: &[usize]) -> Result<(usize, usize), ModelError> {
    match *dims {
        [n] => Ok((1, n)),
        [rows, cols] => Ok((rows, cols)),
        _ => Err(ModelError::Tensor { name: name.into(), reason: format!("expected 1 or 2 dimensions, found {dims:?}") }),
    }
}

impl WeightSource for GgufFile {
    fn get(&self, name: &str) -> Result<Option<Weight>, ModelError> {
        let Some(info) = self.tensor(name) else { return Ok(None) };
        let ty = match info.ty {
            TensorType::Supported(ty) => ty,
            other => return Err(ModelError::Tensor { name: name.into(), reason: format!("type {other} is not supported") }),
        };
        // GGUF lists dimensions innermost first.
        let dims: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let (rows, cols) = shape_2d(name, &dims)?;
        Ok(Some(Weight { name: name.into(), ty, rows, cols, map: self.map().clone(), range: self.tensor_range(info) }))
    }
}

/// All `*.safetensors` files of a Hugging Face model directory, mapped.
pub struct SafetensorsDir {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    index: HashMap<String, (usize, WeightType, Vec<usize>, Range<usize>)>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(ModelError::Unsupported(format!("no .safetensors files in {}", dir.display())));
        }
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(&path).map_err(io(&path))?;
            // SAFETY: read-only map; see `GgufFile::open`.
            let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io(&path))?);
            let bad = |reason: String| ModelError::Safetensors { path: path.clone(), reason };
            let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let ty = match view.dtype() {
                    Dtype::F32 => WeightType::F32,
                    Dtype::F16 => WeightType::F16,
                    Dtype::BF16 => WeightType::BF16,
                    other => return Err(bad(format!("tensor {name:?} has dtype {other:?} (supported: F32, F16, BF16)"))),
                };
                let start = view.data().as_ptr() as usize - base;
                let range = start..start + view.data().len();
                index.insert(name, (files.len(), ty, view.shape().to_vec(), range));
            }
            files.push((path, map));
        }
        Ok(Self { files, index })
    }
}

impl WeightSource for SafetensorsDir {
    fn get(&self, name: &str) -> Result<Option<Weight>, ModelError> {
        let Some((file, ty, shape, range)) = self.index.get(name) else { return Ok(None) };
        let (rows, cols) = shape_2d(name, shape)?;
        Ok(Some(Weight {
            name: name.into(),
            ty: *ty,
            rows,
            cols,
            map: self.files[*file].1.clone(),
            range: range.clone(),
        }))
    }
}
