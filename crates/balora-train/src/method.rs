//! The fine-tuning methods by name: what each of LoRA, PiSSA, BA-LoRA and MonteCLoRA sets in
//! the adapter config and adds to the loss, so callers (the `finetune` and `bench` examples,
//! an experiment grid) choose a method without knowing its parts.

use std::fmt;

use balora_adapters::{InitMode, LoraConfig, MonteCloraConfig};
use balora_losses::{BaLoraLoss, LossError, RegularizerConfig, Task};

/// A fine-tuning method.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// LoRA: Kaiming/zero initialisation, the task loss only.
    Lora,
    /// PiSSA: the adapter starts at the top-r singular triplets of each weight, the base
    /// becomes the residual; the task loss only.
    Pissa {
        /// Full or randomized SVD.
        init: InitMode,
    },
    /// BA-LoRA: PiSSA initialisation plus the consistency, diversity and SVD regularisers
    /// against the frozen initial adapter (docs/methods.md, "BA-LoRA regularisers").
    Balora {
        /// Full or randomized SVD.
        init: InitMode,
        /// The regularisers (a preset, possibly with λ overrides).
        regularizers: RegularizerConfig,
    },
    /// MonteCLoRA: Kaiming/zero initialisation with the Bayesian Monte-Carlo perturbation of
    /// `lora_A` and its KL terms (docs/methods.md, "MonteCLoRA").
    MonteClora(MonteCloraConfig),
}

/// The names [`Method::from_name`] accepts.
pub const METHOD_NAMES: [&str; 4] = ["lora", "pissa", "balora", "monteclora"];

impl Method {
    /// PiSSA's SVD: the full thin SVD for `niter = 0`, else the randomized one with `niter`
    /// power iterations (peft's `pissa_niter_K`).
    pub fn pissa_init(niter: usize) -> InitMode {
        match niter {
            0 => InitMode::Pissa,
            niter => InitMode::PissaFast { niter },
        }
    }

    /// The method called `name` (one of [`METHOD_NAMES`]) with its defaults for `task`: PiSSA
    /// with `pissa_niter` power iterations, BA-LoRA with `preset` (`paper` or `iclr2026`),
    /// MonteCLoRA with the paper's sampler settings.
    pub fn from_name(
        name: &str,
        task: Task,
        pissa_niter: usize,
        preset: &str,
    ) -> Result<Self, LossError> {
        let init = Self::pissa_init(pissa_niter);
        Ok(match name {
            "lora" => Self::Lora,
            "pissa" => Self::Pissa { init },
            "balora" => Self::Balora {
                init,
                regularizers: RegularizerConfig::preset(preset, task)?,
            },
            "monteclora" => Self::MonteClora(MonteCloraConfig::new()),
            other => {
                return Err(LossError::InvalidConfig(format!(
                    "unknown method {other:?}: expected one of {}",
                    METHOD_NAMES.join(", ")
                )));
            }
        })
    }

    /// The method's name, as [`Self::from_name`] reads it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Pissa { .. } => "pissa",
            Self::Balora { .. } => "balora",
            Self::MonteClora(_) => "monteclora",
        }
    }

    /// `config` (rank, α, targets, dropout, seed) with this method's initialisation and, for
    /// MonteCLoRA, its variant.
    pub fn adapter_config(&self, config: LoraConfig) -> LoraConfig {
        let (init, monteclora) = match self {
            Self::Lora => (InitMode::Gaussian, None),
            Self::Pissa { init } | Self::Balora { init, .. } => (*init, None),
            Self::MonteClora(mc) => (InitMode::Gaussian, Some(mc.clone())),
        };
        config.with_init(init).with_monteclora(monteclora)
    }

    /// BA-LoRA's regularisers scheduled over `total_steps` optimizer steps; `None` for the
    /// methods that train on the task loss alone.
    pub fn regularizer(&self, total_steps: usize) -> Result<Option<BaLoraLoss>, LossError> {
        match self {
            Self::Balora { regularizers, .. } => {
                Ok(Some(BaLoraLoss::new(regularizers.clone(), total_steps)?))
            }
            _ => Ok(None),
        }
    }

    /// The regularisers, for overriding their λs; `None` unless BA-LoRA.
    pub fn regularizers_mut(&mut self) -> Option<&mut RegularizerConfig> {
        match self {
            Self::Balora { regularizers, .. } => Some(regularizers),
            _ => None,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balora_adapters::TargetModules;

    #[test]
    fn each_method_sets_its_init_variant_and_loss() {
        let base = || LoraConfig::new(4, TargetModules::names(["q_proj"]));
        for name in METHOD_NAMES {
            let m = Method::from_name(name, Task::Nlg, 2, "paper").unwrap();
            assert_eq!(m.name(), name);
            let c = m.adapter_config(base());
            let pissa = matches!(name, "pissa" | "balora");
            assert_eq!(c.init.is_pissa(), pissa, "{name}");
            assert_eq!(c.monteclora.is_some(), name == "monteclora", "{name}");
            assert_eq!(
                m.regularizer(10).unwrap().is_some(),
                name == "balora",
                "{name}"
            );
        }
        let full = Method::from_name("pissa", Task::Nlu, 0, "paper").unwrap();
        assert_eq!(full.adapter_config(base()).init, InitMode::Pissa);
    }

    #[test]
    fn unknown_names_and_presets_are_refused_with_the_choices() {
        let e = Method::from_name("qlora", Task::Nlg, 2, "paper")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"qlora\"") && e.contains("monteclora"), "{e}");
        let e = Method::from_name("balora", Task::Nlu, 2, "iclr2026")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iclr2026"), "{e}");
    }
}
