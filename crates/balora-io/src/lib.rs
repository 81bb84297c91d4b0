//! Files at the edges of balora: Hugging Face model directories (config, sharded safetensors,
//! tokenizer, chat template), PEFT adapter directories, safetensors I/O and atomic writes. Nothing here knows about training loops.

#![warn(missing_docs)]

pub mod checkpoint;
mod error;
pub mod fs;
mod merged;
mod peft;
pub mod tensors;
mod tokenizer;

pub use checkpoint::{HfCheckpoint, LoadOptions, LoadReport, MODEL_CONFIG};
pub use error::IoError;
pub use merged::{MergeOptions, MergeReport, save_merged};
pub use peft::{
    CONFIG_FILE, InitLoraWeights, KEY_PREFIX, LoadedAdapter, PeftConfig, SaveOptions, TaskType,
    WEIGHTS_FILE, load_adapter, read_config, save_adapter,
};
pub use tokenizer::{
    ChatMessage, ChatTemplate, FUEL_BASE, FUEL_PER_MESSAGE, MAX_DEPTH, MAX_OUTPUT, TOKENIZER_FILE,
    load_tokenizer,
};
