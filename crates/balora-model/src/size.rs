//! Checking a `config.json` before a model is built from it.
//!
//! A model allocates its weights from the config's dimensions before the checkpoint's tensors
//! are read, so a hostile or broken config (`hidden_size: 1000000000`) would ask for terabytes
//! and abort the process. Every model therefore loads its config through [`load_config`]:
//! dimensions must be positive, the architecture's own rules must hold, the weights the
//! dimensions imply must fit in the memory this machine has available (weights pass through
//! host memory while loading, whatever the device), and they must be about as many as the
//! checkpoint's headers say it holds (docs/reliability.md, "Loading").

use std::path::Path;

use balora_io::HfCheckpoint;
use burn::tensor::DType;
use serde::de::DeserializeOwned;

use crate::ModelError;

/// A model's `config.json`: the dimensions it allocates from and the rules it must satisfy.
pub trait ModelConfig: DeserializeOwned {
    /// Every dimension the model allocates from, by its `config.json` key.
    fn dims(&self) -> Vec<(&'static str, usize)>;
    /// Parameters the dimensions imply (in `f64`: a hostile config cannot overflow it). Called
    /// only once every dimension is positive and [`validate`](Self::validate) passed.
    fn parameters(&self) -> f64;
    /// Reject what the implementation does not compute (unknown `model_type`, activation,
    /// dimensions that do not divide).
    fn validate(&self) -> Result<(), ModelError>;
}

/// A checkpoint may hold fewer tensors than the config implies (a freshly drawn classifier
/// head, a pooler left out) but not a model of another size: the config's parameters may
/// exceed the checkpoint's elements by this factor plus [`SLACK`].
const RATIO: f64 = 1.25;
const SLACK: f64 = (1u64 << 20) as f64;

/// Parse and check the `config.json` of `checkpoint` for weights of `dtype`, before anything
/// is allocated from it; errors name the file, the key, the estimate and what is available.
pub fn load_config<C: ModelConfig>(
    checkpoint: &HfCheckpoint,
    dtype: DType,
) -> Result<C, ModelError> {
    let path = checkpoint.dir().join(balora_io::MODEL_CONFIG);
    let config: C = checkpoint.config()?;
    let dims = config.dims();
    if let Some(&(key, value)) = dims.iter().find(|(_, v)| *v == 0) {
        return Err(ModelError::InvalidDimension { path, key, value });
    }
    config.validate()?;
    let params = config.parameters();
    let (key, value) = largest(&dims);
    check_memory(&path, key, value, params * dtype.size() as f64)?;
    let held = checkpoint.elements()? as f64;
    if params > held * RATIO + SLACK {
        return Err(ModelError::CheckpointMismatch {
            path,
            key,
            value,
            parameters: params,
            elements: held as u64,
        });
    }
    Ok(config)
}

/// Refuse a `config.json` value that must be a positive finite number (a norm's ε).
pub fn positive(key: &'static str, value: f64) -> Result<(), ModelError> {
    if value.is_finite() && value > 0.0 {
        return Ok(());
    }
    Err(ModelError::UnsupportedConfig {
        key,
        value: value.to_string(),
        expected: "a finite value > 0",
    })
}

fn largest(dims: &[(&'static str, usize)]) -> (&'static str, usize) {
    dims.iter()
        .copied()
        .max_by_key(|(_, v)| *v)
        .unwrap_or(("(no dimension)", 0))
}

/// Refuse `bytes` of weights (estimated from `key = value` of `config`) beyond the memory
/// available.
fn check_memory(
    config: &Path,
    key: &'static str,
    value: usize,
    bytes: f64,
) -> Result<(), ModelError> {
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if bytes > available as f64 {
        return Err(ModelError::TooLarge {
            path: config.to_path_buf(),
            key,
            value,
            estimate_mb: (bytes / f64::from(1 << 20)).min(u64::MAX as f64) as u64,
            available_mb: available / (1 << 20),
        });
    }
    Ok(())
}

/// `MemAvailable` of `/proc/meminfo` in bytes, where the system reports it.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_beyond_the_available_memory_are_refused_with_the_key() {
        let path = Path::new("m/config.json");
        let d = 1_000_000_000usize;
        let bytes = 49152.0 * d as f64 * 2.0 * 4.0;
        let e = check_memory(path, "hidden_size", d, bytes);
        if available_memory().is_some() {
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains("m/config.json")
                    && e.contains("hidden_size = 1000000000")
                    && e.contains("375000000 MB of weights")
                    && e.contains("available"),
                "{e}"
            );
        }
        assert!(check_memory(path, "hidden_size", 64, 64.0 * 64.0 * 4.0).is_ok());
    }
}
