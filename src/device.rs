//! Turning a `--device` string into a Burn [`Device`].

use burn::tensor::Device;
use thiserror::Error;

/// A `--device` value that cannot be used in this build.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The backend exists but its cargo feature was not compiled in.
    #[error("device {spec:?} needs balora built with `--features {feature}`")]
    NotCompiled {
        /// The string as given.
        spec: String,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// Not a device this project knows.
    #[error("unknown device {spec:?}: expected cpu, wgpu, wgpu:cpu, wgpu:N, cuda or cuda:N")]
    Unknown {
        /// The string as given.
        spec: String,
    },
}

/// Parse `cpu | wgpu | wgpu:cpu | wgpu:N | cuda | cuda:N` into a device, with autodiff when
/// `autodiff` is set (training), without it otherwise (inference, evaluation).
///
/// * `cpu` is the flex backend (pure Rust, f32/f64).
/// * `wgpu` picks the best adapter wgpu finds; `wgpu:cpu` forces a software adapter (Mesa
///   lavapipe), which wgpu never chooses by itself; `wgpu:N` is the N-th discrete GPU.
/// * `cuda:N` is the N-th NVIDIA GPU.
pub fn parse_device(spec: &str, autodiff: bool) -> Result<Device, DeviceError> {
    let lower = spec.trim().to_ascii_lowercase();
    let (kind, index) = match lower.split_once(':') {
        Some((k, i)) => (k, Some(i)),
        None => (lower.as_str(), None),
    };
    let unknown = || DeviceError::Unknown {
        spec: spec.to_string(),
    };
    let index_num = || -> Result<usize, DeviceError> {
        index.map_or(Ok(0), |i| i.parse().map_err(|_| unknown()))
    };
    let device = match kind {
        "cpu" | "flex" if index.is_none() => cpu(spec)?,
        "wgpu" => wgpu(spec, index, index_num)?,
        "cuda" => cuda(spec, index_num()?)?,
        _ => return Err(unknown()),
    };
    Ok(if autodiff { device.autodiff() } else { device })
}

#[cfg(feature = "flex")]
fn cpu(_spec: &str) -> Result<Device, DeviceError> {
    Ok(Device::flex())
}

#[cfg(not(feature = "flex"))]
fn cpu(spec: &str) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled {
        spec: spec.to_string(),
        feature: "flex",
    })
}

#[cfg(feature = "wgpu")]
fn wgpu(
    _spec: &str,
    index: Option<&str>,
    index_num: impl Fn() -> Result<usize, DeviceError>,
) -> Result<Device, DeviceError> {
    use burn::tensor::DeviceKind;
    let kind = match index {
        None => DeviceKind::DefaultDevice,
        Some("cpu") => DeviceKind::Cpu,
        Some(_) => DeviceKind::DiscreteGpu(index_num()?),
    };
    Ok(Device::wgpu(kind))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(
    spec: &str,
    _index: Option<&str>,
    _index_num: impl Fn() -> Result<usize, DeviceError>,
) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled {
        spec: spec.to_string(),
        feature: "wgpu",
    })
}

#[cfg(feature = "cuda")]
fn cuda(_spec: &str, index: usize) -> Result<Device, DeviceError> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(spec: &str, _index: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled {
        spec: spec.to_string(),
        feature: "cuda",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_flex_and_autodiff_is_a_flag() {
        assert!(parse_device("cpu", true).unwrap().is_autodiff());
        assert!(!parse_device("CPU", false).unwrap().is_autodiff());
    }

    #[test]
    fn unknown_devices_are_named_in_the_error() {
        let e = parse_device("tpu:0", true).unwrap_err();
        assert!(e.to_string().contains("\"tpu:0\""));
        assert!(parse_device("cuda:x", true).is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_backend_not_compiled_in_says_which_feature_enables_it() {
        let e = parse_device("cuda:1", true).unwrap_err();
        assert_eq!(
            e,
            DeviceError::NotCompiled {
                spec: "cuda:1".into(),
                feature: "cuda"
            }
        );
        assert!(e.to_string().contains("--features cuda"));
    }
}
