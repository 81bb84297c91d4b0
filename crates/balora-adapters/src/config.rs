//! What an adapter is: rank, scale, initialisation and which layers receive one.
//!
//! The field names follow peft's `LoraConfig` (`r`, `lora_alpha`, `use_rslora`,
//! `lora_dropout`, `init_lora_weights`, `target_modules`) so a PEFT user recognises every knob and
//! `adapter_config.json` maps one-to-one.

use std::collections::BTreeMap;

use burn::config::Config;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::AdapterError;
use crate::monteclora::MonteCloraConfig;

/// How `lora_A` and `lora_B` start.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum InitMode {
    /// peft's default (`init_lora_weights=True`): `lora_A` Kaiming-uniform
    /// (`U(-1/√in, 1/√in)`), `lora_B = 0`, so the adapted layer starts equal to the base layer.
    Gaussian,
    /// PiSSA with a full thin SVD of the base weight (peft `"pissa"`): the adapter holds the
    /// top-r singular triplets and the base becomes the residual `W − s·B·A`.
    Pissa,
    /// PiSSA with a randomized SVD (peft `"pissa_niter_K"`, Halko et al. with `q = r` and
    /// `niter` power iterations). Far cheaper on large layers; the residual is still
    /// `W − s·B·A`, so `W_res + s·B·A = W` holds exactly whatever the sketch's quality.
    PissaFast {
        /// Number of subspace (power) iterations.
        niter: usize,
    },
}

impl InitMode {
    /// The value peft writes for `init_lora_weights` for this mode.
    pub fn peft_name(&self) -> String {
        match self {
            InitMode::Gaussian => "true".to_string(),
            InitMode::Pissa => "pissa".to_string(),
            InitMode::PissaFast { niter } => format!("pissa_niter_{niter}"),
        }
    }

    /// Whether this mode rewrites the base weight into a residual.
    pub fn is_pissa(&self) -> bool {
        !matches!(self, InitMode::Gaussian)
    }
}

/// Which linear layers get an adapter, with peft's semantics.
///
/// * `Names(list)`: a layer whose module path equals a name, or ends with `.` + name
///   (`"q_proj"` selects `model.layers.3.self_attn.q_proj`).
/// * `Regex(pattern)`: the pattern must match the *whole* module path (Python's
///   `re.fullmatch`), e.g. `r".*\.layers\.(0|1)\..*_proj"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// A regular expression over full module paths.
    Regex(String),
    /// Module names (the last path component, or a dotted suffix).
    Names(Vec<String>),
}

impl TargetModules {
    /// Target a list of names, e.g. `TargetModules::names(["q_proj", "v_proj"])`.
    pub fn names<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TargetModules::Names(names.into_iter().map(Into::into).collect())
    }

    /// Compile into a matcher; fails on an invalid regex.
    pub fn matcher(&self) -> Result<TargetMatcher, AdapterError> {
        Ok(match self {
            TargetModules::Names(names) => TargetMatcher::Names(names.clone()),
            TargetModules::Regex(pattern) => {
                let anchored = format!("^(?:{pattern})$");
                let re = Regex::new(&anchored).map_err(|source| AdapterError::InvalidRegex {
                    pattern: pattern.clone(),
                    source,
                })?;
                TargetMatcher::Regex(re)
            }
        })
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetModules::Regex(p) => write!(f, "regex {p:?}"),
            TargetModules::Names(n) => write!(f, "{n:?}"),
        }
    }
}

/// A compiled [`TargetModules`].
#[derive(Debug, Clone)]
pub enum TargetMatcher {
    /// Name or dotted-suffix match.
    Names(Vec<String>),
    /// Anchored regex.
    Regex(Regex),
}

impl TargetMatcher {
    /// Whether the layer at `path` is targeted.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            TargetMatcher::Names(names) => names.iter().any(|name| {
                path == name
                    || path
                        .strip_suffix(name.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
            TargetMatcher::Regex(re) => re.is_match(path),
        }
    }
}

