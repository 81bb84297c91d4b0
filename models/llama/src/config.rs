//! `config.json` of a Llama-family checkpoint (transformers 4.x and 5.x spellings), Gemma
//! included: Gemma is Llama with a GELU-gated MLP, `(1 + w)` RMSNorm weights, embeddings
//! scaled by √hidden and a tied head (docs/methods.md, "Model configs").

use serde::Deserialize;

use balora_kernels::Activation;
use balora_model::{ModelConfig, ModelError};

/// RoPE frequency scaling (`rope_scaling` in transformers 4, `rope_parameters` in 5).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeScaling {
    /// `default`, `linear` or `llama3` (`type` in older configs).
    #[serde(alias = "type", default = "default_rope_type")]
    pub rope_type: String,
    /// Frequency divisor (linear, llama3).
    #[serde(default)]
    pub factor: Option<f64>,
    /// llama3: wavelengths above `original / low_freq_factor` are divided by `factor`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// llama3: wavelengths below `original / high_freq_factor` are kept.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// llama3: the pre-training context length.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// transformers 5 keeps θ here.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

fn default_rope_type() -> String {
    "default".into()
}

/// A token id or a list of them (`eos_token_id` may be either).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// As a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The fields of `config.json` the Llama family needs; the architecture differences
/// (Qwen2's q/k/v bias, Mistral's sliding window, llama3 RoPE, Gemma's activation, norm and
/// embedding scale) are all configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral`, `qwen2` or `gemma`.
    pub model_type: String,
    /// Vocabulary size V (rows of the embeddings and the LM head).
    pub vocab_size: usize,
    /// Width of the hidden states, d_model.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm ε.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ (transformers 4).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (transformers 4).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// RoPE parameters (transformers 5).
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    /// Share the LM head with the input embeddings (absent: transformers' default, true
    /// for Gemma, false for the others).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Llama: bias on q, k, v and o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral/Qwen2 sliding-window size.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2: whether the sliding window is used at all.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Positions the model was trained for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// The MLP's activation: `silu` (Llama, Mistral, Qwen2) or `gelu_pytorch_tanh` (Gemma).
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// Gemma in transformers 4.x: the MLP's activation, taking precedence over `hidden_act`.
    #[serde(default)]
    pub hidden_activation: Option<String>,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Whether this is a Gemma checkpoint.
    pub fn is_gemma(&self) -> bool {
        self.model_type == "gemma"
    }

    /// Whether the LM head is the input embeddings.
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(self.is_gemma())
    }

    /// The MLP activation's name as the config gives it (with transformers' defaults).
    pub fn activation_name(&self) -> &str {
        let given = match self.is_gemma() {
            true => self.hidden_activation.as_ref().or(self.hidden_act.as_ref()),
            false => self.hidden_act.as_ref(),
        };
        given.map_or(
            if self.is_gemma() {
                "gelu_pytorch_tanh"
            } else {
                "silu"
            },
            String::as_str,
        )
    }

    /// The MLP activation.
    pub fn activation(&self) -> Result<Activation, ModelError> {
        match self.activation_name() {
            "silu" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            // Gemma's original releases say `gelu` and mean the tanh approximation, which
            // transformers substitutes
            "gelu" if self.is_gemma() => Ok(Activation::GeluTanh),
            other => Err(ModelError::UnsupportedConfig {
                key: "hidden_act",
                value: other.to_string(),
                expected: "silu or gelu_pytorch_tanh",
            }),
        }
    }

    /// What the checkpoint's RMSNorm weights are offset by: Gemma stores `w` and scales by
    /// `1 + w`.
    pub fn norm_offset(&self) -> f64 {
        if self.is_gemma() { 1.0 } else { 0.0 }
    }

    /// The factor the token embeddings are scaled by (Gemma: √hidden).
    pub fn embed_scale(&self) -> Option<f64> {
        self.is_gemma().then(|| (self.hidden_size as f64).sqrt())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Whether q/k/v carry a bias (Qwen2 always; Llama when `attention_bias`).
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    /// Whether o_proj carries a bias (Llama's and Gemma's `attention_bias` only).
    pub fn o_bias(&self) -> bool {
        matches!(self.model_type.as_str(), "llama" | "gemma") && self.attention_bias
    }

    /// The sliding window in effect, if any.
    pub fn window(&self) -> Option<usize> {
        match self.model_type.as_str() {
            "qwen2" if self.use_sliding_window != Some(true) => None,
            _ => self.sliding_window,
        }
    }

    /// The RoPE scaling in effect (either spelling).
    pub fn rope(&self) -> Option<&RopeScaling> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }

    /// θ (either spelling; 10000 by default).
    pub fn theta(&self) -> f64 {
        self.rope()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// End-of-sequence ids.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }
}

/// Loaded through [`balora_model::load_config`], which checks these dimensions and the memory
/// they imply before the model is allocated.
impl ModelConfig for LlamaConfig {
    fn dims(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim.unwrap_or(self.hidden_size)),
        ]
    }

    fn parameters(&self) -> f64 {
        let f = |x: usize| x as f64;
        let (v, d, i, l) = (
            f(self.vocab_size),
            f(self.hidden_size),
            f(self.intermediate_size),
            f(self.num_hidden_layers),
        );
        let (h, kv) = (f(self.num_attention_heads), f(self.kv_heads()));
        let hd = self.head_dim.map_or(d / h, f);
        let embeddings = v * d * if self.tied() { 1.0 } else { 2.0 };
        let layer = d * hd * (2.0 * h + 2.0 * kv) + 3.0 * d * i + 2.0 * d;
        embeddings + l * layer + d
    }

    fn validate(&self) -> Result<(), ModelError> {
        balora_model::positive("rms_norm_eps", self.rms_norm_eps)?;
        if !matches!(
            self.model_type.as_str(),
            "llama" | "mistral" | "qwen2" | "gemma"
        ) {
            return Err(ModelError::UnsupportedConfig {
                key: "model_type",
                value: self.model_type.clone(),
                expected: "llama, mistral, qwen2 or gemma",
            });
        }
        self.activation()?;
        if let Some(r) = self.rope()
            && !matches!(r.rope_type.as_str(), "default" | "linear" | "llama3")
        {
            return Err(ModelError::UnsupportedConfig {
                key: "rope_type",
                value: r.rope_type.clone(),
                expected: "default, linear or llama3",
            });
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::UnsupportedConfig {
                key: "num_attention_heads",
                value: self.num_attention_heads.to_string(),
                expected: "a divisor of hidden_size (or an explicit head_dim)",
            });
        }
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads);
        if !head_dim.is_multiple_of(2) {
            return Err(ModelError::UnsupportedConfig {
                key: "head_dim",
                value: head_dim.to_string(),
                expected: "an even head dimension (rotary embeddings rotate pairs)",
            });
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(ModelError::UnsupportedConfig {
                key: "num_key_value_heads",
                value: self.kv_heads().to_string(),
                expected: "a divisor of num_attention_heads",
            });
        }
        Ok(())
    }
}
