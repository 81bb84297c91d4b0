//! # balora
//!
//! Parameter-efficient fine-tuning of language models on [Burn](https://burn.dev): LoRA, PiSSA,
//! BA-LoRA and MonteCLoRA, defined once and run on every backend (`flex` CPU, `wgpu`, `cuda`),
//! chosen at run time by [`Device`](burn::tensor::Device).
//!
//! This facade re-exports the public API of the workspace crates:
//! * [`adapters`]: [`LoraLinear`](adapters::LoraLinear), PiSSA initialisation, targeting,
//!   injection, teacher mode;
//! * [`losses`]: task losses and BA-LoRA's regularisers with the `paper` / `iclr2026` presets;
//! * [`kernels`]: the fused CPU kernels (vocabulary terms, LoRA linear, GEMM, activations)
//!   with tensor-op fallbacks on other backends;
//! * [`model`]: the model/trainer seam ([`model::CausalLm`], [`model::SequenceClassifier`]);
//! * [`train`]: datasets, the step loop, checkpoints, metrics and evaluation;
//! * [`io`]: adapter files in Hugging Face PEFT's own format;
//! * [`device`]: `--device cpu|wgpu|cuda[:N]` parsing;
//! * [`alloc`]: an allocator setting for training binaries: reuse the large blocks every step
//!   frees and allocates again instead of faulting in fresh pages.

pub mod alloc;
pub mod device;

pub use balora_adapters as adapters;
pub use balora_io as io;
pub use balora_kernels as kernels;
pub use balora_losses as losses;
pub use balora_model as model;
pub use balora_train as train;
pub use burn;
pub use device::{DeviceError, parse_device};
