//! Files at the edges of balora: Hugging Face PEFT adapter directories, safetensors I/O and
//! atomic writes. Nothing here knows about training loops.

mod error;
pub mod fs;
mod peft;
pub mod tensors;

pub use error::IoError;
pub use peft::{
    CONFIG_FILE, InitLoraWeights, KEY_PREFIX, LoadedAdapter, PeftConfig, SaveOptions, TaskType,
    WEIGHTS_FILE, load_adapter, read_config, save_adapter,
};
