//! One configurable regulariser; the presets only fill its fields (docs/methods.md, "Presets").

use burn::config::Config;

use crate::LossError;
use crate::schedule::{AdaptiveLambda, Schedule};

/// Which kind of logits the regulariser sees.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Task {
    /// Sequence classification: logits `[B, C]`.
    Nlu,
    /// Language generation: logits `[B, T, V]` with token labels `[B, T]`.
    Nlg,
}

/// The weights of the three regularisers at one step (after schedules; λ1 also after the
/// adaptive rule), as logged in `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Lambdas {
    /// λ1, of the consistency term.
    pub consistency: f64,
    /// λ2, of the diversity term.
    pub diversity: f64,
    /// λ3, of the SVD term.
    pub svd: f64,
}

/// BA-LoRA's named presets (docs/methods.md, "Presets"): each fills every field of
/// [`RegularizerConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Preset {
    /// The paper's λs and forms (the default; NLU and NLG).
    Paper,
    /// The ICLR 2026 code's recipe (NLG only).
    Iclr2026,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Self; 2] = [Self::Paper, Self::Iclr2026];

    /// The preset's name (`paper`, `iclr2026`), as serde and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::Iclr2026 => "iclr2026",
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Preset {
    type Err = LossError;

    fn from_str(name: &str) -> Result<Self, LossError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                LossError::InvalidConfig(format!(
                    "unknown BA-LoRA preset {name:?}: expected \"paper\" or \"iclr2026\""
                ))
            })
    }
}

/// The SVD regulariser's objective over the singular values σ of the logit matrix.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SvdObjective {
    /// `−Σ_{i≤k} σ_i` (the BA-LoRA paper's NLU objective; unbounded).
    TopKSum,
    /// `−Σ_{i≤k} σ_i / (Σ_i σ_i + svd_eps)` (cyp-2024-12 code; iclr2026 with its flag off).
    RatioToSum,
    /// `−Σ_{i≤k} σ_i / ‖Z‖_F` (iclr2026 `svd_frob_norm`; in `[−√k, −σ₁/‖Z‖_F]`).
    RatioToFrobenius,
}

/// Which matrix the NLG SVD term decomposes.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SvdMode {
    /// Each sample's `[T, V]` logit matrix separately, objective averaged over B (the paper
    /// preset's fix of the reference code's degenerate flat reshape: docs/methods.md,
    /// "Presets").
    PerSample,
    /// The `[N, V]` matrix of the (masked) token rows pooled over the batch (iclr2026).
    TokenMatrix,
}

/// Which token positions the NLG terms see.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum MaskMode {
    /// Every position, padding included (cyp-2024-12).
    None,
    /// Positions whose own label is not −100 (iclr2026: one position off the cross-entropy
    /// mask, kept for equivalence with the reference).
    ResponseUnshifted,
    /// Positions that predict a labelled token (label at t+1 is not −100): aligned with the
    /// shifted cross-entropy mask.
    ResponseShifted,
}

/// How the NLG consistency KL is reduced.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum KlReduction {
    /// `Σ_{b,t,v} / B` (torch `kl_div(reduction="batchmean")` on `[B, T, V]`; grows with T).
    BatchSum,
    /// `τ²·Σ_{b,t} M_bt·KL_bt / max(N, 1)`: a masked token mean, Hinton-scaled.
    TokenMean,
}

