//! Initial factors of an adapter: peft's Gaussian/Kaiming init and PiSSA (spec §2.1).

use burn::tensor::{DType, Tensor, TensorData};
use faer::Mat;
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
    let dtype = weight.dtype();
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
/// `B = U_r·diag(√(S_r/s))`, `W_res = W − s·B·A`, all cast back to the weight's dtype.
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
    let dtype = weight.dtype();
    let host: Vec<f64> =
        weight
            .clone()
            .try_into_vec_as::<f64>()
            .map_err(|e| AdapterError::Readback {
                layer: path.to_string(),
                reason: e.to_string(),
            })?;
    let w = Mat::<T>::from_fn(out, inp, |i, j| T::from_f64(host[i * inp + j]));
    let svd_err = |reason| AdapterError::Svd {
        layer: path.to_string(),
        reason,
    };
    let TopSvd { u, s: sv, v } = match config.init {
        InitMode::PissaFast { niter } => randomized_svd(w.as_ref(), r, niter, seed),
        _ => top_svd(w.as_ref(), r),
    }
    .map_err(svd_err)?;
    let root: Vec<T> = sv
        .iter()
        .map(|x| T::from_f64((x.to_f64() / s).sqrt()))
        .collect();
    let a = Mat::<T>::from_fn(r, inp, |i, j| root[i] * v[(j, i)]);
    let b = Mat::<T>::from_fn(out, r, |i, j| u[(i, j)] * root[j]);
    let ba = &b * &a;
    let scale = T::from_f64(s);
    let residual = Mat::<T>::from_fn(out, inp, |i, j| w[(i, j)] - scale * ba[(i, j)]);
    let upload = |m: &Mat<T>| {
        let (rows, cols) = (m.nrows(), m.ncols());
        let data: Vec<f64> = (0..rows * cols)
            .map(|k| m[(k / cols, k % cols)].to_f64())
            .collect();
        Tensor::<2>::from_data(TensorData::new(data, [rows, cols]), (&device, dtype))
    };
    Ok(InitialFactors {
        lora_a: upload(&a),
        lora_b: upload(&b),
        residual: Some(upload(&residual)),
    })
}
