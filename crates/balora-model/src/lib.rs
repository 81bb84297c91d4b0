//! The seam between models and the trainer.
//!
//! The trainer asks a model for logits of a [`TokenBatch`] and walks its adapter slots; it never
//! names an architecture, and models never name a method: BA-LoRA's teacher is another model
//! value ([`balora_adapters::teacher`]), not a mode of the forward. Models implement
//! [`CausalLm`] or [`SequenceClassifier`].

#![warn(missing_docs)]

pub mod attention;
pub mod generation;
pub mod head;
mod size;

pub use generation::{GenerationConfig, Sampler};
pub use size::{ModelConfig, load_config, positive};

use balora_adapters::AdapterSlots;
use balora_io::IoError;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Loading or running a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or does not fit the model.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A `config.json` value the implementation does not support.
    #[error("config.json: {key} = {value:?} is not supported (expected {expected})")]
    UnsupportedConfig {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
        /// What is supported.
        expected: &'static str,
    },
    /// A `config.json` dimension that is zero.
    #[error("{path}: {key} = {value}: a model dimension must be at least 1")]
    InvalidDimension {
        /// The config file.
        path: std::path::PathBuf,
        /// The key.
        key: &'static str,
        /// The value found.
        value: usize,
    },
    /// A `config.json` whose weights would not fit in memory.
    #[error(
        "{path}: {key} = {value} implies about {estimate_mb} MB of weights, more than the \
         {available_mb} MB of memory available; refusing to allocate"
    )]
    TooLarge {
        /// The config file.
        path: std::path::PathBuf,
        /// The largest dimension.
        key: &'static str,
        /// Its value.
        value: usize,
        /// Estimated weight memory.
        estimate_mb: u64,
        /// Memory available on this machine.
        available_mb: u64,
    },
    /// A `config.json` that describes a much larger model than its checkpoint holds.
    #[error(
        "{path}: {key} = {value} implies {parameters:.0} parameters, but the checkpoint's \
         safetensors hold only {elements} elements; refusing to allocate a model the weights \
         do not describe"
    )]
    CheckpointMismatch {
        /// The config file.
        path: std::path::PathBuf,
        /// The largest dimension.
        key: &'static str,
        /// Its value.
        value: usize,
        /// Parameters the config implies.
        parameters: f64,
        /// Elements the checkpoint holds.
        elements: u64,
    },
    /// Logits could not be read back from the device.
    #[error("reading logits from the device failed: {0}")]
    Readback(String),
}

/// A batch of token sequences, right-padded to a common length, kept on the host: models
/// build their attention masks and position ids from it, losses read the labels from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids `[B, T]`, row-major; padding positions hold `pad_id`.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding, `[B, T]`.
    pub attention_mask: Vec<u8>,
    /// Segment ids `[B, T]` for BERT-style text pairs; `None` means all zeros.
    pub token_type_ids: Option<Vec<u32>>,
    /// `[B, T]`.
    pub dims: [usize; 2],
}

impl TokenBatch {
    /// Right-pad `sequences` with `pad_id` to the longest one.
    pub fn right_padded(sequences: &[Vec<u32>], pad_id: u32) -> Self {
        Self::padded(sequences, pad_id, false)
    }

    /// Left-pad `sequences` with `pad_id` to the longest one: every row's last token sits in
    /// the last column, where batched generation reads the next-token logits and appends.
    pub fn left_padded(sequences: &[Vec<u32>], pad_id: u32) -> Self {
        Self::padded(sequences, pad_id, true)
    }

    fn padded(sequences: &[Vec<u32>], pad_id: u32, left: bool) -> Self {
        let b = sequences.len();
        let t = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut input_ids = vec![pad_id; b * t];
        let mut attention_mask = vec![0u8; b * t];
        for (i, s) in sequences.iter().enumerate() {
            let start = i * t + if left { t - s.len() } else { 0 };
            input_ids[start..start + s.len()].copy_from_slice(s);
            attention_mask[start..start + s.len()].fill(1);
        }
        Self {
            input_ids,
            attention_mask,
            token_type_ids: None,
            dims: [b, t],
        }
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.dims[0]
    }

    /// Sequence length.
    pub fn seq_len(&self) -> usize {
        self.dims[1]
    }

    /// Whether any position is padding.
    pub fn has_padding(&self) -> bool {
        self.attention_mask.contains(&0)
    }

    /// Number of real tokens.
    pub fn num_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m == 1).count()
    }

    /// The ids as an integer tensor `[B, T]` on `device`.
    pub fn ids(&self, device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = self.input_ids.iter().map(|&i| i as i64).collect();
        Tensor::from_data(TensorData::new(ids, self.dims), device)
    }

    /// The segment ids as an integer tensor `[B, T]` (zeros when absent).
    pub fn token_types(&self, device: &Device) -> Tensor<2, Int> {
        match &self.token_type_ids {
            Some(t) => {
                let t: Vec<i64> = t.iter().map(|&i| i as i64).collect();
                Tensor::from_data(TensorData::new(t, self.dims), device)
            }
            None => Tensor::zeros(self.dims, device),
        }
    }
}

/// A decoder language model with adapter slots.
pub trait CausalLm: Module + AdapterSlots {
    /// Next-token logits `[B, T, V]` for every position.
    fn logits(&self, batch: &TokenBatch) -> Tensor<3>;
    /// Vocabulary size V.
    fn vocab_size(&self) -> usize;
    /// The longest sequence its position embeddings cover (`None`: rotary positions, no
    /// table to run past).
    fn max_len(&self) -> Option<usize> {
        None
    }
}

/// A sequence classifier (or regressor, with one output) with adapter slots.
pub trait SequenceClassifier: Module + AdapterSlots {
    /// Class logits `[B, C]`: the head applied to [`pooled`](Self::pooled).
    fn logits(&self, batch: &TokenBatch) -> Tensor<2>;
    /// The pooled vector `[B, d]` the classification head reads — the features whose spread
    /// BA-LoRA's diversity term acts on, drawn by the experiments' feature picture.
    fn pooled(&self, batch: &TokenBatch) -> Tensor<2>;
    /// Number of outputs C.
    fn num_labels(&self) -> usize;
    /// Token ids must be below this (the rows of the word embeddings).
    fn vocab_size(&self) -> usize;
    /// The longest sequence its position embeddings cover.
    fn max_len(&self) -> Option<usize>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_padding_marks_padding_in_the_mask() {
        let b = TokenBatch::right_padded(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!(b.dims, [2, 3]);
        assert_eq!(b.input_ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 0, 0]);
        assert!(b.has_padding());
        assert_eq!(b.num_tokens(), 4);
    }
}
