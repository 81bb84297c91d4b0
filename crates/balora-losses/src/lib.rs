//! Task losses and BA-LoRA's regularisers, defined once on Burn tensors for every backend.
//!
//! Tensors in, scalar loss out: nothing here knows about files, models or adapters.
//!
//! * [`task`]: Hugging Face's shifted causal-LM cross-entropy (ignore index −100) and
//!   classification losses.
//! * [`nlu`] / [`nlg`]: the three BA-LoRA regularisers — consistency with the pretrained
//!   model's logits, diversity, and the SVD term — in their NLU (`[B, C]`) and NLG
//!   (`[B, T, V]`) forms, every log-probability from `log_softmax`.
//! * [`RegularizerConfig`]: every reduction, mask, temperature, k and λ schedule as a field;
//!   presets [`RegularizerConfig::paper`] (default) and [`RegularizerConfig::iclr2026`].
//! * [`svd`]: differentiable singular values (detached host decomposition + tensor-op
//!   recomputation: exact gradients with no custom backward), randomized for large problems.
//! * [`BaLoraLoss`]: the weighted sum for one step, with per-term reporting.
//!
//! ```
//! use balora_losses::{BaLoraLoss, RegularizerConfig, Task, task::causal_lm_loss};
//! use burn::tensor::{Device, Tensor, Distribution};
//!
//! let device = Device::flex().autodiff();
//! let student = Tensor::<3>::random([2, 4, 10], Distribution::Normal(0., 1.), &device).require_grad();
//! let labels = [-100, 3, 4, 5, -100, -100, 7, 1];
//! let loss = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg), 100).unwrap();
//! let task = causal_lm_loss(student.clone(), &labels).unwrap();
//! let out = loss
//!     .nlg(0, task, student.clone(), &labels, || student.clone().detach())
//!     .unwrap();
//! let _grads = out.loss.backward();
//! assert!(out.terms.consistency.is_some() && out.terms.svd.is_some());
//! ```

#![warn(missing_docs)]

mod balora;
mod config;
mod error;
mod mask;
pub mod nlg;
pub mod nlu;
mod objective;
mod schedule;
pub mod svd;
pub mod task;

pub use balora::{BaLoraLoss, LossOutput, Terms};
pub use config::{
    KlReduction, Lambdas, MaskMode, Preset, RegularizerConfig, SvdMode, SvdObjective, Task,
};
pub use error::LossError;
pub use mask::{IGNORE_INDEX, TokenMask};
pub use schedule::{AdaptiveLambda, Schedule};
