//! Training checkpoints: every trainable tensor (adapters, MonteCLoRA parameters, classifier
//! heads) and AdamW's moments, keyed by module path, plus the loop state (step, data cursor).
//! Written atomically (temp + rename), so a crash never leaves a torn checkpoint, and read
//! back onto a freshly built model for a bit-identical continuation.

use std::collections::BTreeMap;
use std::path::Path;

use balora_io::IoError;
use balora_io::fs::{read_json, write_json};
use balora_io::tensors::{SafetensorsFile, write_safetensors};
use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::optim::{Moments, TorchAdamW};
use crate::paths::{PathMapper, PathVisitor, map_paths, visit_paths};

const TENSORS: &str = "trainer_state.safetensors";
const STATE: &str = "trainer_state.json";

/// Where the loop stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: usize,
    /// Current epoch.
    pub epoch: u64,
    /// Batches of the current epoch already consumed.
    pub batch_in_epoch: usize,
    /// AdamW updates made.
    pub adam_steps: u64,
}

struct Collect {
    out: BTreeMap<String, TensorData>,
}

impl PathVisitor for Collect {
    fn visit<const D: usize>(&mut self, path: &str, param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            self.out
                .insert(format!("param.{path}"), param.val().to_data());
        }
    }
}

struct Restore<'a> {
    file: &'a SafetensorsFile,
    error: Option<IoError>,
}

impl PathMapper for Restore<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.is_require_grad() || self.error.is_some() {
            return param;
        }
        let key = format!("param.{path}");
        let shape = param.shape().dims::<D>();
        let (device, dtype) = (param.val().device(), param.val().dtype());
        match self.file.tensor::<D>(&key, shape, &device, dtype) {
            Ok(t) => param.map(|_| t.require_grad()),
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// Write a checkpoint of `model`, `optim` and `state` into `dir` (created if needed).
pub fn save_checkpoint<M: Module>(
    dir: &Path,
    model: &M,
    optim: &TorchAdamW,
    state: &LoopState,
) -> Result<(), TrainError> {
    let mut c = Collect {
        out: BTreeMap::new(),
    };
    visit_paths(model, &mut c);
    let mut tensors = c.out;
    for (k, v) in optim.state_data() {
        tensors.insert(format!("adam.{k}"), v);
    }
    write_safetensors(&dir.join(TENSORS), &tensors)?;
    // the JSON is written last: its presence marks a complete checkpoint
    write_json(&dir.join(STATE), state)?;
    Ok(())
}

/// Whether `dir` holds a complete checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(STATE).is_file() && dir.join(TENSORS).is_file()
}

/// Restore the trainable tensors of `model` and the optimizer state (onto `device`) from `dir`.
pub fn load_checkpoint<M: Module>(
    dir: &Path,
    model: M,
    optim: &mut TorchAdamW,
    device: &Device,
) -> Result<(M, LoopState), TrainError> {
    let state: LoopState = read_json(&dir.join(STATE))?;
    let file = SafetensorsFile::open(&dir.join(TENSORS))?;
    let mut restore = Restore {
        file: &file,
        error: None,
    };
    let model = map_paths(model, &mut restore);
    if let Some(e) = restore.error {
        return Err(e.into());
    }
    optim.state.clear();
    optim.steps = state.adam_steps;
    for name in file.names() {
        let Some(path) = name
            .strip_prefix("adam.")
            .and_then(|p| p.strip_suffix(".m"))
        else {
            continue;
        };
        let load = |suffix: &str| -> Result<Tensor<1>, TrainError> {
            let key = format!("adam.{path}.{suffix}");
            let (values, shape) = file.values::<f64>(&key)?;
            let dtype = file.dtype(&key).unwrap_or(DType::F32);
            Ok(Tensor::from_data(
                TensorData::new(values, [shape[0]]),
                (device, dtype),
            ))
        };
        optim.state.insert(
            path.to_string(),
            Moments {
                m: load("m")?,
                v: load("v")?,
            },
        );
    }
    Ok((model, state))
}
