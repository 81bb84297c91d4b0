//! Training checkpoints: every trainable tensor (adapters, MonteCLoRA parameters, classifier
//! heads) and AdamW's moments, keyed by module path, plus the loop state (step, data cursor).
//! Written into a `.partial` folder, flushed, then renamed into place, so a crash or a full
//! disk at any instant leaves no torn checkpoint under a name a resume trusts
//! (docs/reliability.md, "Checkpoints"); read back onto a freshly built model for a
//! bit-identical continuation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use balora_io::IoError;
use balora_io::fs::{read_json, write_json};
use balora_io::tensors::{SafetensorsFile, write_safetensors};
use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::fault::{TENSORS_WRITTEN, pause_point};
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
    /// Elements and optimizer-state dtype of every restored parameter, by path: what its
    /// AdamW moments must match.
    restored: BTreeMap<String, (usize, DType)>,
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
            Ok(t) => {
                let state_dtype = balora_adapters::training_dtype(dtype);
                self.restored
                    .insert(path.to_string(), (shape.iter().product(), state_dtype));
                param.map(|_| t.require_grad())
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// `checkpoint-<step>`: the only folder names the trainer writes, trusts or removes.
pub(crate) fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix("checkpoint-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The folder a checkpoint named `name` is assembled in before it is renamed to `name`.
fn partial_name(name: &str) -> String {
    format!(".{name}.partial")
}

/// Whether `name` is such a folder (what a crash in the middle of a write leaves).
pub(crate) fn is_partial_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".partial"))
        .is_some_and(is_checkpoint_name)
}

/// Write checkpoint `name` of `model`, `optim` and `state` under `output`: assembled in
/// `.<name>.partial/` (tensors, then the state file that marks it complete), flushed to disk,
/// then renamed to `name` and the rename flushed. A crash leaves either no `name` or a
/// complete one; a failed write (a full disk) removes its partial folder. A stale `name`
/// (written by a run that crashed before pointing `latest` at it) is replaced; the caller
/// never passes the checkpoint `latest` names.
pub fn save_checkpoint<M: Module>(
    output: &Path,
    name: &str,
    model: &M,
    optim: &TorchAdamW,
    state: &LoopState,
) -> Result<PathBuf, TrainError> {
    let partial = output.join(partial_name(name));
    let result = write_partial(&partial, model, optim, state).and_then(|()| {
        let dir = output.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(fs_err(&dir))?;
        }
        std::fs::rename(&partial, &dir).map_err(fs_err(&dir))?;
        balora_io::fs::sync_dir(output)?;
        Ok(dir)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

fn fs_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |source| balora_io::IoError::Fs { path, source }.into()
}

fn write_partial<M: Module>(
    partial: &Path,
    model: &M,
    optim: &TorchAdamW,
    state: &LoopState,
) -> Result<(), TrainError> {
    if partial.exists() {
        std::fs::remove_dir_all(partial).map_err(fs_err(partial))?;
    }
    std::fs::create_dir(partial).map_err(fs_err(partial))?;
    let mut c = Collect {
        out: BTreeMap::new(),
    };
    visit_paths(model, &mut c);
    let mut tensors = c.out;
    for (k, v) in optim.state_data() {
        tensors.insert(format!("adam.{k}"), v);
    }
    write_safetensors(&partial.join(TENSORS), &tensors)?;
    pause_point(TENSORS_WRITTEN, state.step);
    // the state file is written last: its presence marks a complete checkpoint
    write_json(&partial.join(STATE), state)?;
    Ok(())
}

/// Whether `dir` holds a complete checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(STATE).is_file() && dir.join(TENSORS).is_file()
}

/// Restore the trainable tensors of `model` and the optimizer state (onto `device`) from `dir`,
/// once `accept` has taken the loop state (its refusal names the state file).
pub fn load_checkpoint<M: Module>(
    dir: &Path,
    model: M,
    optim: &mut TorchAdamW,
    device: &Device,
    accept: impl FnOnce(&LoopState) -> Result<(), String>,
) -> Result<(M, LoopState), TrainError> {
    let path = dir.join(STATE);
    let state: LoopState = read_json(&path)?;
    accept(&state).map_err(|reason| TrainError::Checkpoint { path, reason })?;
    let file = SafetensorsFile::open(&dir.join(TENSORS))?;
    let mut restore = Restore {
        file: &file,
        error: None,
        restored: BTreeMap::new(),
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
        // moments belong to a restored parameter and have its number of elements
        let Some(&(n, dtype)) = restore.restored.get(path) else {
            return Err(IoError::UnexpectedTensor {
                path: file.path().to_path_buf(),
                key: name.clone(),
            }
            .into());
        };
        let load = |suffix: &str| -> Result<Tensor<1>, TrainError> {
            let key = format!("adam.{path}.{suffix}");
            let (values, shape) = file.values::<f64>(&key)?;
            if shape != [n] {
                return Err(IoError::Shape {
                    path: file.path().to_path_buf(),
                    key,
                    expected: vec![n],
                    found: shape,
                }
                .into());
            }
            Ok(Tensor::from_data(
                TensorData::new(values, [n]),
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
