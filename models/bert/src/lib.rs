//! BERT-family encoders from Hugging Face checkpoints — BERT, RoBERTa and MiniLM — with a
//! sequence-classification head and a pooled feature output.
//!
//! Absolute learned positions (RoBERTa's start after the padding id), token types,
//! post-norm LayerNorm blocks, exact (erf) GELU. The projections `query`, `key`, `value` and
//! the `dense` layers are [`LoraLinear`](balora_adapters::LoraLinear) slots with the module paths of transformers'
//! `BertForSequenceClassification` / `RobertaForSequenceClassification`
//! (`bert.encoder.layer.0.attention.self.query`, `roberta.…`) whatever prefix the checkpoint's
//! keys carry (none for a bare encoder such as all-MiniLM-L6-v2), so adapters move both ways
//! with peft. The head is peft's `modules_to_save = ["classifier"]`.

#![warn(missing_docs)]

mod config;
mod model;

use std::path::Path;

use balora_io::{HfCheckpoint, LoadOptions};
use balora_model::ModelError;
use burn::module::Module;
use burn::tensor::{DType, Device};

pub use config::BertConfig;
pub use model::{
    BertAttention, BertEmbeddings, BertEncoder, BertForSequenceClassification, BertIntermediate,
    BertLayer, BertModel, BertPooler, BertSelfAttention, ClassificationHead, DenseNorm, Pooling,
};

impl BertForSequenceClassification {
    /// Load an encoder checkpoint with a classification head of `num_labels` outputs. A head
    /// present in the checkpoint (`classifier.*`) is loaded; otherwise it is freshly
    /// initialised (N(0, initializer_range), zero bias), like transformers, from `seed` (a
    /// run passes its own seed, so the head is part of what the seed reproduces).
    /// `num_labels` `None` takes the checkpoint's `id2label` count (2 if absent).
    pub fn from_pretrained(
        dir: &Path,
        num_labels: Option<usize>,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let checkpoint = HfCheckpoint::open(dir)?;
        let config: BertConfig = balora_model::load_config(&checkpoint, dtype)?;
        let labels = balora_model::head::label_count(num_labels, config.id2label.as_ref())?;
        let prefix = detect_prefix(&checkpoint)?;
        let roberta = config.is_roberta();
        let pooler = !roberta;
        let head = ClassificationHead::fresh(&config, labels, seed, device, dtype)?;
        let mut model = Self {
            bert: BertModel::init(&config, pooler, device, dtype),
            classifier: head,
            config: config.clone(),
            pooling: if roberta {
                Pooling::Cls
            } else {
                Pooling::Pooler
            },
        };
        let head_in_file = checkpoint.has_prefix("classifier.")?;
        // freeze the encoder; the head stays trainable (peft's modules_to_save)
        model.bert = model.bert.freeze();
        let mut options = LoadOptions::new(dtype)
            .with_remap(r"\.LayerNorm\.", ".layer_norm.")
            .with_remap(r"\.attention\.self\.", ".attention.self_attention.")
            .with_remap(r"^classifier\.(weight|bias)$", "classifier.out_proj.$1")
            .with_remap(r"^classifier\.(dense|out_proj)\.", "classifier.$1.");
        options = match prefix.as_str() {
            "" => options.with_remap(r"^(embeddings|encoder|pooler)\.", "bert.$1."),
            p => options.with_remap(&format!("^{}", regex_escape(p)), "bert."),
        };
        options.optional.push(r"bert\.pooler\..*".into());
        if !head_in_file {
            options.optional.push(r"classifier\..*".into());
        }
        checkpoint.load_into(&mut model, &options)?;
        // a head read from a half-precision checkpoint trains in f32, like a fresh one
        let head_dtype = balora_adapters::training_dtype(dtype);
        model.classifier = model.classifier.cast(head_dtype);
        Ok(model)
    }
}

fn regex_escape(s: &str) -> String {
    s.replace('.', r"\.")
}

/// `bert.`, `roberta.` or `` — whatever the checkpoint's encoder keys start with.
fn detect_prefix(checkpoint: &HfCheckpoint) -> Result<String, ModelError> {
    for p in ["bert.", "roberta."] {
        if checkpoint.has_prefix(&format!("{p}embeddings."))? {
            return Ok(p.to_string());
        }
    }
    Ok(String::new())
}
