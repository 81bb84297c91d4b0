//! balora's trainer: datasets and collation, an own step loop with AdamW over the adapter
//! parameters only, LR schedules, global-norm clipping, BA-LoRA and MonteCLoRA terms,
//! atomic exact-resume checkpoints, JSONL metrics, loss plots and evaluation metrics.
//!
//! It knows no model internals: models are [`balora_model::CausalLm`] or
//! [`balora_model::SequenceClassifier`] with [`balora_adapters::AdapterSlots`].

pub mod checkpoint;
pub mod data;
mod error;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use error::TrainError;
pub use trainer::{LoopConfig, NlgObjective, NluObjective, Objective, RunSummary, Teacher, train};
