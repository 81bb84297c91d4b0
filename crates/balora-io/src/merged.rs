//! Merged export: a full Hugging Face checkpoint with the adapters folded into the weights,
//! for serving without peft (transformers' `AutoModel*.from_pretrained`, vLLM, balora itself).
//!
//! The export starts from the base checkpoint's own files, not from the model in memory:
//! every tensor keeps its original dtype and bytes, except each adapted weight, which becomes
//! `W + ΔW` with `ΔW = s·B·A` (minus `s·B₀·A₀` for PiSSA, whose base in memory is the residual
//! — so the export applies to the *original* weights, like a converted adapter) computed in
//! f32 and cast once to the weight's dtype. Tensors of modules trained in full (a classifier
//! head) are written from the model. Keys are the model's module paths (transformers'
//! `*ForSequenceClassification` / `*ForCausalLM` names), so a bare encoder checkpoint comes out
//! with its `bert.` prefix. Above `max_shard_bytes` the weights are split into
//! `model-0000i-of-0000n.safetensors` with a `model.safetensors.index.json`, as transformers
//! shards. `config.json` (with the caller's overrides, e.g. the label names) and every other
//! file of the base directory (tokenizer, generation config, chat template) are copied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use balora_adapters::AdapterSlots;
use burn::tensor::{DType, Tensor, TensorData};
use serde_json::{Map, Value, json};

use crate::IoError;
use crate::checkpoint::{HfCheckpoint, MODEL_CONFIG};
use crate::fs::{atomic_write, read};
use crate::tensors::{SafetensorsFile, write_safetensors};

/// Options of [`save_merged`].
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Largest weights file; bigger checkpoints are sharded with an index. Default 5 GB
    /// (transformers' `max_shard_size` of `save_pretrained` in the 4.x line).
    pub max_shard_bytes: u64,
    /// Top-level `config.json` keys to set (e.g. `architectures`, `id2label`, `label2id`).
    pub config_overrides: Map<String, Value>,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            max_shard_bytes: 5_000_000_000,
            config_overrides: Map::new(),
        }
    }
}

/// What [`save_merged`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// Weights files, in order.
    pub shards: Vec<PathBuf>,
    /// Tensors whose weight received an adapter's update.
    pub merged: usize,
    /// Tensors written from the model (modules trained in full).
    pub from_model: usize,
    /// Bytes of tensor data written.
    pub total_bytes: u64,
}

/// Weight files the export replaces rather than copies.
fn is_weights_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
        || name.ends_with(".bin")
        || name.ends_with(".gguf")
        || name == MODEL_CONFIG
}

/// The file key of the weight of the layer at module path `path`: `path.weight` itself, or
/// the one key that is a dotted suffix of it (a checkpoint saved without the task model's
/// prefix, `encoder.…` for `bert.encoder.…`).
fn weight_key<'a>(path: &str, keys: &'a BTreeMap<String, usize>) -> Option<&'a str> {
    let full = format!("{path}.weight");
    if let Some((k, _)) = keys.get_key_value(&full) {
        return Some(k);
    }
    let mut found = keys
        .keys()
        .filter(|k| full.ends_with(&format!(".{k}")))
        .map(String::as_str);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Write `model` merged into the checkpoint at `base_dir` as a new checkpoint in `out`.
