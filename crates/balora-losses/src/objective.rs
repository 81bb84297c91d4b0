//! The SVD objective shared by the NLU and NLG terms.

use burn::tensor::Tensor;

use crate::SvdObjective;

/// Denominators at or below this skip the ratio objectives (iclr2026's guard).
pub(crate) const MIN_DENOMINATOR: f64 = 1e-8;

/// `−Σ_{i≤k} σ_i` or its ratio to `Σσ + eps` / `‖Z‖_F`, per row of `sigma` (`[R, r]`, decreasing
/// along dim 1). `frobenius` is `‖Z‖_F` per row (`[R]`), needed only for the Frobenius ratio.
pub(crate) fn svd_objective(
    sigma: Tensor<2>,
    k: usize,
    objective: SvdObjective,
    eps: f64,
    frobenius: Option<Tensor<1>>,
) -> Tensor<1> {
    let r = sigma.dims()[1];
    let top: Tensor<1> = sigma
        .clone()
        .narrow(1, 0, k.min(r))
        .sum_dim(1)
        .squeeze_dim(1);
    match objective {
        SvdObjective::TopKSum => top.neg(),
        SvdObjective::RatioToSum => {
            let sum: Tensor<1> = sigma.sum_dim(1).squeeze_dim(1);
            top.div(sum.add_scalar(eps)).neg()
        }
        SvdObjective::RatioToFrobenius => {
            let frob =
                frobenius.unwrap_or_else(|| sigma.powi_scalar(2).sum_dim(1).squeeze_dim(1).sqrt());
            top.div(frob).neg()
        }
    }
}
