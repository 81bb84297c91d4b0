//! GPT-2 from Hugging Face checkpoints: learned positions, pre-norm blocks, fused `c_attn`,
//! tanh-approximated GELU, LM head tied to the token embeddings.
//!
//! The checkpoint stores `Conv1D` weights as `[in, out]`; they are transposed while loading
//! into `[out, in]` [`LoraLinear`](balora_adapters::LoraLinear) slots, so adapters on `c_attn`, `c_proj` and `c_fc` have
//! peft's shapes (`lora_A [r, in]`, `lora_B [out, r]`; peft's `fan_in_fan_out` concerns only
//! the base weight).

#![warn(missing_docs)]

mod config;
mod model;

use std::path::Path;

use balora_io::{HfCheckpoint, LoadOptions};
use balora_model::ModelError;
use burn::tensor::{DType, Device};

pub use config::Gpt2Config;
pub use model::{Gpt2Attention, Gpt2Block, Gpt2LmHeadModel, Gpt2Mlp, Gpt2Model};

impl Gpt2LmHeadModel {
    /// Load a GPT-2 checkpoint directory onto `device` in `dtype`, frozen.
    pub fn from_pretrained(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let checkpoint = HfCheckpoint::open(dir)?;
        let config: Gpt2Config = balora_model::load_config(&checkpoint, dtype)?;
        let mut model = Self::init(&config, device, dtype);
        // Some exports carry the bare `GPT2Model` keys (`h.0…`) instead of `transformer.h.0…`.
        let options = LoadOptions::new(dtype)
            .with_remap(r"^(wte|wpe|h|ln_f)\.", "transformer.$1.")
            .with_transposed("c_attn")
            .with_transposed("c_proj")
            .with_transposed("c_fc");
        checkpoint.load_into(&mut model, &options)?;
        Ok(model)
    }
}
