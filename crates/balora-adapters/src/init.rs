//! Initial factors of an adapter: peft's Gaussian/Kaiming init and PiSSA (docs/methods.md,
//! "PiSSA initialisation").

use burn::tensor::{DType, Tensor, TensorData};
use faer::MatRef;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardUniform};

use crate::svd::{HostFloat, TopSvd, randomized_svd, top_svd};
use crate::{AdapterError, InitMode, LoraConfig};

/// The factors an adapter starts from, and the base weight it must then sit on.
#[derive(Debug, Clone)]
pub struct InitialFactors {
    /// `lora_A`, `[r, in]`.
    pub lora_a: Tensor<2>,
    /// `lora_B`, `[out, r]`.
    pub lora_b: Tensor<2>,
    /// For PiSSA, the residual `W − s·B·A` that replaces the base weight.
    pub residual: Option<Tensor<2>>,
}

/// A stable 64-bit hash (FNV-1a) of a layer path, so every layer draws its own random stream
/// from one seed, independent of traversal order and of the device.
pub(crate) fn path_seed(seed: u64, path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Compute the initial factors of the adapter for the layer at `path` whose base weight is
/// `weight` (`[out, in]`), following `config.init`.
pub fn initial_factors(
    weight: &Tensor<2>,
    config: &LoraConfig,
    path: &str,
) -> Result<InitialFactors, AdapterError> {
    let [out, inp] = weight.dims();
    let r = config.r;
    let device = weight.device();
    // factors train in f32 over a half-precision base
    let dtype = balora_kernels::training_dtype(weight.dtype());
    let seed = path_seed(config.seed, path);
    match config.init {
        InitMode::Gaussian => {
            // peft: kaiming_uniform_(A, a=√5) ⇒ bound = √(6/((1+5)·in)) = 1/√in.
            let bound = 1.0 / (inp as f64).sqrt();
            let mut rng = StdRng::seed_from_u64(seed);
            let a: Vec<f64> = (0..r * inp)
                .map(|_| {
                    let u: f64 = StandardUniform.sample(&mut rng);
                    (2.0 * u - 1.0) * bound
                })
                .collect();
            let lora_a = Tensor::from_data(TensorData::new(a, [r, inp]), (&device, dtype));
            let lora_b = Tensor::zeros([out, r], (&device, dtype));
            Ok(InitialFactors {
                lora_a,
                lora_b,
                residual: None,
            })
        }
        InitMode::Pissa | InitMode::PissaFast { .. } => {
            if r > out.min(inp) {
                return Err(AdapterError::RankTooLarge {
                    layer: path.to_string(),
                    rank: r,
                    max: out.min(inp),
                    out,
                    inp,
                });
            }
            if dtype == DType::F64 {
                pissa::<f64>(weight, config, path, seed)
            } else {
                pissa::<f32>(weight, config, path, seed)
            }
        }
    }
}

/// PiSSA in the host precision `T` (f32 like peft, or f64): `A = diag(√(S_r/s))·V_rᵀ`,
/// `B = U_r·diag(√(S_r/s))` in the training dtype (f32 over a half-precision base),
/// `W_res = W − s·B·A` computed in that dtype too and cast once to the weight's.
fn pissa<T: HostFloat>(
    weight: &Tensor<2>,
    config: &LoraConfig,
    path: &str,
    seed: u64,
) -> Result<InitialFactors, AdapterError> {
    let [out, inp] = weight.dims();
    let r = config.r;
    let s = config.scale();
    let device = weight.device();
    let dtype = balora_kernels::training_dtype(weight.dtype());
    // the weight's values in T (no conversion when the dtypes agree), viewed by faer in place:
    // the row-major [out, in] buffer is the column-major [in, out] matrix Wᵀ
    let host: Vec<T> =
        weight
            .clone()
            .try_into_vec_as::<T>()
            .map_err(|e| AdapterError::Readback {
                layer: path.to_string(),
                reason: e.to_string(),
            })?;
    let w = MatRef::from_column_major_slice(&host, inp, out).transpose();
    let svd_err = |reason| AdapterError::Svd {
        layer: path.to_string(),
        reason,
    };
    let TopSvd { u, s: sv, v } = match config.init {
        InitMode::PissaFast { niter } => randomized_svd(w, r, niter, seed),
        _ => top_svd(w, r),
    }
    .map_err(svd_err)?;
    let root: Vec<T> = sv
        .iter()
        .map(|x| T::from_f64((x.to_f64() / s).sqrt()))
        .collect();
    // A = diag(√(S/s))·Vᵀ [r, in] and B = U·diag(√(S/s)) [out, r], row-major
    let a: Vec<T> = (0..r * inp)
        .map(|k| root[k / inp] * v[(k % inp, k / inp)])
        .collect();
    let b: Vec<T> = (0..out * r)
        .map(|k| u[(k / r, k % r)] * root[k % r])
        .collect();
    let lora_a = Tensor::<2>::from_data(TensorData::new(a, [r, inp]), (&device, dtype));
    let lora_b = Tensor::<2>::from_data(TensorData::new(b, [out, r]), (&device, dtype));
    // W_res = W − s·B·A, on the device: one GEMM, no host round trip of a weight-sized matrix
    let residual = (weight.clone().cast(dtype)
        - balora_kernels::matmul(lora_b.clone(), lora_a.clone()).mul_scalar(s))
    .cast(weight.dtype());
    Ok(InitialFactors {
        lora_a,
        lora_b,
        residual: Some(residual),
    })
}
