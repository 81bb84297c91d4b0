//! Summary statistics over seeds: mean, sample standard deviation and the half-width of a
//! 95 % Student-t confidence interval.

use serde::{Deserialize, Serialize};

/// The summary of a few measurements (one per seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many values.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// The sample standard deviation (n − 1 in the denominator; 0 for one value).
    pub sd: f64,
    /// Half-width of the 95 % confidence interval of the mean, `t(0.975, n − 1)·sd/√n`
    /// (`None` for one value: one seed says nothing about the spread).
    pub ci95: Option<f64>,
}

/// Two-sided 95 % quantiles of Student's t for 1–30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

impl Summary {
    /// The summary of `values` (`None` for none).
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Some(Self {
                n,
                mean,
                sd: 0.0,
                ci95: None,
            });
        }
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        let t = T975.get(n - 2).copied().unwrap_or(1.960);
        Some(Self {
            n,
            mean,
            sd,
            ci95: Some(t * sd / (n as f64).sqrt()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_fixed_values() {
        let s = Summary::of(&[0.70, 0.74, 0.72]).unwrap();
        assert_eq!(s.n, 3);
        assert!((s.mean - 0.72).abs() < 1e-12);
        assert!((s.sd - 0.02).abs() < 1e-12);
        // t(0.975, 2) = 4.303: 4.303 · 0.02 / √3
        assert!((s.ci95.unwrap() - 4.303 * 0.02 / 3f64.sqrt()).abs() < 1e-12);
        let one = Summary::of(&[0.5]).unwrap();
        assert_eq!((one.sd, one.ci95), (0.0, None));
        assert!(Summary::of(&[]).is_none());
    }
}
