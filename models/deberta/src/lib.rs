//! DeBERTa-v2 and v3 encoders from Hugging Face checkpoints (`model_type` `deberta-v2`) with
//! transformers' sequence-classification head.
//!
//! Disentangled attention: beside the content score `q·kᵀ`, each query–key pair adds a
//! content-to-position score (the query against the relative distance's embedding as a key)
//! and a position-to-content score (the key against it as a query), the distances
//! log-bucketed beyond `position_buckets / 2`; v3 projects the relative embeddings with the
//! content `query_proj` / `key_proj` (`share_att_key`) after a LayerNorm, and has no absolute
//! positions or token types (docs/methods.md, "DeBERTa"). The classifier path of transformers
//! has no enhanced mask decoder: `ContextPooler` (`gelu(dense(h_CLS))`) then `classifier`.
//!
//! The projections `query_proj`, `key_proj`, `value_proj` (v2's `pos_key_proj` /
//! `pos_query_proj`) and the `dense` layers are [`LoraLinear`](balora_adapters::LoraLinear)
//! slots with the module paths of transformers' `DebertaV2ForSequenceClassification`
//! (`deberta.encoder.layer.0.attention.self.query_proj`), so adapters move both ways with
//! peft. Pretrained DeBERTa checkpoints carry no pooler: the pooler and the classifier are the
//! head, drawn from the run's seed and trained fully (`modules_to_save = ["pooler",
//! "classifier"]`).

#![warn(missing_docs)]

mod config;
mod model;
mod relative;

use std::path::Path;

use balora_io::{HfCheckpoint, LoadOptions};
use balora_model::ModelError;
use burn::module::Module;
use burn::tensor::{DType, Device};

pub use config::DebertaV2Config;
pub use model::{
    ContextPooler, DebertaV2Attention, DebertaV2Embeddings, DebertaV2Encoder,
    DebertaV2ForSequenceClassification, DebertaV2Intermediate, DebertaV2Layer, DebertaV2Model,
    DenseNorm, DisentangledSelfAttention,
};
pub use relative::{RelativeRows, log_bucket, relative_position};

impl DebertaV2ForSequenceClassification {
    /// Load an encoder checkpoint with a classification head of `num_labels` outputs. A pooler
    /// or classifier present in the checkpoint (`pooler.*`, `classifier.*`) is loaded;
    /// otherwise it is freshly initialised (N(0, initializer_range), zero bias), like
    /// transformers, from `seed`. `num_labels` `None` takes the checkpoint's `id2label` count
    /// (2 if absent). The encoder is frozen; the head is trainable.
    pub fn from_pretrained(
        dir: &Path,
        num_labels: Option<usize>,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let checkpoint = HfCheckpoint::open(dir)?;
        let config: DebertaV2Config = balora_model::load_config(&checkpoint, dtype)?;
        let labels = balora_model::head::label_count(num_labels, config.id2label.as_ref())?;
        let mut model = Self::init(&config, labels, seed, device, dtype)?;
        model.deberta = model.deberta.freeze();
        let mut options = LoadOptions::new(dtype)
            .with_remap(r"\.LayerNorm\.", ".layer_norm.")
            .with_remap(r"\.attention\.self\.", ".attention.self_attention.");
        // a bare `DebertaV2Model` saves its keys without the `deberta.` attribute
        if !checkpoint.has_prefix("deberta.")? {
            options = options.with_remap(r"^(embeddings|encoder)\.", "deberta.$1.");
        }
        for head in ["pooler.", "classifier."] {
            if !checkpoint.has_prefix(head)? {
                options
                    .optional
                    .push(format!(r"{}.*", head.replace('.', r"\.")));
            }
        }
        checkpoint.load_into(&mut model, &options)?;
        // a head read from a half-precision checkpoint trains in f32, like a fresh one
        let head_dtype = balora_adapters::training_dtype(dtype);
        model.pooler.dense = model.pooler.dense.cast(head_dtype);
        model.classifier = model.classifier.cast(head_dtype);
        Ok(model)
    }
}