/// Configuration of a LoRA-family adapter (LoRA, PiSSA).
///
/// The update of a targeted layer is `ΔW = s·B·A` with `A = lora_A ∈ ℝ^{r×in}`,
/// `B = lora_B ∈ ℝ^{out×r}` and `s = α/r` (or `α/√r` with rsLoRA).
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub r: usize,
    /// Which linear layers receive an adapter.
    pub target_modules: TargetModules,
    /// `lora_alpha`: the scale numerator. peft's default is 8.
    #[config(default = 8.0)]
    pub lora_alpha: f64,
    /// rsLoRA scaling `α/√r` instead of `α/r`, which keeps the update's magnitude stable
    /// as the rank grows (Kalajdzievski, 2023).
    #[config(default = false)]
    pub use_rslora: bool,
    /// Dropout on the adapter branch's input (never on the base branch). PiSSA's recipe uses 0.
    #[config(default = 0.0)]
    pub lora_dropout: f64,
    /// Initialisation of the factors.
    #[config(default = "InitMode::Gaussian")]
    pub init: InitMode,
    /// Seed of the host RNG used by the Gaussian and randomized-SVD initialisations, so an
    /// initialisation is reproducible independent of the device's RNG.
    #[config(default = 0)]
    pub seed: u64,
    /// Make the adapter a MonteCLoRA adapter (Bayesian perturbation of `lora_A`).
    #[config(default = "None")]
    pub monteclora: Option<MonteCloraConfig>,
    /// Per-layer ranks (peft's `rank_pattern`): a key is a regex that must match a module path
    /// or a dotted suffix of it (`^(.*\.)?key$`); layers no key matches use `r`.
    #[config(default = "BTreeMap::new()")]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-layer `lora_alpha` (peft's `alpha_pattern`), matched as `rank_pattern`.
    #[config(default = "BTreeMap::new()")]
    pub alpha_pattern: BTreeMap<String, f64>,
}

/// The value of the first key of `patterns` that matches `path` as peft matches
/// `rank_pattern` / `alpha_pattern` keys (`^(.*\.)?key$`); an invalid key matches nothing
/// (they are checked by [`LoraConfig::validate`]).
pub fn pattern_value<'a, T>(patterns: &'a BTreeMap<String, T>, path: &str) -> Option<&'a T> {
    patterns.iter().find_map(|(k, v)| {
        Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .ok()
            .filter(|re| re.is_match(path))
            .map(|_| v)
    })
}

