//! Llama-family causal language models from Hugging Face checkpoints: Llama 2/3, SmolLM/SmolLM2,
//! Mistral, Qwen2 and Gemma, through `config.json` alone (GQA, RoPE θ and llama3 scaling,
//! RMSNorm ε, SiLU-gated MLP, tied embeddings, Qwen2's q/k/v bias, Mistral's sliding window;
//! Gemma's GELU-tanh-gated MLP, `(1 + w)` RMSNorm, √hidden embedding scale, `head_dim`
//! independent of the width).
//!
//! Every projection is a [`LoraLinear`](balora_adapters::LoraLinear) slot named as peft names
//! it (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`).
//!
//! ```no_run
//! use balora_llama::LlamaForCausalLM;
//! use balora_model::GenerationConfig;
//! use burn::tensor::{DType, Device};
//!
//! let dir = std::path::Path::new(".cache/assets/models/SmolLM2-135M-Instruct");
//! let model = LlamaForCausalLM::from_pretrained(dir, &Device::flex(), DType::F32).unwrap();
//! let ids = model.generate(&[1, 4093, 198], &GenerationConfig::greedy(16, vec![2]), true).unwrap();
//! ```

#![warn(missing_docs)]

mod config;
mod model;
mod rope;

use std::path::Path;

use balora_io::{HfCheckpoint, LoadOptions};
use balora_model::{GenerationConfig, ModelError, TokenBatch, generation};
use burn::tensor::{DType, Device};

pub use config::{LlamaConfig, RopeScaling, TokenIds};
pub use model::{Attention, DecoderLayer, KvCache, LlamaForCausalLM, LlamaModel, Mlp};

impl LlamaForCausalLM {
    /// Load `config.json` and the (possibly sharded) safetensors of `dir` onto `device`,
    /// casting weights to `dtype`. All weights are frozen; attach adapters afterwards.
    pub fn from_pretrained(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let checkpoint = HfCheckpoint::open(dir)?;
        let config: LlamaConfig = balora_model::load_config(&checkpoint, dtype)?;
        let mut model = Self::init(&config, device, dtype);
        checkpoint.load_into(&mut model, &LoadOptions::new(dtype))?;
        let by = config.norm_offset();
        Ok(if by == 0.0 {
            model
        } else {
            model.offset_norms(by)
        })
    }

    /// Generate after `prompt` until a stop token or `config.max_new_tokens`; returns only the
    /// new tokens (the stop token included). With `use_cache` each step feeds one token and
    /// reuses the keys and values of the past; without it every step re-runs the whole
    /// sequence (a reference for the cache).
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &GenerationConfig,
        use_cache: bool,
    ) -> Result<Vec<u32>, ModelError> {
        let mut cache = KvCache::default();
        generation::generate(prompt, config, |sequence, new| {
            if use_cache {
                let batch = TokenBatch::right_padded(&[new.to_vec()], 0);
                generation::last_row(self.forward(&batch, Some(&mut cache)))
            } else {
                let batch = TokenBatch::right_padded(&[sequence.to_vec()], 0);
                generation::last_row(self.forward(&batch, None))
            }
        })
    }

    /// [`generate`](Self::generate) for several prompts in one batch with the KV cache: the
    /// prompts left-padded with `pad_id`, one column per step, each row stopping on its own
    /// ([`generation::generate_batch`]). Each row's tokens are those of `generate` on its
    /// prompt alone.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        pad_id: u32,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let mut cache = KvCache::default();
        generation::generate_batch(prompts, config, pad_id, |batch| {
            generation::last_rows(self.forward(batch, Some(&mut cache)))
        })
    }
}
