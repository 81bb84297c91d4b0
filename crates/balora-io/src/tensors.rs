//! safetensors ⇄ Burn tensors, with errors that name the file and the key; and a header-only
//! reader ([`read_header`]) that learns what a file holds without reading its data.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
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
    /// Read `path` and validate it (safetensors' parser checks that every tensor's shape ×
    /// dtype equals its byte range, inside the file).
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
        // a float tensor (a weight, a factor, a moment) must be stored as floats
        let src = burn_dtype(view.dtype())
            .filter(|d| d.is_float())
            .ok_or_else(|| IoError::Dtype {
                path: self.path.clone(),
                key: key.to_string(),
                dtype: format!("{:?} (a float tensor is needed)", view.dtype()),
            })?;
        let data = TensorData::from_bytes_vec(view.data().to_vec(), expected, src);
        Ok(Tensor::<D>::from_data(data, (device, src)).cast(dtype))
    }
}

/// safetensors' own bound on the JSON header (its parser refuses larger ones too).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct HeaderEntry {
    /// The dtype as the file names it (`F32`, `BF16`, …).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// Byte range `[start, end)` in the data section.
    pub data_offsets: (u64, u64),
}

/// What a safetensors file holds, read from its header alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Tensor entries by name.
    pub tensors: BTreeMap<String, HeaderEntry>,
    /// Length of the data section in bytes.
    pub data_len: u64,
}

impl Header {
    /// Elements over all tensors.
    pub fn elements(&self) -> u128 {
        self.tensors
            .values()
            .map(|t| t.shape.iter().map(|&d| d as u128).product::<u128>())
            .sum()
    }
}

/// Bytes per element of a safetensors dtype name (`None`: unknown or sub-byte).
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Read only the header of the safetensors file at `path` (its first 8 + n bytes), checking
/// that n is bounded by the file, that every tensor's shape × dtype equals its byte range and
/// that every range lies inside the data section. A model's config can then be compared with
/// what its checkpoint holds before anything is allocated from either.
pub fn read_header(path: &Path) -> Result<Header, IoError> {
    let fs_err = |source| IoError::Fs {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| IoError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(fs_err)?;
    let file_len = file.metadata().map_err(fs_err)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        bad(format!(
            "{file_len} bytes: too short for the 8-byte header length"
        ))
    })?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > file_len - 8 {
        return Err(bad(format!(
            "header length {n} exceeds the file ({file_len} bytes) or the {MAX_HEADER}-byte limit"
        )));
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).map_err(fs_err)?;
    let mut raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
    raw.remove("__metadata__");
    let data_len = file_len - 8 - n;
    let mut tensors = BTreeMap::new();
    for (name, value) in raw {
        let entry: HeaderEntry = serde_json::from_value(value)
            .map_err(|e| bad(format!("header entry {name:?}: {e}")))?;
        let width = dtype_bytes(&entry.dtype)
            .ok_or_else(|| bad(format!("tensor {name:?}: unknown dtype {}", entry.dtype)))?;
        let bytes = entry
            .shape
            .iter()
            .try_fold(width, |acc, &d| acc.checked_mul(d as u64));
        let (start, end) = entry.data_offsets;
        if bytes != end.checked_sub(start) || end > data_len {
            return Err(bad(format!(
                "tensor {name:?}: shape {:?} of {} is {} bytes, but its range {start}..{end} \
                 (data section: {data_len} bytes) does not hold it",
                entry.shape,
                entry.dtype,
                bytes.map_or("too many".to_string(), |b| b.to_string()),
            )));
        }
        tensors.insert(name, entry);
    }
    Ok(Header { tensors, data_len })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path) -> PathBuf {
        let path = dir.join("t.safetensors");
        let tensors = BTreeMap::from([
            ("a".to_string(), TensorData::new(vec![1f32; 6], [2, 3])),
            ("b".to_string(), TensorData::new(vec![1i64; 4], [4])),
        ]);
        write_safetensors(&path, &tensors).unwrap();
        path
    }

    #[test]
    fn the_header_alone_gives_names_shapes_and_element_counts() {
        let dir = tempfile::tempdir().unwrap();
        let header = read_header(&write(dir.path())).unwrap();
        assert_eq!(header.elements(), 10);
        assert_eq!(header.data_len, 6 * 4 + 4 * 8);
        assert_eq!(header.tensors["a"].shape, vec![2, 3]);
        assert_eq!(header.tensors["b"].dtype, "I64");
    }

    #[test]
    fn an_integer_tensor_read_as_a_float_tensor_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = SafetensorsFile::open(&write(dir.path())).unwrap();
        let device = Device::flex();
        let e = file.tensor::<1>("b", [4], &device, DType::F32).unwrap_err();
        assert!(
            e.to_string().contains("I64 (a float tensor is needed)"),
            "{e}"
        );
        assert!(file.tensor::<2>("a", [2, 3], &device, DType::F32).is_ok());
    }

    #[test]
    fn headers_that_do_not_fit_their_file_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let case = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let e = read_header(&p).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
            e
        };
        // a header length beyond the file
        let mut long = bytes.clone();
        long[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(case("long", &long).contains("exceeds the file"));
        // the data section cut short: the last tensor's range leaves the file
        let e = case("cut", &bytes[..bytes.len() - 8]);
        assert!(e.contains("does not hold it"), "{e}");
        // a shape whose byte size differs from the range (same header length)
        let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
        let lied = header.replacen("[2,3]", "[3,3]", 1);
        let e = case(
            "lied",
            &[&bytes[..8], lied.as_bytes(), &bytes[8 + n..]].concat(),
        );
        assert!(e.contains("shape [3, 3] of F32 is 36 bytes"), "{e}");
        // a shape whose product overflows
        let huge = header.replacen("[2,3]", "[18446744073709551615,3]", 1);
        let mut b = bytes[..8].to_vec();
        b[..8].copy_from_slice(&(huge.len() as u64).to_le_bytes());
        let e = case("huge", &[&b[..], huge.as_bytes(), &bytes[8 + n..]].concat());
        assert!(e.contains("too many bytes"), "{e}");
        // too short for the length prefix
        assert!(case("short", &[1, 2, 3]).contains("too short"));
    }
}