/// Every choice the BA-LoRA regularisers make (docs/methods.md, "BA-LoRA regularisers").
/// Build one with [`Self::paper`] or [`Self::iclr2026`] and override fields with the `with_*`
/// builders; [`Self::validate`] rejects combinations no reference defines.
#[derive(Config, Debug, PartialEq)]
pub struct RegularizerConfig {
    /// NLU (`[B, C]` logits) or NLG (`[B, T, V]` logits + labels).
    pub task: Task,
    /// λ1, weight of the consistency term.
    pub lambda_consistency: f64,
    /// λ2, weight of the diversity term.
    pub lambda_diversity: f64,
    /// λ3, weight of the SVD term.
    pub lambda_svd: f64,
    /// Number k of leading singular values the SVD term rewards.
    #[config(default = 3)]
    pub svd_k: usize,
    /// SVD objective.
    #[config(default = "SvdObjective::RatioToSum")]
    pub svd_objective: SvdObjective,
    /// NLG SVD matrix.
    #[config(default = "SvdMode::PerSample")]
    pub svd_mode: SvdMode,
    /// `ε` added to `Σσ` in [`SvdObjective::RatioToSum`] (1e-10 in cyp-2024-12, 0 in iclr2026).
    #[config(default = 1e-10)]
    pub svd_eps: f64,
    /// Use the randomized SVD (q = k + 5, 2 power iterations, Frobenius denominator) when the
    /// vocabulary is larger than this and `k < min(N, V)` (iclr2026: 4096).
    #[config(default = "None")]
    pub randomized_svd_threshold: Option<usize>,
    /// Distillation temperature τ of the NLG consistency KL.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// NLG diversity over the top-k logits of each row only (0 = full vocabulary).
    #[config(default = 0)]
    pub top_k_entropy: usize,
    /// `ε` inside the entropy's log, `log(p + ε)` (1e-10 in cyp-2024-12). With 0 the
    /// entropy uses `log_softmax`.
    #[config(default = 1e-10)]
    pub entropy_eps: f64,
    /// Token positions the NLG terms see.
    #[config(default = "MaskMode::None")]
    pub mask: MaskMode,
    /// Reduction of the NLG consistency KL.
    #[config(default = "KlReduction::BatchSum")]
    pub kl_reduction: KlReduction,
    /// Schedule of λ1 over optimizer steps.
    #[config(default = "Schedule::Constant")]
    pub schedule_consistency: Schedule,
    /// Schedule of λ2.
    #[config(default = "Schedule::Constant")]
    pub schedule_diversity: Schedule,
    /// Schedule of λ3.
    #[config(default = "Schedule::Constant")]
    pub schedule_svd: Schedule,
    /// Adapt λ1 to the teacher's confidence (iclr2026 option); replaces λ1's schedule.
    #[config(default = "None")]
    pub adaptive_consistency: Option<AdaptiveLambda>,
}

impl RegularizerConfig {
    /// The `paper` preset (the default): cyp-2024-12's semantics with its defects fixed
    /// (docs/methods.md, "Presets"). NLU: λ = 1e-4 / 4e-4 / 1e-4, SVD `−Σ_{i≤3} σ_i` of the
    /// `[B, C]` logits. NLG: λ = 1e-4 / 3e-4 / 1e-4, unmasked batch-sum KL, entropy with
    /// ε = 1e-10, per-sample SVD ratio with k = 3.
    pub fn paper(task: Task) -> Self {
        match task {
            Task::Nlu => {
                Self::new(task, 1e-4, 4e-4, 1e-4).with_svd_objective(SvdObjective::TopKSum)
            }
            Task::Nlg => Self::new(task, 1e-4, 3e-4, 1e-4),
        }
    }

    /// The `iclr2026` preset: the official ICLR-2026 recipe (docs/methods.md, "Presets").
    /// NLG only.
    /// Masked (unshifted) token-mean KL at τ = 2, top-20 entropy, SVD of the masked token
    /// matrix with k = 10 over the Frobenius norm (randomized above V = 4096),
    /// λ = 0.025 (cosine) / 0.005 / 0.005 (two-phase).
    pub fn iclr2026() -> Self {
        Self::new(Task::Nlg, 0.025, 0.005, 0.005)
            .with_svd_k(10)
            .with_svd_objective(SvdObjective::RatioToFrobenius)
            .with_svd_mode(SvdMode::TokenMatrix)
            .with_svd_eps(0.0)
            .with_randomized_svd_threshold(Some(4096))
            .with_temperature(2.0)
            .with_top_k_entropy(20)
            .with_entropy_eps(0.0)
            .with_mask(MaskMode::ResponseUnshifted)
            .with_kl_reduction(KlReduction::TokenMean)
            .with_schedule_consistency(Schedule::Cosine { floor: 0.1 })
            .with_schedule_diversity(Schedule::TwoPhase {
                warmup_ratio: 0.2,
                ramp_ratio: 0.05,
            })
            .with_schedule_svd(Schedule::TwoPhase {
                warmup_ratio: 0.2,
                ramp_ratio: 0.05,
            })
    }

