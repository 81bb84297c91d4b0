//! Differentiable singular values without a custom backward (docs/methods.md,
//! "Differentiable singular values").
//!
//! For a logit matrix `Z` (`n×m`, `n ≤ m`; the tall case works on `Zᵀ`), the left singular
//! vectors `U` come from a *detached* decomposition computed on the host; the values are then
//! recomputed with ordinary tensor ops as `σ_i = ‖Zᵀ u_i‖` (randomized path, a few leading
//! values) or `σ_i = √(u_iᵀ Z Zᵀ u_i)` (exact path, every value). With `u_i` held constant,
//! autodiff gives `∂σ_i/∂Z = u_i u_iᵀ Z / σ_i = u_i v_iᵀ`, the exact singular-value gradient
//! for distinct σ, on every backend. The recomputation is a Rayleigh quotient, so the values
//! are accurate to second order in the error of `u_i`.
//!
//! Only small matrices cross to the host: the `n×n` Gram matrix `Z Zᵀ` (exact path), or the
//! `m×q` / `n×q` sketches and a `q×q` Gram (randomized path, Halko et al. 2011 as in
//! `torch.svd_lowrank`), never the `n×V` logits themselves.

use balora_kernels::matmul;
use burn::tensor::{Tensor, TensorData};
use faer::{Mat, Side};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::LossError;

/// Singular values below this are clamped inside the square root so a rank-deficient matrix
/// gets a zero (not NaN) gradient for its null directions.
const SQRT_FLOOR: f64 = 1e-30;

fn host(t: Tensor<2>) -> Result<Mat<f64>, LossError> {
    let [r, c] = t.dims();
    let v = t
        .try_into_vec_as::<f64>()
        .map_err(|e| LossError::Svd(format!("readback: {e}")))?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(LossError::Svd("non-finite logits".into()));
    }
    Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
}

fn device_matrix(m: &Mat<f64>, like: &Tensor<2>) -> Tensor<2> {
    let (r, c) = (m.nrows(), m.ncols());
    let data: Vec<f64> = (0..r * c).map(|k| m[(k / c, k % c)]).collect();
    Tensor::from_data(
        TensorData::new(data, [r, c]),
        (&like.device(), like.dtype()),
    )
}

/// Eigenvectors of a symmetric matrix as columns, sorted by decreasing eigenvalue.
fn eigenvectors_descending(g: &Mat<f64>) -> Result<Mat<f64>, LossError> {
    let eig = g
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| LossError::Svd(format!("eigendecomposition failed: {e:?}")))?;
    let n = g.nrows();
    let u = eig.U();
    // faer sorts eigenvalues in non-decreasing order.
    Ok(Mat::from_fn(n, n, |i, j| u[(i, n - 1 - j)]))
}

/// `σ_i = ‖Zᵀ u_i‖` for the rows `u_iᵀ` of `ut` (`k×n`): differentiable in `z`.
fn values_from_left_vectors(z: Tensor<2>, ut: Tensor<2>) -> Tensor<1> {
    matmul(ut, z)
        .powi_scalar(2)
        .sum_dim(1)
        .clamp_min(SQRT_FLOOR)
        .sqrt()
        .squeeze_dim(1)
}

/// Orient `z` so it is wide (`n ≤ m`); singular values are those of the transpose otherwise.
fn wide(z: Tensor<2>) -> Tensor<2> {
    let [n, m] = z.dims();
    if n > m { z.transpose() } else { z }
}

/// All `min(n, m)` singular values of `z`, in decreasing order, differentiable (see
/// [`batched_singular_values`]).
pub fn singular_values(z: Tensor<2>) -> Result<Tensor<1>, LossError> {
    let (sigma, _) = batched_singular_values(z.unsqueeze_dim(0))?;
    Ok(sigma.squeeze_dim(0))
}

