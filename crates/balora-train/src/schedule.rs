//! Learning-rate schedules with linear warmup (Hugging Face's `get_*_schedule_with_warmup`).
//! A pure function of the step, so a resumed run needs no scheduler state.

use serde::{Deserialize, Serialize};

/// Shape of the learning rate after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Half a cosine from the peak to 0.
    Cosine,
    /// Linear decay from the peak to 0.
    Linear,
    /// The peak throughout.
    Constant,
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (0-based) of `total`, with `warmup` steps of
    /// linear warmup from 0 to `peak`.
    ///
    /// Exactly Hugging Face's `lr_lambda(step) · peak`: the scheduler is stepped after each
    /// optimizer update, so update `step` uses `step / warmup` — the first update of a
    /// warmed-up run has learning rate 0, as in `transformers.Trainer`.
    pub fn lr(&self, peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return peak * step as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / span).min(1.0);
        match self {
            LrSchedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            LrSchedule::Linear => peak * (1.0 - progress),
            LrSchedule::Constant => peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule::Cosine;
        // transformers' get_cosine_schedule_with_warmup(opt, 10, 100): lr_lambda(0) = 0,
        // lr_lambda(1) = 0.1, lr_lambda(9) = 0.9, lr_lambda(10) = 1
        assert_eq!(s.lr(1.0, 0, 100, 10), 0.0);
        assert_eq!(s.lr(1.0, 1, 100, 10), 0.1);
        assert!((s.lr(1.0, 9, 100, 10) - 0.9).abs() < 1e-15);
        assert_eq!(s.lr(1.0, 10, 100, 10), 1.0);
        assert!((s.lr(1.0, 55, 100, 10) - 0.5).abs() < 1e-12);
        assert!(LrSchedule::Linear.lr(1.0, 100, 100, 10).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.lr(2.0, 50, 100, 0), 2.0);
    }
}
