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
///
/// The file is parsed as JSON first and then read from that value: the `tokenizers` crate
/// panics (instead of failing) on some syntax errors when it parses bytes itself, which a
/// parsed value cannot have. Any other panic inside it becomes an error too
/// (docs/reliability.md, "Loading").
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, IoError> {
    let path = dir.join(TOKENIZER_FILE);
    let value: serde_json::Value =
        serde_json::from_slice(&read(&path)?).map_err(|source| IoError::Json {
            path: path.clone(),
            source,
        })?;
    let unsupported = |reason: String| IoError::Unsupported {
        path: path.clone(),
        key: "tokenizer".into(),
        value: "tokenizer.json".into(),
        reason,
    };
    if let Some(processor) = value.get("post_processor") {
        check_post_processor(processor).map_err(unsupported)?;
    }
    if let Some(model) = value.get("model") {
        check_bpe_merges(model).map_err(unsupported)?;
    }
    let parsed = std::panic::catch_unwind(|| serde_json::from_value::<Tokenizer>(value))
        .map_err(|_| unsupported("the tokenizers crate panicked while reading it".into()))?;
    let mut tokenizer = parsed.map_err(|e| unsupported(e.to_string()))?;
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

/// What the `tokenizers` crate assumes of a `TemplateProcessing` post-processor read from a
/// file without checking it (its builder checks; deserialisation does not), and panics on at
/// the first encode otherwise: every special token a template names is defined, with as many
/// ids as tokens, and the single-sequence template names no second sequence. The crate picks
/// a processor by its fields, whatever its `type` says, so the check does too.
fn check_post_processor(processor: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    if let Some(list) = processor.get("processors").and_then(Value::as_array) {
        return list.iter().try_for_each(check_post_processor);
    }
    let specials = processor.get("special_tokens").and_then(Value::as_object);
    for (name, token) in specials.into_iter().flatten() {
        let len = |key: &str| token.get(key).and_then(Value::as_array).map(Vec::len);
        if len("ids") != len("tokens") {
            return Err(format!(
                "post_processor: special token {name:?} has {:?} ids but {:?} tokens",
                len("ids"),
                len("tokens")
            ));
        }
    }
    for template in ["single", "pair"] {
        let pieces = processor.get(template).and_then(Value::as_array);
        for piece in pieces.into_iter().flatten() {
            if let Some(id) = piece.pointer("/SpecialToken/id").and_then(Value::as_str)
                && !specials.is_some_and(|s| s.contains_key(id))
            {
                return Err(format!(
                    "post_processor: the {template} template names special token {id:?}, \
                     which special_tokens does not define"
                ));
            }
            if template == "single"
                && piece.pointer("/Sequence/id").and_then(Value::as_str) == Some("B")
            {
                return Err(
                    "post_processor: the single template names the second sequence B".into(),
                );
            }
        }
    }
    Ok(())
}

/// What the `tokenizers` crate's BPE builder assumes of a file's merges and slices by
/// without checking: a merged token is no longer than the longest vocabulary entry (it must
/// be one), and the second part is at least as long as the continuing-subword prefix it
/// strips.
fn check_bpe_merges(model: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let (Some(vocab), Some(merges)) = (
        model.get("vocab").and_then(Value::as_object),
        model.get("merges").and_then(Value::as_array),
    ) else {
        return Ok(());
    };
    let longest = vocab.keys().map(String::len).max().unwrap_or(0);
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(Value::as_str)
        .map_or(0, str::len);
    for merge in merges {
        let (a, b) = match merge {
            Value::Array(pair) => match &pair[..] {
                [Value::String(a), Value::String(b)] => (a.as_str(), b.as_str()),
                _ => continue,
            },
            Value::String(line) => match line.split_once(' ') {
                Some(pair) => pair,
                None => continue,
            },
            _ => continue,
        };
        if b.len() < prefix || a.len() + b.len() - prefix > longest {
            return Err(format!(
                "model.merges: merging {a:?} and {b:?} makes a token longer than any in the \
                 vocabulary"
            ));
        }
    }
    Ok(())
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
    ///
    /// A template is code from the checkpoint's author, so a render is bounded: it may run
    /// [`FUEL_BASE`] + [`FUEL_PER_MESSAGE`] per message instructions, nest [`MAX_DEPTH`]
    /// levels and write [`MAX_OUTPUT`] bytes; past any bound it fails with an error instead
    /// of looping, recursing or allocating without end (docs/reliability.md, "Loading").
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(FUEL_BASE.saturating_add(
            FUEL_PER_MESSAGE.saturating_mul(messages.len() as u64),
        )));
        env.set_recursion_limit(MAX_DEPTH);
        env.add_template("chat", &self.source)
            .map_err(|e| e.to_string())?;
        let template = env.get_template("chat").map_err(|e| e.to_string())?;
        let mut out = Bounded::default();
        template
            .render_captured_to(
                context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => self.bos_token,
                    eos_token => self.eos_token,
                },
                &mut out,
            )
            .map_err(|e| match out.overflowed {
                true => format!("the chat template's output exceeds {MAX_OUTPUT} bytes"),
                false => e.to_string(),
            })?;
        String::from_utf8(out.bytes).map_err(|e| e.to_string())
    }
}

/// Template instructions a render may run before any message (real templates use hundreds).
pub const FUEL_BASE: u64 = 100_000;
/// Template instructions a render may run per message (real templates use tens).
pub const FUEL_PER_MESSAGE: u64 = 10_000;
/// Nesting a render may reach (loops, macros, includes; real templates use a few).
pub const MAX_DEPTH: usize = 64;
/// Bytes a render may produce (a prompt is truncated to the model's length anyway).
pub const MAX_OUTPUT: usize = 16 << 20;

/// A writer that refuses to grow past [`MAX_OUTPUT`] (and remembers that it did: minijinja
/// reports only that a write failed).
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> Result<Option<ChatTemplate>, IoError> {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({ "chat_template": source, "eos_token": "</s>" });
        std::fs::write(dir.path().join(TOKENIZER_CONFIG), config.to_string()).unwrap();
        ChatTemplate::load(dir.path())
    }

    #[test]
    fn a_template_renders_the_conversation() {
        let t = template(
            "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}{{ eos_token }}",
        )
        .unwrap()
        .unwrap();
        let out = t.render(&[ChatMessage::new("user", "hi")], false).unwrap();
        assert_eq!(out, "[user] hi</s>");
    }

    #[test]
    fn templates_that_loop_recurse_or_grow_without_end_fail_with_an_error() {
        let started = std::time::Instant::now();
        let endless =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = template(endless).unwrap_err().to_string();
        assert!(e.contains("chat_template") && e.contains("fuel"), "{e}");
        let recursive = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let e = template(recursive).unwrap_err().to_string();
        assert!(e.contains("recursion"), "{e}");
        let huge = "{% for i in range(40) %}{{ 'x' * 1000000 }}{% endfor %}";
        let e = template(huge).unwrap_err().to_string();
        assert!(e.contains("exceeds"), "{e}");
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    }
}
