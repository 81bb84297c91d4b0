//! Test helpers shared by balora's crates (a dev-dependency only).
//!
//! * [`f64_device`] / [`tensor64`]: float64 tensors on flex with autodiff, where central finite
//!   differences are accurate to ~1e-10.
//! * [`grad_check`]: compares autodiff's gradient of a scalar function with central finite
//!   differences and returns the relative error.

#![warn(missing_docs)]

use burn::tensor::{DType, Device, Tensor, TensorData};

/// flex with autodiff: the device for gradient checks.
pub fn f64_device() -> Device {
    Device::flex().autodiff()
}

/// A float64 tensor from row-major values.
pub fn tensor64<const D: usize>(values: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), shape),
        (device, DType::F64),
    )
}

/// A float32 tensor from row-major values (given in f64).
pub fn tensor32<const D: usize>(values: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), shape),
        (device, DType::F32),
    )
}

/// Deterministic pseudo-random values in [-1, 1) from a 64-bit LCG, so fixtures need no RNG
/// crate and are identical on every platform.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Host copy of a tensor's values as f64.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.try_into_vec_as::<f64>().expect("tensor readback")
}

/// Largest absolute elementwise difference of two equally shaped tensors.
pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Result of a finite-difference gradient check.
#[derive(Debug, Clone, Copy)]
pub struct GradCheck {
    /// `‖g_autodiff − g_fd‖∞ / max(‖g_fd‖∞, 1e-12)`.
    pub relative_error: f64,
    /// `‖g_fd‖∞`, to show the gradient was not trivially zero.
    pub grad_norm: f64,
}

/// Check the gradient of the scalar function `f` at `x` (a float64 tensor on
/// [`f64_device`]) against central differences with step `h`.
///
/// `f` must return a one-element tensor. Every element of `x` is perturbed, so keep `x` small.
pub fn grad_check<const D: usize, F>(f: F, x: Tensor<D>, h: f64) -> GradCheck
where
    F: Fn(Tensor<D>) -> Tensor<1>,
{
    let device = x.device();
    let shape = x.dims();
    let base = values(x.clone().detach());
    let leaf = tensor64(&base, shape, &device).require_grad();
    let out = f(leaf.clone());
    assert_eq!(out.dims(), [1], "grad_check needs a scalar function");
    let grads = out.backward();
    let analytic = values(leaf.grad(&grads).expect("x received no gradient"));
    let eval = |v: &[f64]| values(f(tensor64(v, shape, &device)))[0];
    let mut numeric = Vec::with_capacity(base.len());
    let mut probe = base.clone();
    for i in 0..base.len() {
        probe[i] = base[i] + h;
        let up = eval(&probe);
        probe[i] = base[i] - h;
        let down = eval(&probe);
        probe[i] = base[i];
        numeric.push((up - down) / (2.0 * h));
    }
    let grad_norm = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = analytic
        .iter()
        .zip(&numeric)
        .fold(0.0f64, |m, (a, n)| m.max((a - n).abs()));
    GradCheck {
        relative_error: err / grad_norm.max(1e-12),
        grad_norm,
    }
}

/// Assert a gradient check passes at `tol` with a non-vanishing gradient.
#[track_caller]
pub fn assert_grad<const D: usize, F>(what: &str, f: F, x: Tensor<D>, tol: f64)
where
    F: Fn(Tensor<D>) -> Tensor<1>,
{
    let r = grad_check(f, x, 1e-6);
    assert!(
        r.grad_norm > 1e-8,
        "{what}: gradient vanished (‖g‖∞ = {:e}); the check would prove nothing",
        r.grad_norm
    );
    assert!(
        r.relative_error < tol,
        "{what}: relative gradient error {:e} ≥ {tol:e} (‖g‖∞ = {:e})",
        r.relative_error,
        r.grad_norm
    );
}

/// The workspace root (the testkit lives at `crates/balora-testkit`).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The device spec of the wgpu agreement tests: `$BALORA_TEST_GPU`, by default `wgpu:cpu`
/// (Mesa's lavapipe in CI); `scripts/gpu-check` sets `wgpu`, the best adapter wgpu finds, to
/// run the same tests on a real GPU (docs/gpu.md).
pub fn gpu_spec() -> String {
    std::env::var("BALORA_TEST_GPU").unwrap_or_else(|_| "wgpu:cpu".into())
}

/// The committed fixtures directory `tests/fixtures/<rel>`, under `$BALORA_REPO` when set: a
/// test binary built on one machine finds the fixtures of a checkout elsewhere
/// (`scripts/gpu-check` runs prebuilt binaries on a GPU machine, docs/gpu.md).
pub fn fixture(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("BALORA_REPO").map_or_else(workspace_root, Into::into);
    root.join("tests/fixtures").join(rel)
}

/// A real checkpoint or dataset prepared by `scripts/fetch-assets` (`$BALORA_ASSETS`, default
/// `.cache/assets`). Panics with the command to run when it is missing: real-weight tests must
/// not pass silently without their weights.
pub fn asset(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("BALORA_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/assets"));
    let path = root.join(rel);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/fetch-assets` first",
        path.display()
    );
    path
}
