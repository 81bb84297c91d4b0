//! Hugging Face model directories: `config.json`, `model.safetensors` or sharded
//! `model-0000x-of-0000y.safetensors` + `model.safetensors.index.json`, loaded with burn-store.
//!
//! Models name their fields after the HF keys (candle style), so the only remapping is
//! architecture-specific prefixes; norms get their `weight`/`bias` → `gamma`/`beta` rename and
//! every float tensor its cast to the training dtype from burn-store's adapters.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    ApplyError, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleContext, ModuleSnapshot,
    PyTorchToBurnAdapter, SafetensorsStore, bridge,
};
use burn::tensor::{DType, Shape, TensorData};
use serde::de::DeserializeOwned;

use crate::IoError;
use crate::fs::read;

/// File names of a Hugging Face checkpoint.
pub const MODEL_CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// A model directory on disk.
#[derive(Debug, Clone)]
pub struct HfCheckpoint {
    dir: PathBuf,
    shards: Vec<PathBuf>,
}

/// How to map a checkpoint onto a module.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `(regex, replacement)` pairs applied to file keys before matching module paths.
    pub remap: Vec<(String, String)>,
    /// dtype every float tensor is cast to (bf16/f16 checkpoints → f32 training, say).
    pub dtype: DType,
    /// Module paths (regexes) that may legitimately stay absent from the file.
    pub optional: Vec<String>,
    /// Names of modules whose `weight` the file stores as `[in, out]` (GPT-2's `Conv1D`);
    /// they are transposed to the `[out, in]` layout of our linear slots while loading.
    pub transposed: Vec<String>,
}

impl LoadOptions {
    /// Identity mapping, casting to `dtype`.
    pub fn new(dtype: DType) -> Self {
        Self {
            remap: Vec::new(),
            dtype,
            optional: Vec::new(),
            transposed: Vec::new(),
        }
    }

    /// Transpose the `weight` of modules named `name` while loading (Conv1D layout).
    pub fn with_transposed(mut self, name: &str) -> Self {
        self.transposed.push(name.to_string());
        self
    }

    /// Add a `(regex, replacement)` key rename.
    pub fn with_remap(mut self, from: &str, to: &str) -> Self {
        self.remap.push((from.to_string(), to.to_string()));
        self
    }
}

/// What a load did, for logs.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Tensors applied to the module.
    pub applied: usize,
    /// File tensors with no module slot (e.g. rotary `inv_freq`, `position_ids`, an unused
    /// pooler): ignored, listed for logs.
    pub unused: Vec<String>,
}

