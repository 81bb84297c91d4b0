//! balora's trainer: datasets and collation, an own step loop with AdamW over the adapter
//! parameters only, LR schedules, global-norm clipping, BA-LoRA and MonteCLoRA terms,
//! atomic exact-resume checkpoints, JSONL metrics, loss plots and evaluation metrics.
//!
//! It knows no model internals: models are [`balora_model::CausalLm`] or
//! [`balora_model::SequenceClassifier`] with [`balora_adapters::AdapterSlots`].

#![warn(missing_docs)]

mod checkpoint;
pub mod data;
mod error;
pub mod eval;
#[doc(hidden)]
pub mod fault;
mod method;
pub mod metrics;
mod objective;
pub mod observer;
pub mod optim;
mod paths;
pub mod schedule;
mod trainer;

pub use checkpoint::LoopState;
pub use error::TrainError;
pub use method::{Method, MethodName};
pub use objective::{NlgObjective, NluObjective, Objective};
pub use observer::Observer;
pub use optim::{TorchAdamW, TorchAdamWConfig};
pub use trainer::{LoopConfig, RunSummary, Trainer, create_output};
