//! `ln Γ` and `ψ` (digamma) as differentiable tensor-op series, for the MonteCLoRA Dirichlet
//! KL: Burn 0.22 has neither. Both shift the argument by the recurrences
//! `ln Γ(x) = ln Γ(x + 8) − ln(x(x+1)…(x+7))` and `ψ(x) = ψ(x + 8) − Σ_{k<8} 1/(x + k)`, then use
//! the asymptotic (Stirling) series at `z = x + 8 ≥ 8`, where the first omitted term is below
//! 1e-11. Valid for `x > 0`; autodiff differentiates the series like any other expression.

use burn::tensor::Tensor;

const SHIFT: usize = 8;

/// `ln Γ(x)` elementwise for `x > 0`.
pub fn lgamma<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let mut log_product = x.clone().log();
    for k in 1..SHIFT {
        log_product = log_product + x.clone().add_scalar(k as f64).log();
    }
    let z = x.add_scalar(SHIFT as f64);
    let inv = z.clone().recip();
    let inv2 = inv.clone().powi_scalar(2);
    // 1/(12z) − 1/(360z³) + 1/(1260z⁵) − 1/(1680z⁷), by Horner in 1/z²
    let c = inv2
        .clone()
        .mul_scalar(-1.0 / 1680.0)
        .add_scalar(1.0 / 1260.0);
    let c = (c * inv2.clone()).add_scalar(-1.0 / 360.0);
    let c = (c * inv2).add_scalar(1.0 / 12.0);
    let series = c * inv;
    let stirling = (z.clone().sub_scalar(0.5)) * z.clone().log() - z
        + series
        + 0.5 * (2.0 * std::f64::consts::PI).ln();
    stirling - log_product
}

/// `ψ(x) = d ln Γ(x)/dx` elementwise for `x > 0`.
pub fn digamma<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let mut shift_sum = x.clone().recip();
    for k in 1..SHIFT {
        shift_sum = shift_sum + x.clone().add_scalar(k as f64).recip();
    }
    let z = x.add_scalar(SHIFT as f64);
    let inv = z.clone().recip();
    let inv2 = inv.clone().powi_scalar(2);
    // −1/(2z) − 1/(12z²) + 1/(120z⁴) − 1/(252z⁶) + 1/(240z⁸), by Horner in 1/z²
    let c = inv2
        .clone()
        .mul_scalar(1.0 / 240.0)
        .add_scalar(-1.0 / 252.0);
    let c = (c * inv2.clone()).add_scalar(1.0 / 120.0);
    let c = (c * inv2.clone()).add_scalar(-1.0 / 12.0);
    let series = c * inv2;
    z.log() - inv.mul_scalar(0.5) + series - shift_sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use balora_testkit::{assert_grad, f64_device, tensor64, values};

    #[test]
    fn lgamma_and_digamma_match_known_values() {
        let d = f64_device();
        let x = tensor64(&[0.1, 0.5, 1.0, 2.0, 3.5, 10.0, 40.0], [7], &d);
        let lg = values(lgamma(x.clone()));
        // ln Γ: ln Γ(0.5) = ln √π, Γ(1) = Γ(2) = 1, Γ(3.5) = 15√π/8, ln Γ(10) = ln 9!
        let want = [
            2.252712651734206,
            0.5 * std::f64::consts::PI.ln(),
            0.0,
            0.0,
            (15.0 * std::f64::consts::PI.sqrt() / 8.0).ln(),
            362880f64.ln(),
            106.63176026064346,
        ];
        for (g, w) in lg.iter().zip(want) {
            assert!((g - w).abs() < 1e-10, "lgamma {g} vs {w}");
        }
        let dg = values(digamma(x));
        let euler = 0.5772156649015329;
        let want = [
            -10.423754940411076,
            -euler - 2.0 * 2f64.ln(),
            -euler,
            1.0 - euler,
            1.103_156_640_645_243,
            2.251752589066721,
            3.6763273740348428,
        ];
        for (g, w) in dg.iter().zip(want) {
            assert!((g - w).abs() < 1e-10, "digamma {g} vs {w}");
        }
    }

    #[test]
    fn series_gradients_match_finite_differences() {
        let d = f64_device();
        let x = tensor64(&[0.3, 1.7, 5.0], [3], &d);
        assert_grad("lgamma", |x| lgamma(x).sum(), x.clone(), 1e-6);
        assert_grad("digamma", |x| digamma(x).sum(), x, 1e-6);
    }
}
