//! Adapter variants: what a LoRA variant adds to the plain adapter, behind one interface (in
//! the shape of PEFT's `LoraVariant`), so the layer, injection, the trainer and the file format
//! never name a particular variant (docs/methods.md, "MonteCLoRA").

use burn::module::Module;
use burn::tensor::Tensor;

use crate::monteclora::MonteClora;

/// A tensor an adapter contributes to its file, by rank.
#[derive(Debug, Clone)]
pub enum AdapterTensor {
    /// A vector (a variant's per-rank or per-sample parameters).
    Vector(Tensor<1>),
    /// A matrix (the factors).
    Matrix(Tensor<2>),
}

/// The variants of the LoRA adapter. Each one supplies the same four things: its per-step
/// random draw, its change to `lora_A` in a training forward, its loss term and its extra
/// tensors.
///
/// The set is closed on purpose: an adapter is a Burn `Module` (its parameters are visited,
/// saved, moved between devices and differentiated by the derive), and a `Box<dyn Trait>`
/// cannot be one. A new variant is a new arm here, and its state stays private to its own
/// module behind the methods below (docs/methods.md, "MonteCLoRA").
#[derive(Module, Debug)]
pub enum Variant {
    /// MonteCLoRA: a Bayesian Monte-Carlo perturbation of `lora_A` (arXiv 2411.04358).
    MonteClora(MonteClora),
}

impl Variant {
    /// Draw this optimizer step's random inputs for a layer of `in_features` inputs from
    /// `seed` (a function of the run's seed, the step and the layer path).
    pub fn draw(&mut self, in_features: usize, seed: u64) {
        match self {
            Self::MonteClora(mc) => mc.draw(in_features, seed),
        }
    }

    /// Forget the drawn inputs: forwards then use the mean adapter even on an autodiff device.
    pub fn clear(&mut self) {
        match self {
            Self::MonteClora(mc) => mc.set_sample(None),
        }
    }

    /// What a training forward adds to `lora_A` (`[r, in]`); `None` without a draw.
    pub fn perturbation(&self) -> Option<Tensor<2>> {
        match self {
            Self::MonteClora(mc) => mc.perturbation(),
        }
    }

    /// The variant's loss term for the drawn inputs; `None` without a draw.
    pub fn loss(&self) -> Option<Tensor<1>> {
        match self {
            Self::MonteClora(mc) => mc.regularizer(),
        }
    }

    /// Number of trainable parameters the variant adds.
    pub fn num_trainable(&self) -> usize {
        match self {
            Self::MonteClora(mc) => mc.num_trainable(),
        }
    }

    /// The tensors an adapter file carries for the variant, under peft's names relative to
    /// the layer (`lora_monteclora_sampler.std_prior`, …), detached.
    pub fn saved_tensors(&self) -> Vec<(String, AdapterTensor)> {
        match self {
            Self::MonteClora(mc) => {
                let name = |n: &str| format!("lora_monteclora_sampler.{n}");
                vec![
                    (
                        name("std_prior"),
                        AdapterTensor::Vector(mc.std_prior().detach()),
                    ),
                    (
                        name("expert_weights_prior"),
                        AdapterTensor::Vector(mc.expert_weights_prior().detach()),
                    ),
                    (
                        name("gaussian_var_prior"),
                        AdapterTensor::Matrix(mc.last_covariance()),
                    ),
                    (
                        name("expert_weights"),
                        AdapterTensor::Vector(mc.last_weights()),
                    ),
                ]
            }
        }
    }

    /// The MonteCLoRA state, when this is MonteCLoRA (its KL terms, for tests and logging).
    pub fn as_monteclora(&self) -> Option<&MonteClora> {
        match self {
            Self::MonteClora(mc) => Some(mc),
        }
    }
}
