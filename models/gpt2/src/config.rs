//! GPT-2's `config.json`.

use balora_model::{ModelConfig, ModelError};
use serde::Deserialize;

/// The fields of a GPT-2 `config.json` this implementation reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gpt2Config {
    /// Must be `gpt2`.
    pub model_type: String,
    /// Vocabulary size V (rows of `wte`, also the tied LM head).
    pub vocab_size: usize,
    /// Learned positions.
    pub n_positions: usize,
    /// Width of the hidden states, d_model.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block (a divisor of `n_embd`).
    pub n_head: usize,
    /// MLP width (default 4·n_embd).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// `gelu_new` (tanh approximation) is what GPT-2 uses.
    #[serde(default = "default_act")]
    pub activation_function: String,
    /// LayerNorm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// End-of-text id (50256 in GPT-2's vocabulary).
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}

/// Loaded through [`balora_model::load_config`], which checks these dimensions and the memory
/// they imply before the model is allocated.
impl ModelConfig for Gpt2Config {
    fn dims(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            (
                "n_inner",
                self.n_inner.unwrap_or(self.n_embd.saturating_mul(4)),
            ),
        ]
    }

    fn parameters(&self) -> f64 {
        let f = |x: usize| x as f64;
        let (v, p, d, l) = (
            f(self.vocab_size),
            f(self.n_positions),
            f(self.n_embd),
            f(self.n_layer),
        );
        let i = self.n_inner.map_or(4.0 * d, f);
        (v + p) * d + l * (4.0 * d * d + 2.0 * d * i + 9.0 * d)
    }

    fn validate(&self) -> Result<(), ModelError> {
        balora_model::positive("layer_norm_epsilon", self.layer_norm_epsilon)?;
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::UnsupportedConfig {
                key: "n_head",
                value: self.n_head.to_string(),
                expected: "a divisor of n_embd",
            });
        }
        if self.model_type != "gpt2" {
            return Err(ModelError::UnsupportedConfig {
                key: "model_type",
                value: self.model_type.clone(),
                expected: "gpt2",
            });
        }
        if self.activation_function != "gelu_new" {
            return Err(ModelError::UnsupportedConfig {
                key: "activation_function",
                value: self.activation_function.clone(),
                expected: "gelu_new",
            });
        }
        Ok(())
    }
}
