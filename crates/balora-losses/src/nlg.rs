//! BA-LoRA's NLG regularisers on language-model logits `[B, T, V]` (spec §1.3.2, §1.4).

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use crate::objective::{MIN_DENOMINATOR, svd_objective};
use crate::svd::{batched_singular_values, randomized_top_singular_values, singular_values};
use crate::{KlReduction, LossError, RegularizerConfig, SvdMode, SvdObjective, TokenMask};

/// Seed of the randomized SVD's test matrix: fixed, so a step is reproducible and a resumed
/// run recomputes exactly the same loss.
const RANDOMIZED_SEED: u64 = 0x5EED;

/// Per-token `KL(q ‖ p̃)` at temperature τ, `[B, T]`, with `q = softmax(Z^P/τ)` (detached) and
/// `p̃ = softmax(Z^F/τ)`, both logs from `log_softmax`.
fn token_kl(student: Tensor<3>, teacher: Tensor<3>, tau: f64) -> Tensor<2> {
    let log_q = log_softmax(teacher.detach().div_scalar(tau), 2);
    let log_p = log_softmax(student.div_scalar(tau), 2);
    let q = log_q.clone().exp();
    (q * (log_q - log_p)).sum_dim(2).squeeze_dim(2)
}

/// Consistency: `KL(P ‖ F)` summed over tokens and vocabulary and divided by B
/// ([`KlReduction::BatchSum`]), or `τ²·Σ M·KL / max(N, 1)` ([`KlReduction::TokenMean`]).
/// `None` when a token mean has no selected token.
pub fn consistency(
    student: Tensor<3>,
    teacher: Tensor<3>,
    mask: &TokenMask,
    reduction: KlReduction,
    tau: f64,
) -> Result<Option<Tensor<1>>, LossError> {
    if teacher.dims() != student.dims() {
        return Err(LossError::Shape {
            what: "teacher logits",
            expected: format!("{:?} (the student's shape)", student.dims()),
            found: teacher.dims().to_vec(),
        });
    }
    let b = student.dims()[0];
    let kl = token_kl(student, teacher, tau);
    Ok(match reduction {
        KlReduction::BatchSum => Some(kl.sum().div_scalar(b as f64)),
        KlReduction::TokenMean if mask.count() == 0 => None,
        KlReduction::TokenMean => Some(
            (kl * mask.weights.clone())
                .sum()
                .mul_scalar(tau * tau / mask.count() as f64),
        ),
    })
}

/// Entropy of each row distribution given by `logits` along dim 2: with `eps > 0`,
/// `−Σ p·log(p + eps)` (the reference's form); with `eps = 0`, `−Σ p·log_softmax`.
fn entropy(logits: Tensor<3>, eps: f64) -> Tensor<2> {
    let log_p = log_softmax(logits, 2);
    let p = log_p.clone().exp();
    let log_term = if eps > 0.0 {
        p.clone().add_scalar(eps).log()
    } else {
        log_p
    };
    (p * log_term).sum_dim(2).squeeze_dim(2).neg()
}

/// Diversity: minus the mean token entropy of the student over the selected positions, over
/// the full vocabulary or (with `top_k > 0`) over each row's k largest logits renormalised.
/// `None` when no position is selected.
pub fn diversity(
    student: Tensor<3>,
    mask: &TokenMask,
    top_k: usize,
    eps: f64,
) -> Result<Option<Tensor<1>>, LossError> {
    if mask.count() == 0 {
        return Ok(None);
    }
    let v = student.dims()[2];
    let logits = if top_k > 0 && top_k < v {
        student.topk(top_k, 2)
    } else {
        student
    };
    let h = entropy(logits, eps);
    Ok(Some(
        (h * mask.weights.clone())
            .sum()
            .div_scalar(mask.count() as f64)
            .neg(),
    ))
}

/// Mean token entropy of the teacher at temperature τ over the selected positions, with
/// probabilities clamped at 1e-8 inside the log (adaptive λ1). `None` without positions.
pub fn teacher_entropy(
    teacher: Tensor<3>,
    mask: &TokenMask,
    tau: f64,
) -> Result<Option<f64>, LossError> {
    if mask.count() == 0 {
        return Ok(None);
    }
    let q = burn::tensor::activation::softmax(teacher.detach().div_scalar(tau), 2);
    let h: Tensor<2> = (q.clone() * q.clamp_min(1e-8).log())
        .sum_dim(2)
        .squeeze_dim(2)
        .neg();
    let mean = (h * mask.weights.clone())
        .sum()
        .div_scalar(mask.count() as f64);
    Ok(Some(mean.into_scalar::<f64>()))
}

/// SVD term (see [`SvdMode`]). `None` when the configuration's guards skip it: fewer than two
/// selected rows or a single-entry vocabulary (token matrix), or a vanishing denominator.
pub fn svd(
    student: Tensor<3>,
    mask: &TokenMask,
    config: &RegularizerConfig,
) -> Result<Option<Tensor<1>>, LossError> {
    let [_, _, v] = student.dims();
    let (k, objective, eps) = (config.svd_k, config.svd_objective, config.svd_eps);
    match config.svd_mode {
        SvdMode::PerSample => {
            let frob = student
                .clone()
                .powi_scalar(2)
                .sum_dims_squeeze::<1, _>(&[1, 2])
                .sqrt();
            let sigma = batched_singular_values(student)?;
            Ok(Some(
                svd_objective(sigma, k, objective, eps, Some(frob)).mean(),
            ))
        }
        SvdMode::TokenMatrix => {
            let n = mask.count();
            if n < 2 || v < 2 {
                return Ok(None);
            }
            let z = mask.select_rows(student);
            let k = k.min(n).min(v);
            let frob = z.clone().powi_scalar(2).sum().sqrt();
            let randomized = config
                .randomized_svd_threshold
                .is_some_and(|threshold| v > threshold && k < n.min(v));
            let (sigma, objective) = if randomized {
                let q = (k + 5).min(n.min(v));
                let s = randomized_top_singular_values(z, k, q, 2, RANDOMIZED_SEED)?;
                // The randomized path never sees the tail σ: it always uses ‖Z‖_F.
                (s, SvdObjective::RatioToFrobenius)
            } else {
                (singular_values(z)?, objective)
            };
            let sigma = sigma.unsqueeze_dim::<2>(0);
            let denominator = match objective {
                SvdObjective::TopKSum => None,
                SvdObjective::RatioToSum => Some(sigma.clone().sum().add_scalar(eps)),
                SvdObjective::RatioToFrobenius => Some(frob.clone()),
            };
            if let Some(d) = denominator {
                let d: f64 = d.into_scalar::<f64>();
                if d <= MIN_DENOMINATOR {
                    return Ok(None);
                }
            }
            Ok(Some(svd_objective(sigma, k, objective, eps, Some(frob))))
        }
    }
}
