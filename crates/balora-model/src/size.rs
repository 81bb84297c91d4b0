//! Checking a `config.json` before a model is built from it.
//!
//! A model allocates its weights from the config's dimensions before the checkpoint's tensors
//! are read, so a hostile or broken config (`hidden_size: 1000000000`) would ask for terabytes
//! and abort the process. Every model therefore calls [`check_config_size`] first: dimensions
//! must be positive, and the weights they imply must fit in the memory this machine has
//! available (weights pass through host memory while loading, whatever the device).

use std::path::Path;

use burn::tensor::DType;

use crate::ModelError;

/// Refuse a config with a zero dimension, or whose weights (`params` elements of `dtype`,
/// computed by the caller from the same dimensions, without overflow in `u128`) exceed the
/// memory available. The error names the file, the key, the estimate and what is available.
pub fn check_config_size(
    config: &Path,
    dims: &[(&'static str, usize)],
    params: impl FnOnce() -> u128,
    dtype: DType,
) -> Result<(), ModelError> {
    if let Some(&(key, value)) = dims.iter().find(|(_, v)| *v == 0) {
        return Err(ModelError::InvalidDimension {
            path: config.to_path_buf(),
            key,
            value,
        });
    }
    let estimate = params().saturating_mul(dtype.size() as u128);
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if estimate > available as u128 {
        let &(key, value) = dims
            .iter()
            .max_by_key(|(_, v)| *v)
            .expect("every model passes its dimensions");
        return Err(ModelError::TooLarge {
            path: config.to_path_buf(),
            key,
            value,
            estimate_mb: (estimate / (1 << 20)).min(u64::MAX as u128) as u64,
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
    fn zero_and_oversized_dimensions_are_refused_with_the_key() {
        let path = Path::new("m/config.json");
        let e = check_config_size(path, &[("hidden_size", 0)], || 0, DType::F32).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("m/config.json") && e.contains("hidden_size = 0"),
            "{e}"
        );
        let d = 1_000_000_000usize;
        let e = check_config_size(
            path,
            &[("vocab_size", 49152), ("hidden_size", d)],
            || 49152 * d as u128 * 2,
            DType::F32,
        );
        if available_memory().is_some() {
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains("hidden_size = 1000000000")
                    && e.contains("375000000 MB of weights")
                    && e.contains("available"),
                "{e}"
            );
        }
        assert!(check_config_size(path, &[("hidden_size", 64)], || 64 * 64, DType::F32).is_ok());
    }
}
