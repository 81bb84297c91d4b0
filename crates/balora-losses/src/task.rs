//! Task losses: the shifted causal-LM cross-entropy and classification cross-entropy.

use std::sync::Arc;

use balora_kernels::{VocabTermsConfig, vocab_terms};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::{IGNORE_INDEX, LossError};

/// Check NLG host labels `[B, T]` against logits `[B, T, V]`: the count, and every label is a
/// token id or −100.
pub(crate) fn check_labels(labels: &[i64], [b, t, v]: [usize; 3]) -> Result<(), LossError> {
    if labels.len() != b * t {
        return Err(LossError::Shape {
            what: "labels",
            expected: format!("[{b}, {t}] ({} values)", b * t),
            found: vec![labels.len()],
        });
    }
    if let Some(bad) = labels
        .iter()
        .find(|&&l| l != IGNORE_INDEX && !(0..v as i64).contains(&l))
    {
        return Err(LossError::Shape {
            what: "label id",
            expected: format!("in [0, {v}) or {IGNORE_INDEX}"),
            found: vec![*bad as usize],
        });
    }
    Ok(())
}

/// The target of each logit row `b·T + t` under the causal shift: label `t + 1` of the same
/// sequence, none (−100) for the last position; and the number of rows with a target.
pub(crate) fn shifted_targets(labels: &[i64], t: usize) -> (Arc<[i64]>, usize) {
    let mut targets = Vec::with_capacity(labels.len());
    for row in labels.chunks(t.max(1)) {
        targets.extend_from_slice(&row[1.min(row.len())..]);
        targets.push(IGNORE_INDEX);
    }
    let n = targets.iter().filter(|&&y| y != IGNORE_INDEX).count();
    (targets.into(), n)
}

/// The mean of the cross-entropy column of [`vocab_terms`] over `n` labelled rows (0 for none).
pub(crate) fn mean_cross_entropy(terms: Tensor<2>, n: usize) -> Tensor<1> {
    terms.narrow(1, 0, 1).sum().div_scalar(n.max(1) as f64)
}

/// Hugging Face's causal-LM loss: logits at position t are scored against label t+1,
/// averaged over the labels that are not −100 (prompt and padding). Returns 0 — not NaN — for
/// a batch with no labelled token, so an all-prompt batch cannot poison training.
///
/// `labels` are host values `[B, T]`, row-major (the batch is built on the host anyway). The
/// log-softmax over the vocabulary is [`vocab_terms`]' fused pass: one `[B·T, V]` gradient
/// and no `[B, T, V]` intermediates.
pub fn causal_lm_loss(logits: Tensor<3>, labels: &[i64]) -> Result<Tensor<1>, LossError> {
    let [b, t, v] = logits.dims();
    check_labels(labels, [b, t, v])?;
    if t < 2 {
        let dtype = balora_kernels::training_dtype(logits.dtype());
        return Ok(Tensor::zeros([1], (&logits.device(), dtype)));
    }
    let (targets, n) = shifted_targets(labels, t);
    let config = VocabTermsConfig {
        targets: Some(targets),
        ..VocabTermsConfig::default()
    };
    let terms = vocab_terms(logits.reshape([b * t, v]), None, &config);
    Ok(mean_cross_entropy(terms, n))
}

/// Mean cross-entropy of classification logits `[B, C]` against class ids.
pub fn classification_loss(logits: Tensor<2>, labels: &[i64]) -> Result<Tensor<1>, LossError> {
    let [b, c] = logits.dims();
    if labels.len() != b {
        return Err(LossError::Shape {
            what: "labels",
            expected: format!("[{b}]"),
            found: vec![labels.len()],
        });
    }
    if let Some(bad) = labels.iter().find(|&&l| !(0..c as i64).contains(&l)) {
        return Err(LossError::Shape {
            what: "class id",
            expected: format!("in [0, {c})"),
            found: vec![*bad as usize],
        });
    }
    let targets =
        Tensor::<2, Int>::from_data(TensorData::new(labels.to_vec(), [b, 1]), &logits.device());
    let dtype = balora_kernels::training_dtype(logits.dtype());
    let logits = logits.cast(dtype);
    let picked = log_softmax(logits, 1).gather(1, targets);
    Ok(picked.mean().neg())
}

/// Mean squared error of a single-output regression head `[B, 1]` (GLUE STS-B).
pub fn regression_loss(predictions: Tensor<2>, targets: &[f64]) -> Result<Tensor<1>, LossError> {
    let [b, one] = predictions.dims();
    if one != 1 || targets.len() != b {
        return Err(LossError::Shape {
            what: "regression predictions/targets",
            expected: format!("[{b}, 1] and {b} targets"),
            found: vec![b, one, targets.len()],
        });
    }
    let y = Tensor::<2>::from_data(
        TensorData::new(targets.to_vec(), [b, 1]),
        (&predictions.device(), predictions.dtype()),
    );
    Ok((predictions - y).powi_scalar(2).mean())
}