    /// The regularisers of `preset` for `task`; `iclr2026` is refused for NLU, which its
    /// code does not define.
    pub fn preset(preset: Preset, task: Task) -> Result<Self, LossError> {
        match (preset, task) {
            (Preset::Paper, _) => Ok(Self::paper(task)),
            (Preset::Iclr2026, Task::Nlg) => Ok(Self::iclr2026()),
            (Preset::Iclr2026, Task::Nlu) => Err(LossError::InvalidConfig(
                "the iclr2026 preset is defined for NLG only (the official code has no NLU \
                 path); use `paper` for classification"
                    .into(),
            )),
        }
    }

    /// Reject values out of their domain and combinations that no reference defines.
    pub fn validate(&self) -> Result<(), LossError> {
        let bad = |msg: String| Err(LossError::InvalidConfig(msg));
        for (name, v) in [
            ("lambda_consistency", self.lambda_consistency),
            ("lambda_diversity", self.lambda_diversity),
            ("lambda_svd", self.lambda_svd),
            ("svd_eps", self.svd_eps),
            ("entropy_eps", self.entropy_eps),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(format!("{name} = {v} must be finite and ≥ 0"));
            }
        }
        if !self.temperature.is_finite() || self.temperature <= 0.0 {
            return bad(format!("temperature = {} must be > 0", self.temperature));
        }
        if self.svd_k == 0 {
            return bad("svd_k must be at least 1".into());
        }
        for s in [
            &self.schedule_consistency,
            &self.schedule_diversity,
            &self.schedule_svd,
        ] {
            s.validate()?;
        }
        if let Some(a) = &self.adaptive_consistency {
            a.validate()?;
        }
        match self.task {
            Task::Nlu => {
                if self.mask != MaskMode::None {
                    return bad("NLU logits [B, C] have no token positions to mask".into());
                }
                if self.temperature != 1.0 || self.top_k_entropy != 0 {
                    return bad(
                        "NLU consistency is a normalised-logit MSE and NLU diversity a \
                         covariance: temperature and top_k_entropy apply to NLG only"
                            .into(),
                    );
                }
                if self.adaptive_consistency.is_some() {
                    return bad("adaptive λ1 is defined for NLG only".into());
                }
            }
            Task::Nlg => {
                if self.kl_reduction == KlReduction::BatchSum && self.temperature != 1.0 {
                    return bad(
                        "the batch-sum KL (cyp-2024-12) has no temperature; use the token-mean \
                         KL for τ ≠ 1"
                            .into(),
                    );
                }
                if self.kl_reduction == KlReduction::BatchSum && self.mask != MaskMode::None {
                    return bad(
                        "the batch-sum KL is unmasked by definition; use the token-mean KL \
                         with a response mask"
                            .into(),
                    );
                }
                if self.svd_mode == SvdMode::PerSample && self.mask != MaskMode::None {
                    return bad("a per-sample SVD of masked rows is not defined; use \
                         svd_mode = TokenMatrix with a mask"
                        .into());
                }
            }
        }
        Ok(())
    }

    /// The three λ's at optimizer step `step` of `total` (before adaptive λ1).
    pub fn lambdas_at(&self, step: usize, total: usize) -> Lambdas {
        Lambdas {
            consistency: self.lambda_consistency * self.schedule_consistency.factor(step, total),
            diversity: self.lambda_diversity * self.schedule_diversity.factor(step, total),
            svd: self.lambda_svd * self.schedule_svd.factor(step, total),
        }
    }
}
