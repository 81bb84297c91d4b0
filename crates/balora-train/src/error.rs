//! The one error type of the trainer crate.

use std::path::PathBuf;

use thiserror::Error;

/// Training could not start or continue.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A dataset line that is not what the format requires (names `file:line`).
    #[error("{path}:{line}: {reason}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A dataset with no usable example.
    #[error("{path}: no usable example ({reason})")]
    EmptyDataset {
        /// The data file.
        path: PathBuf,
        /// Why nothing was kept.
        reason: String,
    },
    /// Examples the model cannot read (ids outside its vocabulary, sequences beyond its
    /// positions).
    #[error("{path}: {reason}")]
    Incompatible {
        /// The data file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error("step {step}: the loss is {value} — stopping; the last good checkpoint is kept")]
    NonFinite {
        /// The optimizer step.
        step: usize,
        /// The value.
        value: f64,
    },
    /// Another live process holds the output folder's lock.
    #[error(
        "{path}: another run (process {pid}) is writing to this output folder; wait for it to \
         finish or choose another output folder"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The process holding it.
        pid: u32,
    },
    /// A loop setting no run can use.
    #[error("invalid setting {key} = {value}: expected {expected}")]
    Setting {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A checkpoint whose loop state does not fit the run resuming from it.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The checkpoint's state file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// An output folder whose parent does not exist.
    #[error(
        "{path}: the output folder's parent {parent} does not exist (a typo, or a volume not \
         mounted?); create it first"
    )]
    OutputParent {
        /// The output folder.
        path: PathBuf,
        /// Its missing parent.
        parent: PathBuf,
    },
    /// Files (checkpoints, adapters, metrics).
    #[error(transparent)]
    Io(#[from] balora_io::IoError),
    /// A loss could not be computed.
    #[error(transparent)]
    Loss(#[from] balora_losses::LossError),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Plotting failed.
    #[error("{path}: cannot draw the plot: {reason}")]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// The plotting library's message.
        reason: String,
    },
}