impl LoraConfig {
    /// The config of the layer at `path`: its rank and `lora_alpha` from the patterns, no
    /// patterns left.
    pub fn for_layer(&self, path: &str) -> LoraConfig {
        LoraConfig {
            r: *pattern_value(&self.rank_pattern, path).unwrap_or(&self.r),
            lora_alpha: *pattern_value(&self.alpha_pattern, path).unwrap_or(&self.lora_alpha),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// The scale `s` applied to `B·A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Reject values no layer could use.
    pub fn validate(&self) -> Result<(), AdapterError> {
        if self.r == 0 {
            return Err(AdapterError::InvalidConfig {
                field: "r",
                value: "0".into(),
                reason: "the rank must be at least 1",
            });
        }
        if !self.lora_alpha.is_finite() || self.lora_alpha == 0.0 {
            return Err(AdapterError::InvalidConfig {
                field: "lora_alpha",
                value: self.lora_alpha.to_string(),
                reason: "must be finite and non-zero",
            });
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(AdapterError::InvalidConfig {
                field: "lora_dropout",
                value: self.lora_dropout.to_string(),
                reason: "must lie in [0, 1)",
            });
        }
        if let InitMode::PissaFast { niter } = self.init
            && niter == 0
        {
            // peft accepts niter 0, but a zero-iteration sketch is a random projection: almost
            // certainly a typo for the full SVD.
            return Err(AdapterError::InvalidConfig {
                field: "init",
                value: "pissa_niter_0".into(),
                reason: "use at least one power iteration, or InitMode::Pissa",
            });
        }
        if let Some(mc) = &self.monteclora
            && (mc.num_samples == 0
                || !mc.sample_scaler.is_finite()
                || mc.sample_scaler < 0.0
                || mc.dirichlet_prior.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return Err(AdapterError::InvalidConfig {
                field: "monteclora",
                value: format!("{mc:?}"),
                reason: "num_samples ≥ 1, sample_scaler ≥ 0 and dirichlet_prior > 0 are required",
            });
        }
        for key in self.rank_pattern.keys().chain(self.alpha_pattern.keys()) {
            Regex::new(key).map_err(|source| AdapterError::InvalidRegex {
                pattern: key.clone(),
                source,
            })?;
        }
        if let Some((key, _)) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return Err(AdapterError::InvalidConfig {
                field: "rank_pattern",
                value: format!("{key} = 0"),
                reason: "every rank must be at least 1",
            });
        }
        if let Some((key, _)) = self
            .alpha_pattern
            .iter()
            .find(|(_, a)| !a.is_finite() || **a == 0.0)
        {
            return Err(AdapterError::InvalidConfig {
                field: "alpha_pattern",
                value: key.clone(),
                reason: "every lora_alpha must be finite and non-zero",
            });
        }
        self.target_modules.matcher().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_and_alpha_patterns_pick_per_layer_values_like_peft() {
        let mut c =
            LoraConfig::new(8, TargetModules::names(["q_proj", "v_proj"])).with_lora_alpha(16.0);
        c.rank_pattern.insert("v_proj".into(), 4);
        c.alpha_pattern
            .insert(r"layers\.1\.self_attn\.q_proj".into(), 2.0);
        let v = c.for_layer("model.layers.0.self_attn.v_proj");
        assert_eq!((v.r, v.lora_alpha, v.scale()), (4, 16.0, 4.0));
        let q1 = c.for_layer("model.layers.1.self_attn.q_proj");
        assert_eq!((q1.r, q1.lora_alpha), (8, 2.0));
        let q0 = c.for_layer("model.layers.0.self_attn.q_proj");
        assert_eq!((q0.r, q0.lora_alpha), (8, 16.0));
        // a key matches whole dotted components only
        assert_eq!(c.for_layer("model.layers.0.self_attn.xv_proj").r, 8);
        c.rank_pattern.insert("q_proj".into(), 0);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("rank_pattern") && e.contains("q_proj = 0"),
            "{e}"
        );
    }

    #[test]
    fn names_match_whole_components_only() {
        let m = TargetModules::names(["q_proj", "attn.c_proj"])
            .matcher()
            .unwrap();
        assert!(m.matches("model.layers.0.self_attn.q_proj"));
        assert!(m.matches("q_proj"));
        assert!(!m.matches("model.layers.0.self_attn.xq_proj"));
        assert!(m.matches("h.0.attn.c_proj"));
        assert!(!m.matches("h.0.mlp.c_proj"));
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let m = TargetModules::Regex(r".*\.(0|1)\..*q_proj".into())
            .matcher()
            .unwrap();
        assert!(m.matches("model.layers.1.self_attn.q_proj"));
        assert!(!m.matches("model.layers.2.self_attn.q_proj"));
        // fullmatch: a prefix match is not enough
        let m = TargetModules::Regex("q_proj".into()).matcher().unwrap();
        assert!(!m.matches("model.layers.1.self_attn.q_proj"));
    }

    #[test]
    fn target_modules_round_trip_like_peft_json() {
        let names: TargetModules = serde_json::from_str(r#"["v_proj","q_proj"]"#).unwrap();
        assert_eq!(names, TargetModules::names(["v_proj", "q_proj"]));
        let re: TargetModules = serde_json::from_str(r#"".*proj""#).unwrap();
        assert_eq!(re, TargetModules::Regex(".*proj".into()));
    }

    #[test]
    fn scale_follows_rslora() {
        let c = LoraConfig::new(16, TargetModules::names(["q"])).with_lora_alpha(32.0);
        assert_eq!(c.scale(), 2.0);
        assert_eq!(c.with_use_rslora(true).scale(), 8.0);
    }

    #[test]
    fn invalid_values_are_rejected_with_the_field_name() {
        let c = LoraConfig::new(0, TargetModules::names(["q"]));
        assert!(c.validate().unwrap_err().to_string().contains("r = 0"));
        let c = LoraConfig::new(4, TargetModules::Regex("(".into()));
        assert!(c.validate().unwrap_err().to_string().contains("regex"));
        let c = LoraConfig::new(4, TargetModules::names(["q"])).with_lora_dropout(1.0);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("lora_dropout")
        );
    }
}
