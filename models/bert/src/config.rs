//! The BERT family's `config.json`.

use balora_model::{ModelConfig, ModelError};
use serde::Deserialize;

/// The fields of a BERT-family `config.json` this implementation reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// `bert` or `roberta` (MiniLM checkpoints say `bert`).
    pub model_type: String,
    /// Vocabulary size V (rows of the word embeddings).
    pub vocab_size: usize,
    /// Width of the hidden states, d_model.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (a divisor of `hidden_size`).
    pub num_attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// `gelu` (erf).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Learned positions.
    pub max_position_embeddings: usize,
    /// Segment vocabulary (RoBERTa: 1).
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Padding id (RoBERTa's positions start after it).
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Class names by id; their count is the number of labels.
    #[serde(default)]
    pub id2label: Option<std::collections::BTreeMap<String, String>>,
    /// Std of freshly initialised head weights.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init() -> f64 {
    0.02
}

impl BertConfig {
    pub(crate) fn is_roberta(&self) -> bool {
        matches!(self.model_type.as_str(), "roberta" | "xlm-roberta")
    }
}

/// Loaded through [`balora_model::load_config`], which checks these dimensions and the memory
/// they imply before the model is allocated.
impl ModelConfig for BertConfig {
    fn dims(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ]
    }

    fn parameters(&self) -> f64 {
        let f = |x: usize| x as f64;
        let (v, d, l, i) = (
            f(self.vocab_size),
            f(self.hidden_size),
            f(self.num_hidden_layers),
            f(self.intermediate_size),
        );
        let (p, t) = (f(self.max_position_embeddings), f(self.type_vocab_size));
        (v + p + t) * d + l * (4.0 * d * d + 2.0 * d * i + 9.0 * d) + d * d
    }

    fn validate(&self) -> Result<(), ModelError> {
        balora_model::positive("layer_norm_eps", self.layer_norm_eps)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::UnsupportedConfig {
                key: "num_attention_heads",
                value: self.num_attention_heads.to_string(),
                expected: "a divisor of hidden_size",
            });
        }
        if !matches!(self.model_type.as_str(), "bert" | "roberta" | "xlm-roberta") {
            return Err(ModelError::UnsupportedConfig {
                key: "model_type",
                value: self.model_type.clone(),
                expected: "bert, roberta or xlm-roberta",
            });
        }
        if self.hidden_act != "gelu" {
            return Err(ModelError::UnsupportedConfig {
                key: "hidden_act",
                value: self.hidden_act.clone(),
                expected: "gelu",
            });
        }
        // RoBERTa's positions start after the padding id: it must leave room for a token
        let first = self.pad_token_id.unwrap_or(1) as usize + 1;
        if self.is_roberta() && first >= self.max_position_embeddings {
            return Err(ModelError::UnsupportedConfig {
                key: "pad_token_id",
                value: first.saturating_sub(1).to_string(),
                expected: "an id below max_position_embeddings - 1 (RoBERTa positions follow it)",
            });
        }
        Ok(())
    }
}
