//! BA-LoRA's NLG regularisers on language-model logits `[B, T, V]` (docs/methods.md,
//! "BA-LoRA regularisers").

use balora_kernels::{VocabTermsConfig, vocab_terms};
use burn::tensor::Tensor;

use crate::objective::{MIN_DENOMINATOR, svd_objective};
use crate::svd::{
    batched_singular_values, randomized_top_singular_values, singular_values,
    singular_values_of_gram,
};
use crate::{KlReduction, LossError, RegularizerConfig, SvdMode, SvdObjective, TokenMask};

/// Seed of the randomized SVD's test matrix: fixed, so a step is reproducible and a resumed
/// run recomputes exactly the same loss.
const RANDOMIZED_SEED: u64 = 0x5EED;

/// `[B, T, V]` → `[B·T, V]`: the fused vocabulary kernel works on rows.
pub(crate) fn rows(logits: Tensor<3>) -> Tensor<2> {
    let [b, t, v] = logits.dims();
    logits.reshape([b * t, v])
}

/// Column `c` of the `[N, 4]` output of [`vocab_terms`] as `[N]`.
pub(crate) fn column(terms: &Tensor<2>, c: usize) -> Tensor<1> {
    let n = terms.dims()[0];
    terms.clone().narrow(1, c, 1).reshape([n])
}

/// Reduce per-token `KL(q ‖ p̃)` values `[B·T]` (see [`consistency`]).
pub(crate) fn reduce_consistency(
    kl: Tensor<1>,
    mask: &TokenMask,
    reduction: KlReduction,
    tau: f64,
) -> Option<Tensor<1>> {
    let [b, t] = mask.dims;
    match reduction {
        KlReduction::BatchSum => Some(kl.sum().div_scalar(b as f64)),
        KlReduction::TokenMean if mask.count() == 0 => None,
        KlReduction::TokenMean => Some(
            (kl * mask.weights.clone().reshape([b * t]))
                .sum()
                .mul_scalar(tau * tau / mask.count() as f64),
        ),
    }
}

/// Reduce per-token entropies `[B·T]` to minus their mean over the selected positions (see
/// [`diversity`]); `None` without positions.
pub(crate) fn reduce_diversity(h: Tensor<1>, mask: &TokenMask) -> Option<Tensor<1>> {
    let [b, t] = mask.dims;
    (mask.count() > 0).then(|| {
        (h * mask.weights.clone().reshape([b * t]))
            .sum()
            .div_scalar(mask.count() as f64)
            .neg()
    })
}

/// Consistency: `KL(P ‖ F)` summed over tokens and vocabulary and divided by B
/// ([`KlReduction::BatchSum`]), or `τ²·Σ M·KL / max(N, 1)` ([`KlReduction::TokenMean`]), with
/// `q = softmax(Z^P/τ)` (detached) and `p̃ = softmax(Z^F/τ)`. `None` when a token mean has no
/// selected token.
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
    let config = VocabTermsConfig {
        temperature: tau,
        ..VocabTermsConfig::default()
    };
    let terms = vocab_terms(rows(student), Some(rows(teacher)), &config);
    Ok(reduce_consistency(column(&terms, 1), mask, reduction, tau))
}

/// The entropy part of a [`VocabTermsConfig`]: `−Σ p·log(p + ε)` over the full vocabulary or
/// (with `top_k > 0`) over each row's k largest logits renormalised.
pub(crate) fn entropy_config(top_k: usize, eps: f64) -> VocabTermsConfig {
    VocabTermsConfig {
        entropy: true,
        entropy_eps: eps,
        entropy_top_k: top_k,
        ..VocabTermsConfig::default()
    }
}

/// Diversity: minus the mean token entropy of the student over the selected positions, over
/// the full vocabulary or (with `top_k > 0`) over each row's k largest logits renormalised.
/// With `eps > 0` the entropy is `−Σ p·log(p + eps)` (the reference's form), with `eps = 0`
/// `−Σ p·log p`. `None` when no position is selected.
pub fn diversity(
    student: Tensor<3>,
    mask: &TokenMask,
    top_k: usize,
    eps: f64,
) -> Result<Option<Tensor<1>>, LossError> {
    if mask.count() == 0 {
        return Ok(None);
    }
    let terms = vocab_terms(rows(student), None, &entropy_config(top_k, eps));
    Ok(reduce_diversity(column(&terms, 2), mask))
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
    svd_fused(student, mask, config, None, None)
}

/// Whether the SVD term of `config` needs `‖Z‖_F` of the selected token rows.
pub(crate) fn needs_row_norms(config: &RegularizerConfig, vocab: usize) -> bool {
    config.svd_mode == SvdMode::TokenMatrix
        && (config.svd_objective == SvdObjective::RatioToFrobenius
            || config
                .randomized_svd_threshold
                .is_some_and(|threshold| vocab > threshold))
}

/// The `gram_block` of the fused pass that serves the SVD term of `config` on `[B, T, V]`
/// logits: `T` for the per-sample term when `T ≤ V` (the Gram matrix is then on the small
/// side), otherwise 0.
pub(crate) fn gram_block(config: &RegularizerConfig, t: usize, v: usize) -> usize {
    if config.svd_mode == SvdMode::PerSample && t <= v {
        t
    } else {
        0
    }
}

/// [`svd`], with what the caller's fused pass over the vocabulary already computed: the
/// per-row `Σ z²` of the student's `[B·T]` rows (column 3 of [`vocab_terms`]) and the
/// per-sample Gram matrices (see [`gram_block`]); what is missing is computed here.
pub(crate) fn svd_fused(
    student: Tensor<3>,
    mask: &TokenMask,
    config: &RegularizerConfig,
    row_sq: Option<Tensor<1>>,
    gram: Option<Tensor<3>>,
) -> Result<Option<Tensor<1>>, LossError> {
    let [b, t, v] = student.dims();
    let (k, objective, eps) = (config.svd_k, config.svd_objective, config.svd_eps);
    match config.svd_mode {
        SvdMode::PerSample => {
            let (sigma, frob) = match gram {
                Some(gram) => singular_values_of_gram(gram)?,
                None => batched_singular_values(student)?,
            };
            Ok(Some(
                svd_objective(sigma, k, objective, eps, Some(frob)).mean(),
            ))
        }
        SvdMode::TokenMatrix => {
            let n = mask.count();
            if n < 2 || v < 2 {
                return Ok(None);
            }
            // ‖Z‖_F over the selected rows, from the fused per-row Σ z² (no [N, V] square)
            let frob = needs_row_norms(config, v).then(|| {
                let row_sq = row_sq.unwrap_or_else(|| {
                    let c = VocabTermsConfig {
                        square_sum: true,
                        ..VocabTermsConfig::default()
                    };
                    column(&vocab_terms(rows(student.clone()), None, &c), 3)
                });
                (row_sq * mask.weights.clone().reshape([b * t]))
                    .sum()
                    .clamp_min(0.0)
                    .sqrt()
            });
            let z = mask.select_rows(student);
            let k = k.min(n).min(v);
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
                SvdObjective::RatioToFrobenius => frob.clone(),
            };
            if let Some(d) = denominator {
                let d: f64 = d.into_scalar::<f64>();
                if d <= MIN_DENOMINATOR {
                    return Ok(None);
                }
            }
            Ok(Some(svd_objective(sigma, k, objective, eps, frob)))
        }
    }
}
