//! BA-LoRA's NLU regularisers on classification logits `[B, C]` (docs/methods.md,
//! "BA-LoRA regularisers").

use burn::tensor::Tensor;

use crate::objective::svd_objective;
use crate::svd::singular_values;
use crate::{LossError, SvdObjective};

fn check(what: &'static str, z: &Tensor<2>) -> Result<[usize; 2], LossError> {
    let [b, c] = z.dims();
    if b == 0 || c == 0 {
        return Err(LossError::Shape {
            what,
            expected: "[B ≥ 1, C ≥ 1]".into(),
            found: vec![b, c],
        });
    }
    Ok([b, c])
}

/// Consistency: mean squared difference of the L2-normalised logit rows,
/// `1/(BC)·Σ(ẑ^F − ẑ^P)²` with `ẑ = z / max(‖z‖, 1e-12)`. The teacher is detached.
pub fn consistency(student: Tensor<2>, teacher: Tensor<2>) -> Result<Tensor<1>, LossError> {
    let dims = check("student logits", &student)?;
    if teacher.dims() != dims {
        return Err(LossError::Shape {
            what: "teacher logits",
            expected: format!("{dims:?} (the student's shape)"),
            found: teacher.dims().to_vec(),
        });
    }
    let normalise = |z: Tensor<2>| {
        let norm = z.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
        z / norm
    };
    let diff = normalise(student) - normalise(teacher.detach());
    Ok(diff.powi_scalar(2).mean())
}

/// Diversity: the squared off-diagonal entries of the batch covariance of the logits,
/// `1/C·Σ_{i≠j} Σ_ij²` with `Σ = X_cᵀX_c/(B−1)`. `None` when `B < 2` (the covariance does not
/// exist; the reference code divides by zero).
pub fn diversity(student: Tensor<2>) -> Result<Option<Tensor<1>>, LossError> {
    let [b, c] = check("student logits", &student)?;
    if b < 2 {
        return Ok(None);
    }
    let centred = student.clone() - student.mean_dim(0);
    let denom = (b - 1) as f64;
    let cov = centred
        .clone()
        .transpose()
        .matmul(centred.clone())
        .div_scalar(denom);
    // Σ_ii = Σ_b x_bi² / (B−1): subtracting the diagonal avoids building an identity mask.
    let diag = centred.powi_scalar(2).sum_dim(0).div_scalar(denom);
    let off = cov.powi_scalar(2).sum() - diag.powi_scalar(2).sum();
    Ok(Some(off.div_scalar(c as f64)))
}

/// SVD term on the `[B, C]` logit matrix with the given objective (the paper's
/// `−Σ_{i≤k} σ_i` under the `paper` preset).
pub fn svd(
    student: Tensor<2>,
    k: usize,
    objective: SvdObjective,
    eps: f64,
) -> Result<Tensor<1>, LossError> {
    check("student logits", &student)?;
    let frob = student.clone().powi_scalar(2).sum().sqrt();
    let sigma = singular_values(student)?.unsqueeze_dim::<2>(0);
    Ok(svd_objective(sigma, k, objective, eps, Some(frob)))
}
