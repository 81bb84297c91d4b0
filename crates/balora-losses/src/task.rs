//! Task losses: the shifted causal-LM cross-entropy and classification cross-entropy.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::{IGNORE_INDEX, LossError};

/// Hugging Face's causal-LM loss: logits at position t are scored against label t+1,
/// averaged over the labels that are not −100 (prompt and padding). Returns 0 — not NaN — for
/// a batch with no labelled token, so an all-prompt batch cannot poison training.
///
/// `labels` are host values `[B, T]`, row-major (the batch is built on the host anyway).
pub fn causal_lm_loss(logits: Tensor<3>, labels: &[i64]) -> Result<Tensor<1>, LossError> {
    let [b, t, v] = logits.dims();
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
    if t < 2 {
        return Ok(Tensor::zeros([1], (&logits.device(), logits.dtype())));
    }
    let device = logits.device();
    let mut targets = Vec::with_capacity(b * (t - 1));
    let mut weights = Vec::with_capacity(b * (t - 1));
    for row in labels.chunks(t) {
        for &l in &row[1..] {
            targets.push(if l == IGNORE_INDEX { 0 } else { l });
            weights.push(if l == IGNORE_INDEX { 0.0 } else { 1.0 });
        }
    }
    let n: f64 = weights.iter().sum();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, t - 1, 1]), &device);
    let weights = Tensor::<2>::from_data(
        TensorData::new(weights, [b, t - 1]),
        (&device, logits.dtype()),
    );
    let log_p = log_softmax(logits.narrow(1, 0, t - 1), 2);
    let picked: Tensor<2> = log_p.gather(2, targets).squeeze_dim(2);
    Ok((picked * weights).sum().div_scalar(n.max(1.0)).neg())
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
