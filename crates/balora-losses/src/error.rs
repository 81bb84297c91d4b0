//! The one error type of the loss crate.

use thiserror::Error;

/// A loss cannot be computed with the given configuration or inputs.
#[derive(Debug, Error, PartialEq)]
pub enum LossError {
    /// A configuration combination no preset or reference defines.
    #[error("invalid regulariser config: {0}")]
    InvalidConfig(String),
    /// An input tensor does not have the shape the term needs.
    #[error("{what} has shape {found:?}, expected {expected}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// Description of the expected shape.
        expected: String,
        /// The shape given.
        found: Vec<usize>,
    },
    /// Host linear algebra failed (non-finite logits, typically).
    #[error("SVD regulariser: {0}")]
    Svd(String),
}
