//! Tokenizers and chat templates from a Hugging Face directory.

use std::path::Path;

use minijinja::{Environment, context};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::IoError;
use crate::fs::read;

/// File names.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// Load `tokenizer.json` from `dir` with its padding and truncation switched off: some
/// checkpoints ship fixed padding (all-MiniLM-L6-v2 pads every input to 128), which would
/// silently change pooled embeddings and waste compute. Batching pads explicitly instead.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, IoError> {
    let path = dir.join(TOKENIZER_FILE);
    let bytes = read(&path)?;
    let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| IoError::Unsupported {
        path: path.clone(),
        key: "tokenizer".into(),
        value: "tokenizer.json".into(),
        reason: e.to_string(),
    })?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| IoError::Unsupported {
            path,
            key: "truncation".into(),
            value: "None".into(),
            reason: e.to_string(),
        })?;
    Ok(tokenizer)
}

/// One chat message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The checkpoint's Jinja chat template (`tokenizer_config.json` → `chat_template`), rendered
/// with minijinja as transformers' `apply_chat_template` renders it.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

fn token_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template of the checkpoint in `dir`, or `None` when it has none.
    pub fn load(dir: &Path) -> Result<Option<Self>, IoError> {
        let path = dir.join(TOKENIZER_CONFIG);
        if !path.is_file() {
            return Ok(None);
        }
        let config: serde_json::Value =
            serde_json::from_slice(&read(&path)?).map_err(|source| IoError::Json {
                path: path.clone(),
                source,
            })?;
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // a list of named templates: take "default"
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                .map(str::to_string)
                .unwrap_or_default(),
            _ => return Ok(None),
        };
        if source.is_empty() {
            return Ok(None);
        }
        let template = Self {
            source,
            bos_token: config
                .get("bos_token")
                .map(token_string)
                .unwrap_or_default(),
            eos_token: config
                .get("eos_token")
                .map(token_string)
                .unwrap_or_default(),
        };
        // Fail at load, naming the file, rather than at the first render.
        template
            .render(&[], false)
            .map_err(|reason| IoError::Unsupported {
                path,
                key: "chat_template".into(),
                value: "<jinja>".into(),
                reason,
            })?;
        Ok(Some(template))
    }

    /// Render `messages`; with `add_generation_prompt` the assistant's turn is opened.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_template("chat", &self.source)
            .map_err(|e| e.to_string())?;
        let template = env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| e.to_string())
    }
}