///
/// `base_dir` must be the checkpoint the model was loaded from. Fails, naming the file and
/// key, when an adapted layer has no weight there or its shape does not match the layer.
pub fn save_merged<M: AdapterSlots>(
    model: &M,
    base_dir: &Path,
    out: &Path,
    options: &MergeOptions,
) -> Result<MergeReport, IoError> {
    let checkpoint = HfCheckpoint::open(base_dir)?;
    let shards: Vec<SafetensorsFile> = checkpoint
        .shards()
        .iter()
        .map(|p| SafetensorsFile::open(p))
        .collect::<Result<_, _>>()?;
    // every tensor of the base, by key → its shard
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        for name in shard.names() {
            keys.insert(name, i);
        }
    }
    // the updates, by file key, in the file's layout
    let transposed = model.fan_in_fan_out();
    let mut deltas: BTreeMap<String, Tensor<2>> = BTreeMap::new();
    let mut prefix: Option<String> = None;
    let mut missing = None;
    model.visit_slots(&mut |path, slot| {
        let Some(delta) = slot.delta_from_pretrained() else {
            return;
        };
        let Some(key) = weight_key(path, &keys) else {
            missing.get_or_insert_with(|| format!("{path}.weight"));
            return;
        };
        let full = format!("{path}.weight");
        prefix.get_or_insert_with(|| full[..full.len() - key.len()].to_string());
        let delta = if transposed { delta.transpose() } else { delta };
        deltas.insert(key.to_string(), delta);
    });
    if let Some(key) = missing {
        return Err(IoError::MissingTensor {
            path: checkpoint.shards()[0].clone(),
            key,
        });
    }
    let prefix = prefix.unwrap_or_default();
    let rename = |key: &str| -> String {
        if key.starts_with(&prefix) {
            key.to_string()
        } else {
            format!("{prefix}{key}")
        }
    };
    // the tensors trained in full, by their module path
    let from_model = crate::peft::saved_module_data(model);
    // plan: (output key, source) in key order, with sizes for sharding
    enum Source<'a> {
        Base(&'a str),
        Model(&'a TensorData),
    }
    let mut plan: BTreeMap<String, (Source, u64)> = BTreeMap::new();
    for (key, &shard) in &keys {
        let name = rename(key);
        if from_model.contains_key(&name) {
            continue;
        }
        let shape = shards[shard].shape(key).unwrap_or_default();
        let dtype = shards[shard].dtype(key).ok_or_else(|| IoError::Dtype {
            path: shards[shard].path().to_path_buf(),
            key: key.clone(),
            dtype: "unsupported".into(),
        })?;
        let bytes = shape.iter().product::<usize>() as u64 * dtype.size() as u64;
        plan.insert(name, (Source::Base(key.as_str()), bytes));
    }
    for (name, data) in &from_model {
        plan.insert(
            name.clone(),
            (Source::Model(data), data.as_bytes().len() as u64),
        );
    }
    // shards of at most max_shard_bytes (a larger single tensor gets a shard of its own)
    let mut groups: Vec<Vec<&String>> = vec![Vec::new()];
    let mut size = 0u64;
    for (name, (_, bytes)) in &plan {
        let last = groups.last_mut().expect("one group");
        if !last.is_empty() && size + bytes > options.max_shard_bytes {
            groups.push(Vec::new());
            size = 0;
        }
        groups.last_mut().expect("one group").push(name);
        size += bytes;
    }
    std::fs::create_dir_all(out).map_err(|source| IoError::Fs {
        path: out.to_path_buf(),
        source,
    })?;
    let n = groups.len();
    let file_name = |i: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        }
    };
    let mut report = MergeReport {
        shards: Vec::new(),
        merged: 0,
        from_model: from_model.len(),
        total_bytes: 0,
    };
    let mut weight_map = Map::new();
    for (i, group) in groups.iter().enumerate() {
        let mut tensors = BTreeMap::new();
        for &name in group {
            let (source, bytes) = &plan[name];
            report.total_bytes += *bytes;
            let data = match source {
                Source::Model(data) => (*data).clone(),
                Source::Base(key) => {
                    let file = &shards[keys[*key]];
                    let data = file.data(key)?;
                    match deltas.get(*key) {
                        None => data,
                        Some(delta) => {
                            report.merged += 1;
                            merge_into(file, key, data, delta.clone())?
                        }
                    }
                }
            };
            weight_map.insert(name.clone(), json!(file_name(i)));
            tensors.insert(name.clone(), data);
        }
        let path = out.join(file_name(i));
        write_safetensors(&path, &tensors)?;
        report.shards.push(path);
    }
    if n > 1 {
        let index = json!({
            "metadata": {"total_size": report.total_bytes},
            "weight_map": weight_map,
        });
        let text = serde_json::to_string_pretty(&index).map_err(|source| IoError::Json {
            path: out.join("model.safetensors.index.json"),
            source,
        })?;
        atomic_write(&out.join("model.safetensors.index.json"), text.as_bytes())?;
    }
    write_config(base_dir, out, &options.config_overrides)?;
    copy_other_files(base_dir, out)?;
    Ok(report)
}

/// `W + ΔW` in f32, back in the weight's dtype, after checking the shapes agree.
fn merge_into(
    file: &SafetensorsFile,
    key: &str,
    data: TensorData,
    delta: Tensor<2>,
) -> Result<TensorData, IoError> {
    let dtype = data.dtype();
    let shape = data.shape().as_slice().to_vec();
    let expected = delta.dims().to_vec();
    if shape != expected {
        return Err(IoError::Shape {
            path: file.path().to_path_buf(),
            key: key.to_string(),
            expected,
            found: shape,
        });
    }
    let device = delta.device();
    let weight = Tensor::<2>::from_data(data.convert_dtype(DType::F32), (&device, DType::F32));
    let merged = weight + delta.cast(DType::F32);
    Ok(merged.into_data().convert_dtype(dtype))
}

fn write_config(
    base_dir: &Path,
    out: &Path,
    overrides: &Map<String, Value>,
) -> Result<(), IoError> {
    let path = base_dir.join(MODEL_CONFIG);
    let json_err = |source| IoError::Json {
        path: path.clone(),
        source,
    };
    let mut config: Value = serde_json::from_slice(&read(&path)?).map_err(json_err)?;
    if let Value::Object(map) = &mut config {
        for (k, v) in overrides {
            map.insert(k.clone(), v.clone());
        }
    }
    let mut text = serde_json::to_string_pretty(&config).map_err(json_err)?;
    text.push('\n');
    atomic_write(&out.join(MODEL_CONFIG), text.as_bytes())
}

/// Copy the tokenizer, generation config, chat template and every other non-weight file.
fn copy_other_files(base_dir: &Path, out: &Path) -> Result<(), IoError> {
    let fs_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IoError::Fs { path, source }
    };
    for entry in std::fs::read_dir(base_dir).map_err(fs_err(base_dir))? {
        let entry = entry.map_err(fs_err(base_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().is_file() || is_weights_file(&name) {
            continue;
        }
        atomic_write(&out.join(&name), &read(&entry.path())?)?;
    }
    Ok(())
}
