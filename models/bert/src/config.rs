//! The BERT family's `config.json`.

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
