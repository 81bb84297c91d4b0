//! # balora
//!
//! Parameter-efficient fine-tuning of language models on [Burn](https://burn.dev): LoRA, PiSSA,
//! BA-LoRA and MonteCLoRA, defined once and run on every backend (`flex` CPU, `wgpu`, `cuda`),
//! chosen at run time by [`Device`](burn::tensor::Device).
//!
//! This facade re-exports the public API of the workspace crates:
//! * [`adapters`]: [`LoraLinear`](adapters::LoraLinear), PiSSA initialisation, targeting,
//!   injection, the [teacher](adapters::teacher) as a model value;
//! * [`losses`]: task losses and BA-LoRA's regularisers with the `paper` / `iclr2026` presets;
//! * [`kernels`]: the fused CPU kernels (vocabulary terms, LoRA linear, GEMM, activations)
//!   with tensor-op fallbacks on other backends;
//! * [`model`]: the model/trainer seam ([`model::CausalLm`], [`model::SequenceClassifier`]);
//! * [`train`]: datasets, the [`Trainer`](train::Trainer), checkpoints, metrics and evaluation;
//! * [`io`]: adapter files in Hugging Face PEFT's own format;
//! * [`models`]: Llama/Mistral/Qwen2, GPT-2 and BERT/RoBERTa from Hugging Face checkpoints;
//!   [`auto`] picks one from `config.json`'s `model_type`, with peft's default targets;
//! * [`finetune`]: a whole run from a [`FinetuneConfig`](finetune::FinetuneConfig) (what the
//!   `finetune` example runs);
//! * [`experiment`]: grids of methods × seeds × learning rates, summarised over seeds;
//! * [`device`]: `--device cpu|wgpu|cuda[:N]` parsing;
//! * [`alloc`]: an allocator setting for training binaries: reuse the large blocks every step
//!   frees and allocates again instead of faulting in fresh pages.

#![warn(missing_docs)]

pub mod alloc;
pub mod auto;
pub mod device;
pub mod experiment;
pub mod finetune;

pub use balora_adapters as adapters;
pub use balora_io as io;
pub use balora_kernels as kernels;
pub use balora_losses as losses;
pub use balora_model as model;
pub use balora_train as train;
pub use burn;

/// The architectures, one crate each, with Hugging Face key names.
pub mod models {
    pub use balora_bert as bert;
    pub use balora_deberta as deberta;
    pub use balora_gpt2 as gpt2;
    pub use balora_llama as llama;
}
pub use device::{DeviceError, parse_device};
