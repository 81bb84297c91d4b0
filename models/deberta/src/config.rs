//! DeBERTa-v2/v3's `config.json` (`model_type` `deberta-v2`).

use balora_model::{ModelConfig, ModelError};
use serde::{Deserialize, Deserializer};

/// The fields of a DeBERTa-v2/v3 `config.json` this implementation reads. Defaults are
/// transformers' `DebertaV2Config` defaults, so a file that omits a key means what it means
/// there.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DebertaV2Config {
    /// `deberta-v2` (DeBERTa-v2 and v3 checkpoints both say so).
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
    /// The MLP's activation: `gelu` (erf).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Absolute positions: the span of relative positions when `max_relative_positions` < 1,
    /// and learned position embeddings when `position_biased_input`.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Segment vocabulary (0 in DeBERTa-v3: no token-type embeddings).
    #[serde(default)]
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Whether attention adds the disentangled relative-position scores.
    #[serde(default)]
    pub relative_attention: bool,
    /// Largest relative distance before clamping (< 1: `max_position_embeddings`).
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    /// Log-bucketed relative positions: number of buckets each side (< 1: none).
    #[serde(default = "minus_one")]
    pub position_buckets: i64,
    /// The disentangled terms: `c2p` (content → position), `p2c` (position → content); a
    /// `"p2c|c2p"` string or a list in the file.
    #[serde(default, deserialize_with = "att_types")]
    pub pos_att_type: Vec<String>,
    /// Position keys and queries come from the content `key_proj` / `query_proj` (v3) rather
    /// than separate `pos_key_proj` / `pos_query_proj` (v2).
    #[serde(default)]
    pub share_att_key: bool,
    /// `layer_norm` (v3): the relative embeddings pass the encoder's LayerNorm first.
    #[serde(default = "default_norm_rel")]
    pub norm_rel_ebd: String,
    /// Learned absolute positions added to the input embeddings (false in v3).
    #[serde(default = "yes")]
    pub position_biased_input: bool,
    /// Word-embedding width when it differs from `hidden_size` (then `embed_proj` maps it).
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// Per-head width (transformers allows it to differ from hidden / heads).
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    /// Width of the `ContextPooler` (transformers: `hidden_size`).
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    /// The pooler's activation: `gelu`.
    #[serde(default = "default_act")]
    pub pooler_hidden_act: String,
    /// DeBERTa-v2-xlarge's convolution beside the first layer (not implemented: must be 0).
    #[serde(default)]
    pub conv_kernel_size: usize,
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
fn default_positions() -> usize {
    512
}
fn default_eps() -> f64 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn default_norm_rel() -> String {
    "none".into()
}
fn yes() -> bool {
    true
}
fn default_init() -> f64 {
    0.02
}

/// `"p2c|c2p"`, `["p2c", "c2p"]` or null, as transformers accepts it (lower-cased, trimmed).
fn att_types<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Types {
        Joined(String),
        List(Vec<String>),
    }
    Ok(match Option::<Types>::deserialize(d)? {
        None => Vec::new(),
        Some(Types::Joined(s)) => s.split('|').map(|t| t.trim().to_lowercase()).collect(),
        Some(Types::List(l)) => l.into_iter().map(|t| t.trim().to_lowercase()).collect(),
    })
}

impl DebertaV2Config {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.attention_head_size
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Word-embedding width.
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// Whether the content-to-position term is on.
    pub fn c2p(&self) -> bool {
        self.relative_attention && self.pos_att_type.iter().any(|t| t == "c2p")
    }

    /// Whether the position-to-content term is on.
    pub fn p2c(&self) -> bool {
        self.relative_attention && self.pos_att_type.iter().any(|t| t == "p2c")
    }

    /// Largest relative distance (`max_relative_positions`, or the absolute span).
    pub fn max_relative(&self) -> usize {
        match usize::try_from(self.max_relative_positions) {
            Ok(m) if m >= 1 => m,
            _ => self.max_position_embeddings,
        }
    }

    /// Buckets each side, when relative positions are log-bucketed.
    pub fn buckets(&self) -> Option<usize> {
        usize::try_from(self.position_buckets)
            .ok()
            .filter(|&b| b > 0)
    }

    /// `S`: relative positions map to rows `0..2S` of the relative embeddings.
    pub fn attention_span(&self) -> usize {
        self.buckets().unwrap_or_else(|| self.max_relative())
    }

    /// Whether the relative embeddings pass the encoder's LayerNorm.
    pub fn norm_relative(&self) -> bool {
        self.norm_rel_ebd
            .split('|')
            .any(|t| t.trim().eq_ignore_ascii_case("layer_norm"))
    }
}

