//! The one error type of the adapter crate.

use thiserror::Error;

/// Everything that can go wrong while building or attaching an adapter.
///
/// Messages name the layer (its module path), and for shapes both what was expected and
/// what was found, so a failure deep inside a 30-layer model points at the culprit.
#[derive(Debug, Error)]
pub enum AdapterError {
    /// A configuration value is out of its domain (rank 0, negative dropout, ...).
    #[error("invalid adapter config: {field} = {value} ({reason})")]
    InvalidConfig {
        /// Name of the offending field.
        field: &'static str,
        /// The value that was given, rendered for the message.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// `target_modules` as a regex does not compile.
    #[error("invalid target_modules regex {pattern:?}: {source}")]
    InvalidRegex {
        /// The pattern as given.
        pattern: String,
        /// The regex crate's diagnostic.
        source: regex::Error,
    },
    /// A tensor does not have the shape an operation requires.
    #[error("{layer}: {what} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Module path of the layer (or a description of the operand).
        layer: String,
        /// Which tensor.
        what: &'static str,
        /// The shape the operation needs.
        expected: Vec<usize>,
        /// The shape it got.
        found: Vec<usize>,
    },
    /// The rank asked for exceeds what the weight can hold (`r > min(out, in)` for PiSSA).
    #[error("{layer}: rank {rank} exceeds min(out, in) = {max} of a {out}x{inp} weight")]
    RankTooLarge {
        /// Module path of the layer.
        layer: String,
        /// Requested rank.
        rank: usize,
        /// `min(out, in)`.
        max: usize,
        /// Output features.
        out: usize,
        /// Input features.
        inp: usize,
    },
    /// The host SVD did not converge (non-finite weights, typically).
    #[error("{layer}: SVD failed ({reason})")]
    Svd {
        /// Module path of the layer.
        layer: String,
        /// What the solver reported.
        reason: String,
    },
    /// Reading a tensor back to the host failed (device error).
    #[error("{layer}: cannot read tensor from the device: {reason}")]
    Readback {
        /// Module path of the layer.
        layer: String,
        /// The backend's message.
        reason: String,
    },
    /// An operation needs an adapter but the layer has none attached.
    #[error("{layer}: no adapter is attached")]
    NoAdapter {
        /// Module path of the layer.
        layer: String,
    },
    /// The layer already carries an adapter.
    #[error("{layer}: an adapter is already attached")]
    AlreadyAdapted {
        /// Module path of the layer.
        layer: String,
    },
    /// `target_modules` matched no layer of the model: almost always a typo.
    #[error(
        "target_modules {targets} matched none of the model's {count} linear layers (e.g. {example})"
    )]
    NoTargetMatched {
        /// The targets as configured.
        targets: String,
        /// How many adaptable layers the model has.
        count: usize,
        /// One layer path, to show what paths look like.
        example: String,
    },
}
