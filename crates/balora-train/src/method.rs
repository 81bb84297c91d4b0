//! The fine-tuning methods by name: what each of LoRA, PiSSA, BA-LoRA and MonteCLoRA sets in
//! the adapter config and adds to the loss, so callers (the `finetune` and `bench` examples,
//! an experiment grid) choose a method without knowing its parts.

use std::fmt;

use balora_adapters::{InitMode, LoraConfig, MonteCloraConfig};
use balora_losses::{BaLoraLoss, LossError, Preset, RegularizerConfig, Task};

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

/// The methods by name, without their settings: what a command line or a run file chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum MethodName {
    /// [`Method::Lora`].
    Lora,
    /// [`Method::Pissa`].
    Pissa,
    /// [`Method::Balora`].
    Balora,
    /// [`Method::MonteClora`].
    Monteclora,
}

impl MethodName {
    /// Every method.
    pub const ALL: [Self; 4] = [Self::Lora, Self::Pissa, Self::Balora, Self::Monteclora];

    /// The name (`lora`, `pissa`, `balora`, `monteclora`), as serde and the command line
    /// spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Pissa => "pissa",
            Self::Balora => "balora",
            Self::Monteclora => "monteclora",
        }
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MethodName {
    type Err = LossError;

    fn from_str(name: &str) -> Result<Self, LossError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|m| m.as_str()).collect();
                LossError::InvalidConfig(format!(
                    "unknown method {name:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl Method {
    /// PiSSA's SVD: the full thin SVD for `niter = 0`, else the randomized one with `niter`
    /// power iterations (peft's `pissa_niter_K`).
    pub fn pissa_init(niter: usize) -> InitMode {
        match niter {
            0 => InitMode::Pissa,
            niter => InitMode::PissaFast { niter },
        }
    }

    /// The method `name` with its defaults for `task`: PiSSA with `pissa_niter` power
    /// iterations, BA-LoRA with `preset`'s regularisers (refused where the preset does not
    /// define `task`), MonteCLoRA with the paper's sampler settings.
    pub fn new(
        name: MethodName,
        task: Task,
        pissa_niter: usize,
        preset: Preset,
    ) -> Result<Self, LossError> {
        let init = Self::pissa_init(pissa_niter);
        Ok(match name {
            MethodName::Lora => Self::Lora,
            MethodName::Pissa => Self::Pissa { init },
            MethodName::Balora => Self::Balora {
                init,
                regularizers: RegularizerConfig::preset(preset, task)?,
            },
            MethodName::Monteclora => Self::MonteClora(MonteCloraConfig::new()),
        })
    }

    /// The method's name.
    pub fn name(&self) -> MethodName {
        match self {
            Self::Lora => MethodName::Lora,
            Self::Pissa { .. } => MethodName::Pissa,
            Self::Balora { .. } => MethodName::Balora,
            Self::MonteClora(_) => MethodName::Monteclora,
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
        f.write_str(self.name().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balora_adapters::TargetModules;

    #[test]
    fn each_method_sets_its_init_variant_and_loss() {
        let base = || LoraConfig::new(4, TargetModules::names(["q_proj"]));
        for name in MethodName::ALL {
            let m = Method::new(name, Task::Nlg, 2, Preset::Paper).unwrap();
            assert_eq!(m.name(), name);
            assert_eq!(name.as_str().parse::<MethodName>().unwrap(), name);
            let c = m.adapter_config(base());
            let pissa = matches!(name, MethodName::Pissa | MethodName::Balora);
            assert_eq!(c.init.is_pissa(), pissa, "{name}");
            assert_eq!(
                c.monteclora.is_some(),
                name == MethodName::Monteclora,
                "{name}"
            );
            assert_eq!(
                m.regularizer(10).unwrap().is_some(),
                name == MethodName::Balora,
                "{name}"
            );
        }
        let full = Method::new(MethodName::Pissa, Task::Nlu, 0, Preset::Paper).unwrap();
        assert_eq!(full.adapter_config(base()).init, InitMode::Pissa);
    }

    #[test]
    fn unknown_names_and_undefined_presets_are_refused_with_the_choices() {
        let e = "qlora".parse::<MethodName>().unwrap_err().to_string();
        assert!(e.contains("\"qlora\"") && e.contains("monteclora"), "{e}");
        let e = Method::new(MethodName::Balora, Task::Nlu, 2, Preset::Iclr2026)
            .unwrap_err()
            .to_string();
        assert!(e.contains("iclr2026"), "{e}");
        let json = serde_json::to_string(&MethodName::Monteclora).unwrap();
        assert_eq!(json, "\"monteclora\"");
    }
}
