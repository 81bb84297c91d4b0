//! safetensors ⇄ Burn tensors, with errors that name the file and the key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::IoError;
use crate::fs::{atomic_write, read};

/// A safetensors file loaded into memory.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

fn burn_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        _ => return None,
    })
}

fn file_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Read and validate the header of `path`.
    pub fn open(path: &Path) -> Result<Self, IoError> {
        let file = Self {
            path: path.to_path_buf(),
            bytes: read(path)?,
        };
        file.parse()?;
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self) -> Result<SafeTensors<'_>, IoError> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| IoError::Safetensors {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parse()
            .map(|st| st.names().into_iter().map(str::to_string).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Burn dtype of a tensor, if present and supported.
    pub fn dtype(&self, key: &str) -> Option<DType> {
        let st = self.parse().ok()?;
        st.tensor(key).ok().and_then(|t| burn_dtype(t.dtype()))
    }

    /// Shape of a tensor, if present.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let st = self.parse().ok()?;
        st.tensor(key).ok().map(|t| t.shape().to_vec())
    }

    /// A tensor's values on the host, converted to `E` (fixtures, integer tensors), with its
    /// shape.
    pub fn values<E: burn::tensor::Element>(
        &self,
        key: &str,
    ) -> Result<(Vec<E>, Vec<usize>), IoError> {
        let data = self.data(key)?;
        let shape = data.shape().as_slice().to_vec();
        Ok((data.iter::<E>().collect(), shape))
    }

    /// A tensor's values on the host in the file's own dtype (a merged export copies them).
    pub fn data(&self, key: &str) -> Result<TensorData, IoError> {
        let st = self.parse()?;
        let view = st.tensor(key).map_err(|_| IoError::MissingTensor {
            path: self.path.clone(),
            key: key.to_string(),
        })?;
        let dtype = burn_dtype(view.dtype()).ok_or_else(|| IoError::Dtype {
            path: self.path.clone(),
            key: key.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        Ok(TensorData::from_bytes_vec(
            view.data().to_vec(),
            view.shape().to_vec(),
            dtype,
        ))
    }

    /// Load one tensor onto `device` in `dtype`, checking its shape.
    pub fn tensor<const D: usize>(
        &self,
        key: &str,
        expected: [usize; D],
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor<D>, IoError> {
        let st = self.parse()?;
        let view = st.tensor(key).map_err(|_| IoError::MissingTensor {
            path: self.path.clone(),
            key: key.to_string(),
        })?;
        if view.shape() != expected.as_slice() {
            return Err(IoError::Shape {
                path: self.path.clone(),
                key: key.to_string(),
                expected: expected.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let src = burn_dtype(view.dtype()).ok_or_else(|| IoError::Dtype {
            path: self.path.clone(),
            key: key.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        let data = TensorData::from_bytes_vec(view.data().to_vec(), expected, src);
        Ok(Tensor::<D>::from_data(data, (device, src)).cast(dtype))
    }
}

/// Write named tensors (floats, and i64/i32 for fixtures) to a safetensors file atomically, with peft's metadata
/// `{"format": "pt"}` (transformers refuses files without it).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, TensorData>,
) -> Result<(), IoError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (key, data) in tensors {
        let dtype = file_dtype(data.dtype()).ok_or_else(|| IoError::Dtype {
            path: path.to_path_buf(),
            key: key.clone(),
            dtype: format!("{:?}", data.dtype()),
        })?;
        let view = TensorView::new(dtype, data.shape().as_slice().to_vec(), data.as_bytes())
            .map_err(|e| IoError::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        views.push((key.clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| IoError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    atomic_write(path, &bytes)
}