/// The singular values of each matrix of a batch `[B, n, m]` (`[B, min(n, m)]`, decreasing per
/// row) and its Frobenius norm (`[B]`), differentiable.
///
/// Every value is needed here, so they come from the Gram matrices themselves:
/// `σ_i = √(u_iᵀ G u_i)` with `G = Z Zᵀ` differentiable ([`balora_kernels::gram`]) and `u_i`
/// its detached eigenvectors, and `‖Z‖_F = √tr G`. The gradient is the same `u_i u_iᵀ Z / σ_i`,
/// but autodiff keeps nothing of size `n×m` besides `Z` (alive anyway), and the backward is one
/// `n×n·n×m` product per matrix: for `[T, V]` = 128 × 50k logits that halves the work of
/// recomputing `‖Zᵀu_i‖` and saves a 25 MB buffer per sample. (The Rayleigh quotient on `G`
/// carries `G`'s rounding, so a value far below `σ_1` is accurate to `ε·σ_1²/σ_i`: far below
/// what the ratio objectives resolve, and exact to 1e-12 in f64.)
pub fn batched_singular_values(z: Tensor<3>) -> Result<(Tensor<2>, Tensor<1>), LossError> {
    let [_, n, m] = z.dims();
    let z = if n > m { z.swap_dims(1, 2) } else { z };
    singular_values_of_gram(balora_kernels::gram(z))
}

/// [`batched_singular_values`] from the (differentiable) Gram matrices `G_b = Z_b·Z_bᵀ`
/// `[B, p, p]` of the wide orientation, however they were computed — BA-LoRA's NLG term gets
/// them from the fused pass over the vocabulary ([`balora_kernels::vocab_terms`]).
pub(crate) fn singular_values_of_gram(
    gram: Tensor<3>,
) -> Result<(Tensor<2>, Tensor<1>), LossError> {
    let [b, p, _] = gram.dims();
    let host_gram = gram
        .clone()
        .detach()
        .try_into_vec_as::<f64>()
        .map_err(|e| LossError::Svd(format!("readback: {e}")))?;
    if host_gram.iter().any(|x| !x.is_finite()) {
        return Err(LossError::Svd("non-finite logits".into()));
    }
    let mut ut = Vec::with_capacity(b * p * p);
    for g in host_gram.chunks(p * p) {
        let u = eigenvectors_descending(&Mat::from_fn(p, p, |i, j| g[i * p + j]))?;
        ut.extend((0..p * p).map(|k| u[(k % p, k / p)]));
    }
    let ut = Tensor::<3>::from_data(
        TensorData::new(ut, [b, p, p]),
        (&gram.device(), gram.dtype()),
    );
    let sigma = (ut.clone().matmul(gram.clone()) * ut)
        .sum_dim(2)
        .squeeze_dim::<2>(2)
        .clamp_min(SQRT_FLOOR)
        .sqrt();
    let eye: Vec<f64> = (0..p * p).map(|k| f64::from(k % (p + 1) == 0)).collect();
    let eye = Tensor::<3>::from_data(
        TensorData::new(eye, [1, p, p]),
        (&gram.device(), gram.dtype()),
    );
    let frob = (gram * eye)
        .sum_dims_squeeze::<1, _>(&[1, 2])
        .clamp_min(SQRT_FLOOR)
        .sqrt();
    Ok((sigma, frob))
}

/// Thin-Q of a host QR factorisation of a device matrix, uploaded back.
fn orthonormalize(y: Tensor<2>) -> Result<Tensor<2>, LossError> {
    let q = host(y.clone())?.qr().compute_thin_Q();
    Ok(device_matrix(&q, &y))
}

