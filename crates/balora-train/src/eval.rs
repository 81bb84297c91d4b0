//! Evaluation metrics: GSM8K-style final-number accuracy for generation, accuracy, macro-F1,
//! MCC and Pearson/Spearman for classification and regression.

/// The final number of a generated answer, GSM8K-style: the number after "The answer is" /
/// "####" when present, otherwise the last number in the text. Commas in numbers are dropped.
pub fn extract_number(text: &str) -> Option<f64> {
    let lower = text.to_lowercase();
    let tail = ["the answer is", "####"]
        .iter()
        .filter_map(|m| lower.rfind(m).map(|i| &text[i + m.len()..]))
        .next();
    let numbers = |s: &str| -> Vec<f64> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let flush = |cur: &mut String, out: &mut Vec<f64>| {
            let t = cur.trim_end_matches('.').replace(',', "");
            if let Ok(v) = t.parse::<f64>() {
                out.push(v);
            }
            cur.clear();
        };
        for c in s.chars() {
            if c.is_ascii_digit()
                || (c == '-' && cur.is_empty())
                || ((c == '.' || c == ',') && !cur.is_empty())
            {
                cur.push(c);
            } else {
                flush(&mut cur, &mut out);
            }
        }
        flush(&mut cur, &mut out);
        out
    };
    if let Some(t) = tail
        && let Some(v) = numbers(t).first()
    {
        return Some(*v);
    }
    numbers(text).last().copied()
}

/// Whether a generated answer's final number equals the gold answer's.
pub fn answer_matches(generated: &str, gold: &str) -> bool {
    match (extract_number(generated), extract_number(gold)) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        _ => false,
    }
}

/// Classification metrics.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ClassificationMetrics {
    /// Accuracy.
    pub accuracy: f64,
    /// Macro-averaged F1.
    pub macro_f1: f64,
    /// Matthews correlation (multi-class form).
    pub mcc: f64,
}

/// Accuracy, macro-F1 and MCC of `predicted` against `gold` class ids.
pub fn classification_metrics(
    predicted: &[usize],
    gold: &[usize],
    classes: usize,
) -> ClassificationMetrics {
    let n = gold.len().max(1) as f64;
    let mut confusion = vec![vec![0f64; classes]; classes];
    for (&p, &g) in predicted.iter().zip(gold) {
        confusion[g][p] += 1.0;
    }
    let correct: f64 = (0..classes).map(|k| confusion[k][k]).sum();
    let f1: f64 = (0..classes)
        .map(|k| {
            let tp = confusion[k][k];
            let fp: f64 = (0..classes).map(|g| confusion[g][k]).sum::<f64>() - tp;
            let fn_: f64 = confusion[k].iter().sum::<f64>() - tp;
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            }
        })
        .sum::<f64>()
        / classes.max(1) as f64;
    // Gorodkin's multi-class MCC
    let t: Vec<f64> = (0..classes).map(|k| confusion[k].iter().sum()).collect();
    let p: Vec<f64> = (0..classes)
        .map(|k| (0..classes).map(|g| confusion[g][k]).sum())
        .collect();
    let cov_tp = correct * n - t.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>();
    let cov_tt = n * n - t.iter().map(|a| a * a).sum::<f64>();
    let cov_pp = n * n - p.iter().map(|a| a * a).sum::<f64>();
    let mcc = if cov_tt * cov_pp > 0.0 {
        cov_tp / (cov_tt * cov_pp).sqrt()
    } else {
        0.0
    };
    ClassificationMetrics {
        accuracy: correct / n,
        macro_f1: f1,
        mcc,
    }
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().max(1) as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    if vx * vy > 0.0 {
        cov / (vx * vy).sqrt()
    } else {
        0.0
    }
}

/// Spearman rank correlation (average ranks for ties).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            r[*k] = avg;
        }
        i = j + 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_extracted_like_gsm8k() {
        assert_eq!(extract_number("So 3 + 4 = 7. The answer is 7."), Some(7.0));
        assert_eq!(extract_number("#### 1,234"), Some(1234.0));
        assert_eq!(extract_number("She has -2.5 apples left"), Some(-2.5));
        assert_eq!(extract_number("no number"), None);
        assert!(answer_matches("... the answer is 42 apples", "42"));
        assert!(!answer_matches("41", "42"));
    }

    #[test]
    fn classification_metrics_on_a_small_confusion() {
        let m = classification_metrics(&[0, 1, 1, 0], &[0, 1, 0, 0], 2);
        assert_eq!(m.accuracy, 0.75);
        assert!((m.mcc - 0.5773502691896258).abs() < 1e-12);
        assert!((m.macro_f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn correlations() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.5]) - 0.9979487157886733).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 10.0, 100.0]), 1.0);
    }
}
