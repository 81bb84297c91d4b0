//! λ schedules over optimizer steps (iclr2026) and adaptive λ1 (docs/methods.md, "Presets").

use burn::config::Config;

use crate::LossError;

/// How a λ evolves over optimizer steps `t ∈ [0, T_tot]`. [`Schedule::factor`] multiplies the
/// base λ.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum Schedule {
    /// Always 1.
    Constant,
    /// `floor + (1 − floor)·½(1 + cos(π t / T_tot))`: from 1 down to `floor` (0.1 in iclr2026).
    Cosine {
        /// Final fraction of λ.
        floor: f64,
    },
    /// 0 for `t < w = ⌊warmup_ratio·T⌋`, then a linear ramp over
    /// `ρ = max(⌊ramp_ratio·T⌋, 1)` steps, then 1 (iclr2026's `two_phase`).
    TwoPhase {
        /// Fraction of training with the term off.
        warmup_ratio: f64,
        /// Fraction of training spent ramping up.
        ramp_ratio: f64,
    },
    /// `t / w` for `t < w = ⌊warmup_ratio·T⌋`, then 1.
    LinearWarmup {
        /// Warmup fraction.
        warmup_ratio: f64,
    },
    /// `(t / w)²` for `t < w`, then 1.
    QuadraticWarmup {
        /// Warmup fraction.
        warmup_ratio: f64,
    },
}

impl Schedule {
    /// The multiplier of λ at step `t` of `total`.
    pub fn factor(&self, t: usize, total: usize) -> f64 {
        let total = total.max(1);
        let t_f = t as f64;
        let warm = |ratio: f64| (ratio * total as f64).floor();
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Cosine { floor } => {
                let progress = (t_f / total as f64).min(1.0);
                floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::TwoPhase {
                warmup_ratio,
                ramp_ratio,
            } => {
                let w = warm(warmup_ratio);
                let rho = warm(ramp_ratio).max(1.0);
                if t_f < w {
                    0.0
                } else {
                    ((t_f - w) / rho).min(1.0)
                }
            }
            Schedule::LinearWarmup { warmup_ratio } => {
                let w = warm(warmup_ratio);
                if t_f < w { t_f / w } else { 1.0 }
            }
            Schedule::QuadraticWarmup { warmup_ratio } => {
                let w = warm(warmup_ratio);
                if t_f < w { (t_f / w).powi(2) } else { 1.0 }
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), LossError> {
        let ratio_ok = |r: f64| r.is_finite() && (0.0..=1.0).contains(&r);
        let ok = match *self {
            Schedule::Constant => true,
            Schedule::Cosine { floor } => ratio_ok(floor),
            Schedule::TwoPhase {
                warmup_ratio,
                ramp_ratio,
            } => ratio_ok(warmup_ratio) && ratio_ok(ramp_ratio),
            Schedule::LinearWarmup { warmup_ratio }
            | Schedule::QuadraticWarmup { warmup_ratio } => ratio_ok(warmup_ratio),
        };
        if ok {
            Ok(())
        } else {
            Err(LossError::InvalidConfig(format!(
                "schedule {self:?}: ratios and floors must lie in [0, 1]"
            )))
        }
    }
}

/// Adaptive λ1 (iclr2026 option): a confident teacher (low entropy) gets a stronger
/// consistency pull. With the teacher's mean token entropy `H` at temperature τ,
/// `c = 1 − clip(H / ln V, 0, 1)` and `λ1 = λ_min + (λ_max − λ_min)·c`.
#[derive(Config, Debug, Copy, PartialEq)]
pub struct AdaptiveLambda {
    /// `λ_min` as a fraction of the base λ1 (0.1 in the reference).
    #[config(default = 0.1)]
    pub min_fraction: f64,
    /// `λ_max` as a fraction of the base λ1 (1.0 in the reference).
    #[config(default = 1.0)]
    pub max_fraction: f64,
}

impl AdaptiveLambda {
    /// λ1 for a teacher of mean entropy `entropy` over a vocabulary of `vocab` entries.
    pub fn lambda(&self, base: f64, entropy: f64, vocab: usize) -> f64 {
        let c = 1.0 - (entropy / (vocab as f64).ln()).clamp(0.0, 1.0);
        let (lo, hi) = (self.min_fraction * base, self.max_fraction * base);
        lo + (hi - lo) * c
    }

    pub(crate) fn validate(&self) -> Result<(), LossError> {
        if self.min_fraction.is_finite()
            && self.max_fraction.is_finite()
            && 0.0 <= self.min_fraction
            && self.min_fraction <= self.max_fraction
        {
            Ok(())
        } else {
            Err(LossError::InvalidConfig(format!(
                "adaptive λ1 needs 0 ≤ min_fraction ≤ max_fraction, got {self:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/methods.md, "Worked examples": T_tot = 1000, base λ = (0.025, 0.005, 0.005).
    #[test]
    fn iclr2026_schedules_at_the_listed_steps() {
        let cos = Schedule::Cosine { floor: 0.1 };
        let two = Schedule::TwoPhase {
            warmup_ratio: 0.2,
            ramp_ratio: 0.05,
        };
        let l1 = |t| 0.025 * cos.factor(t, 1000);
        let l2 = |t| 0.005 * two.factor(t, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9;
        assert!(close(l1(0), 0.025) && l2(0) == 0.0);
        assert!(close(l1(200), 0.0228514412) && l2(200) == 0.0);
        assert!(close(l1(210), 0.0226392439) && close(l2(210), 0.001));
        assert!(close(l1(225), 0.0223045671) && close(l2(225), 0.0025));
        assert!(close(l1(250), 0.0217049513) && close(l2(250), 0.005));
        assert!(close(l1(500), 0.01375));
        assert!(close(l1(1000), 0.0025));
    }

    #[test]
    fn warmups_reach_one_at_the_warmup_boundary() {
        let lin = Schedule::LinearWarmup { warmup_ratio: 0.1 };
        let quad = Schedule::QuadraticWarmup { warmup_ratio: 0.1 };
        assert_eq!(lin.factor(5, 100), 0.5);
        assert_eq!(quad.factor(5, 100), 0.25);
        assert_eq!(lin.factor(10, 100), 1.0);
        assert_eq!(quad.factor(50, 100), 1.0);
    }

    #[test]
    fn adaptive_lambda_matches_the_worked_example() {
        // teacher H = 1.0022857726 over V = 3 → c = 0.0876801735, λ1 = 0.0044728039
        let a = AdaptiveLambda::new();
        let l = a.lambda(0.025, 1.0022857726, 3);
        assert!((l - 0.0044728039).abs() < 1e-9, "{l}");
    }
}