/// The `k` leading singular values of `z` from a randomized range finder with `q ≥ k` columns
/// and `niter` power iterations (Halko et al., Alg. 4.4 + 5.1; `torch.svd_lowrank`), seeded so
/// the result is reproducible. Exact when `rank(Z) ≤ q`.
pub fn randomized_top_singular_values(
    z: Tensor<2>,
    k: usize,
    q: usize,
    niter: usize,
    seed: u64,
) -> Result<Tensor<1>, LossError> {
    let z = wide(z);
    let [n, m] = z.dims();
    let q = q.min(n).max(k.min(n));
    let zd = z.clone().detach();
    let mut rng = StdRng::seed_from_u64(seed);
    let omega: Vec<f64> = (0..m * q)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let omega = Tensor::<2>::from_data(TensorData::new(omega, [m, q]), (&zd.device(), zd.dtype()));
    let mut basis = orthonormalize(matmul(zd.clone(), omega))?; // n×q
    for _ in 0..niter {
        let right = orthonormalize(matmul(zd.clone().transpose(), basis))?; // m×q
        basis = orthonormalize(matmul(zd.clone(), right))?;
    }
    // B = Qᵀ Z (q×m); its left singular vectors Ũ come from the q×q Gram B Bᵀ; U = Q Ũ.
    let b = matmul(basis.clone().transpose(), zd.clone());
    let gram = host(b.clone().matmul(b.transpose()))?;
    let u_small = eigenvectors_descending(&gram)?;
    let u_small = device_matrix(&u_small, &zd);
    let ut = matmul(basis, u_small).transpose().narrow(0, 0, k.min(q));
    Ok(values_from_left_vectors(z, ut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use balora_testkit::{assert_grad, f64_device, pseudo_random, tensor64, values};

    #[test]
    fn singular_values_of_the_worked_example() {
        // docs/methods.md, "Worked examples": σ(Z^F) = [3.987630261861874, 1.829974014756330]
        let d = f64_device();
        let z = tensor64(&[1.0, 2.0, 3.0, 0.5, -1.0, 2.0], [2, 3], &d);
        let s = values(singular_values(z.clone()).unwrap());
        assert!((s[0] - 3.987630261861874).abs() < 1e-12);
        assert!((s[1] - 1.829_974_014_756_33).abs() < 1e-12);
        // tall orientation gives the same values
        let st = values(singular_values(z.transpose()).unwrap());
        assert!((st[0] - s[0]).abs() < 1e-12 && (st[1] - s[1]).abs() < 1e-12);
    }

    #[test]
    fn singular_value_gradients_match_finite_differences() {
        let d = f64_device();
        let z = tensor64(&pseudo_random(4 * 7, 3), [4, 7], &d);
        let w = tensor64(&[1.0, -0.5, 0.25, 2.0], [4], &d);
        assert_grad(
            "Σ w_i σ_i",
            |z| (singular_values(z).unwrap() * w.clone()).sum(),
            z,
            1e-6,
        );
    }

    #[test]
    fn randomized_path_is_exact_for_low_rank_and_differentiable() {
        let d = f64_device();
        // rank-3 matrix 6×40: q = 5 ≥ rank ⇒ the sketch captures the range exactly.
        let a = tensor64(&pseudo_random(6 * 3, 4), [6, 3], &d);
        let b = tensor64(&pseudo_random(3 * 40, 5), [3, 40], &d);
        let z = a.matmul(b);
        let exact = values(singular_values(z.clone()).unwrap());
        let fast = values(randomized_top_singular_values(z.clone(), 2, 5, 2, 0).unwrap());
        assert!((exact[0] - fast[0]).abs() < 1e-10 && (exact[1] - fast[1]).abs() < 1e-10);
        assert_grad(
            "randomized σ1 + σ2",
            |z| randomized_top_singular_values(z, 2, 5, 2, 0).unwrap().sum(),
            z,
            1e-6,
        );
    }

    #[test]
    fn rank_deficient_matrices_have_finite_gradients() {
        let d = f64_device();
        let z = tensor64(&[1.0, 2.0, 3.0, 2.0, 4.0, 6.0], [2, 3], &d).require_grad();
        let s = singular_values(z.clone()).unwrap();
        let g = z.grad(&s.sum().backward()).unwrap();
        assert!(values(g).iter().all(|v| v.is_finite()));
    }
}
