//! The one error type of the file-format crate.

use std::path::PathBuf;

use thiserror::Error;

/// A file could not be read or written, or its content is not what the format requires.
/// Every variant names the file; tensor errors also name the key and both shapes.
#[derive(Debug, Error)]
pub enum IoError {
    /// Operating-system error on a path.
    #[error("{path}: {source}")]
    Fs {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// JSON that does not parse or lacks a required field.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// serde_json's diagnostic (with line and column).
        source: serde_json::Error,
    },
    /// A safetensors file that cannot be parsed (truncated, bad header).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A required tensor is absent.
    #[error("{path}: missing tensor {key:?}")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The key that was looked for.
        key: String,
    },
    /// A tensor with no counterpart in the model.
    #[error("{path}: tensor {key:?} matches no adaptable layer of the model")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A tensor whose shape does not fit the layer it belongs to.
    #[error("{path}: tensor {key:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor dtype this project cannot use.
    #[error("{path}: tensor {key:?} has unsupported dtype {dtype}")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The dtype as the file names it.
        dtype: String,
    },
    /// A configuration value this project does not support.
    #[error("{path}: {key} = {value}: {reason}")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// The field.
        key: String,
        /// The value found.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An error from the adapter layer (e.g. attaching to a layer that already has one).
    #[error("{path}: {source}")]
    Adapter {
        /// The adapter directory.
        path: PathBuf,
        /// The adapter crate's error.
        source: balora_adapters::AdapterError,
    },
}
