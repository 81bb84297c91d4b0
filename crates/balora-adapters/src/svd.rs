//! Host-side singular value decompositions (faer), exact and randomized.
//!
//! PiSSA needs the top-r singular triplets of every targeted weight once, at initialisation.
//! Burn's own `linalg::svd` is a scalar reference implementation; [`top_svd`] gets the exact
//! top-r triplets from one threaded GEMM and a small-side eigen-decomposition, without a
//! full SVD. The randomized variant follows
//! Halko, Martinsson & Tropp (2011), Alg. 4.4 (subspace iteration) + 5.1, exactly as
//! `torch.svd_lowrank` (which peft's `pissa_niter_K` calls) does, with `q = r` and no
//! oversampling.

use faer::{Mat, MatRef};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

/// Floats the host decompositions run in: f32 for f32/f16/bf16 weights (peft does the same),
/// f64 when the weights are f64 (the gradient-check tests).
pub trait HostFloat:
    faer::traits::RealField + Copy + Send + Sync + burn::tensor::Element + 'static
{
    /// Lossless (f64) or rounding (f32) conversion from f64.
    fn from_f64(x: f64) -> Self;
    /// Widening conversion to f64.
    fn to_f64(self) -> f64;
}

impl HostFloat for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl HostFloat for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// The leading `k` singular triplets `W ≈ U·diag(S)·Vᵀ` of an `m×n` matrix.
#[derive(Debug, Clone)]
pub struct TopSvd<T> {
    /// Left singular vectors, `m×k`, orthonormal columns.
    pub u: Mat<T>,
    /// Singular values, non-increasing.
    pub s: Vec<T>,
    /// Right singular vectors, `n×k`, orthonormal columns.
    pub v: Mat<T>,
}

/// The top-`k` triplets of `w` from the eigen-decomposition of its small-side Gram matrix
/// `G = WᵀW` (or `WWᵀ`): `σ_i = √λ_i`, `V` the eigenvectors and `U = W·V·Σ⁻¹`.
///
/// Why not a thin SVD: PiSSA keeps `r` triplets of weights up to 4096 × 11008, and a thin SVD
/// (`O(m·n²)` bidiagonalisation with a large constant) computes all of them. The Gram matrix is
/// one threaded GEMM and its eigen-decomposition an `n³` problem on the small side: 1.5–2.5×
/// faster than faer's thin SVD on GPT-2's and SmolLM2's layers (`docs/performance.md`). The
/// values and vectors are those of the SVD in the working precision, with `G`'s rounding
/// (`ε·σ₁²`) in place of the SVD's (`ε·σ₁`): a triplet whose `σ_i` is far below `σ₁`, or
/// whose gap to its neighbour is tiny, is resolved less sharply — never the top-r subspace
/// PiSSA moves into the adapter when it is separated, and `W_res + s·B·A = W` holds exactly
/// whatever the triplets are.
pub fn top_svd<T: HostFloat>(w: MatRef<'_, T>, k: usize) -> Result<TopSvd<T>, String> {
    let (m, n) = (w.nrows(), w.ncols());
    let k = k.min(m.min(n));
    // the small side: G = WᵀW (n×n) when m ≥ n, else WWᵀ with U and V swapped
    let tall = m >= n;
    let x = if tall { w } else { w.transpose() };
    let p = x.ncols();
    let mut g = Mat::<T>::zeros(p, p);
    faer::linalg::matmul::matmul(
        g.as_mut(),
        faer::Accum::Replace,
        x.transpose(),
        x,
        T::from_f64(1.0),
        faer::Par::rayon(0),
    );
    let eig = g
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| format!("{e:?}"))?;
    let (values, vectors) = (eig.S().column_vector(), eig.U());
    // faer sorts eigenvalues in non-decreasing order
    let sigma: Vec<T> = (0..k)
        .map(|j| T::from_f64(values[p - 1 - j].to_f64().max(0.0).sqrt()))
        .collect();
    if sigma.iter().any(|x| !x.to_f64().is_finite()) {
        return Err("non-finite singular values (does the weight contain NaN/inf?)".into());
    }
    let right = Mat::<T>::from_fn(p, k, |i, j| vectors[(i, p - 1 - j)]);
    // the other side's vectors: X·v/σ; a zero σ keeps a zero vector
    let image = x * &right;
    let left = Mat::<T>::from_fn(image.nrows(), k, |i, j| {
        if sigma[j].to_f64() > 0.0 {
            image[(i, j)] / sigma[j]
        } else {
            T::from_f64(0.0)
        }
    });
    let (u, v) = if tall { (left, right) } else { (right, left) };
    Ok(TopSvd { u, s: sigma, v })
}

