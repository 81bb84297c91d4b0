//! GPT-2's `config.json`.

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
