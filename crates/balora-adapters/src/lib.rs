//! LoRA-family adapters for Burn, defined once for every backend.
//!
//! * [`LoraLinear`]: frozen base weight + optional trainable low-rank update, applied on the
//!   activation side (`x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ`), with merge/unmerge.
//! * [`teacher`]: BA-LoRA's frozen reference model as a model value — a clone sharing every
//!   frozen tensor, with each adapter replaced by its initial factors — so no model code knows
//!   the method and no second copy of the weights is held.
//! * Initialisation: peft's Kaiming/zero ([`InitMode::Gaussian`]), PiSSA with a full thin SVD
//!   ([`InitMode::Pissa`]) or a randomized one ([`InitMode::PissaFast`]); the SVD runs on the
//!   host with faer.
//! * [MonteCLoRA](monteclora): a Bayesian Monte-Carlo perturbation of `lora_A`, as an adapter
//!   [`Variant`] (`LoraConfig::monteclora`): the layer, injection and the trainer only see the
//!   variant interface (per-step draw, perturbation of A, loss term, extra tensors).
//! * Targeting with peft's `target_modules` semantics and injection into any model that lists
//!   its linear layers through [`AdapterSlots`].
//!
//! The crate knows nothing about files, models or training loops.
//!
//! ```
//! use balora_adapters::{LoraConfig, LoraLinear, TargetModules, InitMode};
//! use burn::tensor::{Device, Tensor, Distribution};
//!
//! let device = Device::default().autodiff();
//! let w = Tensor::<2>::random([16, 8], Distribution::Normal(0.0, 1.0), &device);
//! let mut layer = LoraLinear::new(w, None);
//! let config = LoraConfig::new(4, TargetModules::names(["q_proj"])).with_init(InitMode::Pissa);
//! layer.attach("q_proj", &config).unwrap();
//! let x = Tensor::<2>::ones([2, 8], &device);
//! let y = layer.forward(x);          // = x·Wᵀ at initialisation (PiSSA preserves W)
//! assert_eq!(y.dims(), [2, 16]);
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod init;
mod layer;
pub mod monteclora;
mod slots;
mod special;
mod svd;
mod variant;

pub use balora_kernels::training_dtype;
pub use config::{InitMode, LoraConfig, TargetMatcher, TargetModules, pattern_value};
pub use error::AdapterError;
pub use layer::{InitialAdapter, LoraAdapter, LoraLinear, frozen_linear};
pub use monteclora::{MonteClora, MonteCloraConfig, MonteCloraSample, MonteCloraTerms};
pub use slots::{
    AdapterSlots, InjectionReport, SavedParam, SavedParamMut, clear_variants, draw_variants,
    inject, merge_all, teacher, trainable_adapter_params, unmerge_all, variant_loss,
};
pub use variant::{AdapterTensor, Variant};