/// Orthonormal basis of the column space of `y` (thin Q of its QR factorisation).
fn orthonormal_basis<T: HostFloat>(y: MatRef<'_, T>) -> Mat<T> {
    y.qr().compute_thin_Q()
}

/// Randomized top-`k` SVD with `niter` subspace iterations (Halko et al.; `torch.svd_lowrank`
/// with `q = k`). The Gaussian test matrix comes from a seeded host RNG, so the result is
/// reproducible on every backend.
pub fn randomized_svd<T: HostFloat>(
    w: MatRef<'_, T>,
    k: usize,
    niter: usize,
    seed: u64,
) -> Result<TopSvd<T>, String> {
    let (m, n) = (w.nrows(), w.ncols());
    let k = k.min(m.min(n));
    let mut rng = StdRng::seed_from_u64(seed);
    let omega = Mat::<T>::from_fn(n, k, |_, _| {
        let z: f64 = StandardNormal.sample(&mut rng);
        T::from_f64(z)
    });
    let mut q = orthonormal_basis((w * &omega).as_ref());
    for _ in 0..niter {
        let z = orthonormal_basis((w.transpose() * &q).as_ref());
        q = orthonormal_basis((w * &z).as_ref());
    }
    // B = Qᵀ W is k×n: its SVD is cheap and gives W ≈ (Q Ũ) S Vᵀ.
    let b = q.transpose() * w;
    let small = top_svd(b.as_ref(), k)?;
    Ok(TopSvd {
        u: &q * &small.u,
        s: small.s,
        v: small.v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `U diag(s) Vᵀ` with orthonormal U, V built from QR of a seeded random matrix.
    fn with_spectrum(m: usize, n: usize, s: &[f64], seed: u64) -> Mat<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut gauss =
            |rows, cols| Mat::<f64>::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng));
        let u = orthonormal_basis(gauss(m, s.len()).as_ref());
        let v = orthonormal_basis(gauss(n, s.len()).as_ref());
        let us = Mat::<f64>::from_fn(m, s.len(), |i, j| u[(i, j)] * s[j]);
        &us * v.transpose()
    }

    #[test]
    fn thin_svd_reconstructs_the_matrix() {
        let w = with_spectrum(7, 5, &[5.0, 3.0, 2.0, 1.0, 0.5], 1);
        let t = top_svd(w.as_ref(), 5).unwrap();
        let us = Mat::<f64>::from_fn(7, 5, |i, j| t.u[(i, j)] * t.s[j]);
        let back = &us * t.v.transpose();
        assert!((&back - &w).norm_max() < 1e-12);
        assert!((t.s[0] - 5.0).abs() < 1e-12 && (t.s[4] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn top_svd_from_the_gram_matrix_equals_the_full_svd() {
        let spectrum: Vec<f64> = (0..30).map(|i| 0.93f64.powi(i)).collect();
        for (m, n) in [(60, 30), (30, 60)] {
            let w = with_spectrum(m, n, &spectrum, 3);
            let full = w.thin_svd().unwrap();
            let top = top_svd(w.as_ref(), 4).unwrap();
            for (j, &expected) in spectrum.iter().enumerate().take(4) {
                assert!((top.s[j] - expected).abs() < 1e-12, "σ{j}");
                // the same vectors up to sign
                let dot_u: f64 = (0..m).map(|i| top.u[(i, j)] * full.U()[(i, j)]).sum();
                let dot_v: f64 = (0..n).map(|i| top.v[(i, j)] * full.V()[(i, j)]).sum();
                assert!((dot_u.abs() - 1.0).abs() < 1e-9 && (dot_v.abs() - 1.0).abs() < 1e-9);
                assert!((dot_u - dot_v).abs() < 1e-9, "u and v signs agree");
            }
        }
    }

    #[test]
    fn randomized_svd_finds_the_top_subspace_under_a_spectral_gap() {
        let spectrum = [10.0, 8.0, 6.0, 0.01, 0.005, 0.001];
        let w = with_spectrum(40, 30, &spectrum, 2);
        let exact = top_svd(w.as_ref(), 3).unwrap();
        let fast = randomized_svd(w.as_ref(), 3, 2, 7).unwrap();
        for i in 0..3 {
            assert!((exact.s[i] - fast.s[i]).abs() < 1e-6, "σ{i}");
        }
        // Same subspace: the projector onto span(U_fast) leaves U_exact unchanged.
        let proj = &fast.u * fast.u.transpose();
        let residual = &exact.u - &proj * &exact.u;
        assert!(residual.norm_max() < 1e-6);
    }
}