/// Loaded through [`balora_model::load_config`], which checks these dimensions and the memory
/// they imply before the model is allocated.
impl ModelConfig for DebertaV2Config {
    fn dims(&self) -> Vec<(&'static str, usize)> {
        let mut dims = vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (key, v) in [
            ("embedding_size", self.embedding_size),
            ("attention_head_size", self.attention_head_size),
            ("pooler_hidden_size", self.pooler_hidden_size),
        ] {
            dims.extend(v.map(|v| (key, v)));
        }
        dims
    }

    fn parameters(&self) -> f64 {
        let f = |x: usize| x as f64;
        let (d, l, i) = (
            f(self.hidden_size),
            f(self.num_hidden_layers),
            f(self.intermediate_size),
        );
        let e = f(self.embedding_width());
        let a = f(self.num_attention_heads * self.head_dim());
        let positions = if self.position_biased_input {
            f(self.max_position_embeddings)
        } else {
            0.0
        };
        let relative = if self.relative_attention {
            2.0 * f(self.attention_span()) * d
        } else {
            0.0
        };
        (f(self.vocab_size) + positions + f(self.type_vocab_size)) * e
            + relative
            + l * (4.0 * a * d + 2.0 * d * i + 9.0 * d)
            + d * d
    }

    fn validate(&self) -> Result<(), ModelError> {
        let unsupported = |key, value: String, expected| {
            Err(ModelError::UnsupportedConfig {
                key,
                value,
                expected,
            })
        };
        balora_model::positive("layer_norm_eps", self.layer_norm_eps)?;
        if self.model_type != "deberta-v2" {
            return unsupported("model_type", self.model_type.clone(), "deberta-v2");
        }
        if self.attention_head_size.is_none()
            && !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return unsupported(
                "num_attention_heads",
                self.num_attention_heads.to_string(),
                "a divisor of hidden_size",
            );
        }
        for (key, act) in [
            ("hidden_act", &self.hidden_act),
            ("pooler_hidden_act", &self.pooler_hidden_act),
        ] {
            if act != "gelu" {
                return unsupported(key, act.clone(), "gelu");
            }
        }
        if let Some(t) = self
            .pos_att_type
            .iter()
            .find(|t| !matches!(t.as_str(), "c2p" | "p2c"))
        {
            return unsupported("pos_att_type", t.clone(), "c2p and/or p2c");
        }
        if self.conv_kernel_size > 0 {
            return unsupported(
                "conv_kernel_size",
                self.conv_kernel_size.to_string(),
                "0 (DeBERTa-v2-xlarge's convolution layer is not implemented)",
            );
        }
        // transformers' ContextPooler feeds the classifier a hidden_size-wide vector
        if self
            .pooler_hidden_size
            .is_some_and(|p| p != self.hidden_size)
        {
            return unsupported(
                "pooler_hidden_size",
                format!("{:?}", self.pooler_hidden_size),
                "hidden_size",
            );
        }
        // the log buckets divide by log((max - 1) / mid): it must exceed one
        if let Some(b) = self.buckets()
            && (b < 2 || self.max_relative() <= b / 2 + 1)
        {
            return unsupported(
                "position_buckets",
                b.to_string(),
                "at least 2, with max_relative_positions above position_buckets / 2 + 1",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> DebertaV2Config {
        serde_json::from_str(&format!(
            r#"{{"model_type": "deberta-v2", "vocab_size": 128, "hidden_size": 32,
                "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64
                {extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn v3_settings_read_as_transformers_reads_them() {
        let c = parse(
            r#", "relative_attention": true, "pos_att_type": "p2c|c2p", "share_att_key": true,
               "position_buckets": 256, "norm_rel_ebd": "layer_norm",
               "position_biased_input": false, "max_relative_positions": -1"#,
        );
        assert!(c.c2p() && c.p2c() && c.norm_relative() && !c.position_biased_input);
        assert_eq!((c.attention_span(), c.max_relative()), (256, 512));
        assert_eq!(c.layer_norm_eps, 1e-7);
        c.validate().unwrap();
        let listed = parse(r#", "relative_attention": true, "pos_att_type": ["C2P"]"#);
        assert!(listed.c2p() && !listed.p2c());
        assert_eq!(listed.attention_span(), 512);
        let plain = parse("");
        assert!(!plain.c2p() && !plain.p2c() && plain.pos_att_type.is_empty());
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        for (extra, key) in [
            (r#", "pos_att_type": "p2p""#, "pos_att_type"),
            (r#", "conv_kernel_size": 3"#, "conv_kernel_size"),
            (r#", "hidden_act": "relu""#, "hidden_act"),
            (r#", "pooler_hidden_size": 16"#, "pooler_hidden_size"),
            (
                r#", "position_buckets": 8, "max_relative_positions": 5"#,
                "position_buckets",
            ),
            (r#", "layer_norm_eps": 0.0"#, "layer_norm_eps"),
        ] {
            let e = parse(extra).validate().unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }
}