impl HfCheckpoint {
    /// Open a model directory: it must hold `config.json` and either `model.safetensors` or a
    /// shard index.
    pub fn open(dir: &Path) -> Result<Self, IoError> {
        if !dir.is_dir() {
            return Err(IoError::Fs {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model directory does not exist",
                ),
            });
        }
        let missing = |p: PathBuf, what: &str| IoError::Fs {
            path: p,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string()),
        };
        if !dir.join(MODEL_CONFIG).is_file() {
            return Err(missing(dir.join(MODEL_CONFIG), "missing model config"));
        }
        let shards = if dir.join(SINGLE).is_file() {
            vec![dir.join(SINGLE)]
        } else if dir.join(INDEX).is_file() {
            Self::shards_from_index(&dir.join(INDEX))?
        } else {
            return Err(missing(
                dir.join(SINGLE),
                "no model.safetensors and no model.safetensors.index.json",
            ));
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
        })
    }

    fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>, IoError> {
        let value: serde_json::Value =
            serde_json::from_slice(&read(index)?).map_err(|source| IoError::Json {
                path: index.to_path_buf(),
                source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| IoError::Unsupported {
                path: index.to_path_buf(),
                key: "weight_map".into(),
                value: "absent".into(),
                reason: "a shard index must map tensor names to files".into(),
            })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files = BTreeSet::new();
        for (key, file) in map {
            // a shard is a file beside the index: never a path that leaves the directory
            let plain = file.as_str().filter(|f| {
                let p = Path::new(f);
                p.file_name().is_some_and(|n| n == p.as_os_str()) && *f != ".."
            });
            let Some(file) = plain else {
                return Err(IoError::Unsupported {
                    path: index.to_path_buf(),
                    key: format!("weight_map.{key}"),
                    value: file.to_string(),
                    reason: "a shard must be a file name in the model directory".into(),
                });
            };
            files.insert(file);
        }
        Ok(files.into_iter().map(|f| dir.join(f)).collect())
    }

    /// Elements over every tensor of every shard, from the headers alone: what a config's
    /// dimensions are checked against before the model is allocated.
    pub fn elements(&self) -> Result<u128, IoError> {
        self.shards
            .iter()
            .map(|s| crate::tensors::read_header(s).map(|h| h.elements()))
            .sum()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The safetensors files, in order.
    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    /// Whether any shard holds a tensor whose key starts with `prefix` (a head stored in the
    /// checkpoint, the encoder attribute its keys carry). Reads the headers only.
    pub fn has_prefix(&self, prefix: &str) -> Result<bool, IoError> {
        for shard in &self.shards {
            let header = crate::tensors::read_header(shard)?;
            if header.tensors.keys().any(|n| n.starts_with(prefix)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Parse `config.json` into `T`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, IoError> {
        crate::fs::read_json(&self.dir.join(MODEL_CONFIG))
    }

    /// Load every shard into `module`. Fails on a shape mismatch (naming the file, key and both
    /// shapes), on an unreadable file, or when a module tensor is absent from every shard and
    /// not listed in `options.optional`.
    pub fn load_into<M: Module>(
        &self,
        module: &mut M,
        options: &LoadOptions,
    ) -> Result<LoadReport, IoError> {
        let patterns: Vec<(&str, &str)> = options
            .remap
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let remap = KeyRemapper::from_patterns(patterns).map_err(|e| IoError::Unsupported {
            path: self.dir.clone(),
            key: "remap".into(),
            value: format!("{:?}", options.remap),
            reason: e.to_string(),
        })?;
        let mut applied = BTreeSet::new();
        let mut missing: Option<BTreeSet<(String, String)>> = None;
        let mut unused = BTreeSet::new();
        for shard in &self.shards {
            let adapter = PyTorchToBurnAdapter
                .chain(TransposedWeights(options.transposed.clone()))
                .chain(FloatCastAdapter::to(options.dtype));
            let mut store = SafetensorsStore::from_file(shard)
                .with_from_adapter(adapter)
                .remap(remap.clone())
                .allow_partial(true);
            let result = module
                .load_from(&mut store)
                .map_err(|e| IoError::Safetensors {
                    path: shard.clone(),
                    reason: e.to_string(),
                })?;
            if let Some(error) = result.errors.first() {
                return Err(apply_error(shard, error));
            }
            applied.extend(result.applied);
            let shard_missing: BTreeSet<(String, String)> = result.missing.into_iter().collect();
            missing = Some(match missing {
                None => shard_missing,
                Some(m) => m.intersection(&shard_missing).cloned().collect(),
            });
            unused.extend(result.unused);
        }
        let optional: Vec<regex::Regex> = options
            .optional
            .iter()
            .filter_map(|p| regex::Regex::new(&format!("^(?:{p})$")).ok())
            .collect();
        if let Some((path, container)) = missing
            .unwrap_or_default()
            .into_iter()
            .find(|(p, _)| !optional.iter().any(|re| re.is_match(p)))
        {
            return Err(IoError::MissingTensor {
                path: self
                    .shards
                    .first()
                    .cloned()
                    .unwrap_or_else(|| self.dir.clone()),
                key: hf_name(&path, &container),
            });
        }
        unused.retain(|k| !applied.contains(k));
        Ok(LoadReport {
            applied: applied.len(),
            unused: unused.into_iter().collect(),
        })
    }
}

/// Transposes 2-D `weight` tensors of the named modules (PyTorch `Conv1D` stores `[in, out]`).
#[derive(Debug, Clone)]
struct TransposedWeights(Vec<String>);

impl ModuleAdapter for TransposedWeights {
    fn adapt(&self, tensor: PackTensor, _ctx: ModuleContext<'_>) -> PackTensor {
        let hit = self
            .0
            .iter()
            .any(|m| tensor.name.ends_with(&format!(".{m}.weight")));
        if !hit || tensor.shape.len() != 2 {
            return tensor;
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        let shape = Shape::from([tensor.shape[1], tensor.shape[0]]);
        bridge::map_data(tensor, name, dtype, shape, transpose_bytes)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

fn transpose_bytes(data: TensorData) -> TensorData {
    let (rows, cols) = (data.shape()[0], data.shape()[1]);
    let size = data.dtype().size();
    let src = data.as_bytes();
    let mut out = vec![0u8; src.len()];
    for i in 0..rows {
        for j in 0..cols {
            let (s, d) = ((i * cols + j) * size, (j * rows + i) * size);
            out[d..d + size].copy_from_slice(&src[s..s + size]);
        }
    }
    TensorData::from_bytes_vec(out, [cols, rows], data.dtype())
}

/// Burn names norm parameters `gamma`/`beta`; report the checkpoint's `weight`/`bias`.
fn hf_name(path: &str, container: &str) -> String {
    let is_norm = container.ends_with("Norm");
    match path.rsplit_once('.') {
        Some((head, "gamma")) if is_norm => format!("{head}.weight"),
        Some((head, "beta")) if is_norm => format!("{head}.bias"),
        _ => path.to_string(),
    }
}

fn apply_error(shard: &Path, error: &ApplyError) -> IoError {
    match error {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => IoError::Shape {
            path: shard.to_path_buf(),
            key: path.clone(),
            expected: expected.as_slice().to_vec(),
            found: found.as_slice().to_vec(),
        },
        other => IoError::Safetensors {
            path: shard.to_path_buf(),
            reason: other.to_string(),
        },
    }
}
