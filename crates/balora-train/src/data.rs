//! Datasets: NLG instruction data (MetaMathQA `query`/`response`, Alpaca
//! `instruction`/`input`/`output`) and NLU classification data (JSONL, TSV, CSV), tokenised
//! into examples and batched with length bucketing and a seeded shuffle.

use std::path::Path;

use balora_io::{ChatMessage, ChatTemplate};
use balora_losses::IGNORE_INDEX;
use balora_model::TokenBatch;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::TrainError;

/// One instruction-following example before tokenisation.
#[derive(Debug, Clone, PartialEq)]
pub struct NlgRecord {
    /// The instruction (plus input, for Alpaca); for a conversation, its last user turn.
    pub prompt: String,
    /// The target response; for a conversation, its last assistant turn.
    pub response: String,
    /// The gold final answer, when the data has one (math word problems).
    pub answer: Option<String>,
    /// A whole conversation (`messages` rows): rendered through the chat template, with
    /// every assistant turn in the loss. `None` for single-turn rows.
    pub messages: Option<Vec<ChatMessage>>,
}

impl NlgRecord {
    /// The record as chat messages: its conversation, or one user and one assistant turn.
    pub fn conversation(&self) -> Vec<ChatMessage> {
        self.messages.clone().unwrap_or_else(|| {
            vec![
                ChatMessage::new("user", &self.prompt),
                ChatMessage::new("assistant", &self.response),
            ]
        })
    }
}

/// One classification example before tokenisation.
#[derive(Debug, Clone, PartialEq)]
pub struct NluRecord {
    /// The text.
    pub text: String,
    /// The second text of a pair task.
    pub text_pair: Option<String>,
    /// The label as written in the file.
    pub label: String,
    /// 1-based line of the record in its file, for error messages.
    pub line: usize,
}

fn read_text(path: &Path) -> Result<String, TrainError> {
    let bytes = balora_io::fs::read(path)?;
    String::from_utf8(bytes).map_err(|e| {
        // 1-based line of the first invalid byte, as every other data error reports it
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        TrainError::Data {
            path: path.to_path_buf(),
            line,
            reason: format!("not UTF-8: {}", e.utf8_error()),
        }
    })
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| obj.get(*n).and_then(Value::as_str))
}

/// Read a JSONL file of instruction data: each line an object with `query` and `response`
/// (MetaMathQA), or `instruction`, optional `input`, and `output` (Alpaca), or `messages`
/// (`[{"role", "content"}, …]`, ending with an assistant turn: chat SFT data); an optional
/// `answer`.
pub fn read_nlg_jsonl(path: &Path) -> Result<Vec<NlgRecord>, TrainError> {
    let text = read_text(path)?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |reason: String| TrainError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| err(format!("malformed JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("expected a JSON object".into()))?;
        let record = if let Some(messages) = obj.get("messages") {
            let messages: Vec<ChatMessage> = serde_json::from_value(messages.clone())
                .map_err(|e| err(format!("\"messages\" must be [{{role, content}}, …]: {e}")))?;
            let last = messages
                .last()
                .filter(|m| m.role == "assistant")
                .ok_or_else(|| err("a conversation must end with an \"assistant\" turn".into()))?;
            let prompt = messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default();
            NlgRecord {
                prompt,
                response: last.content.clone(),
                answer: None,
                messages: Some(messages),
            }
        } else if let Some(query) = field(obj, &["query"]) {
            let response = field(obj, &["response"]).ok_or_else(|| {
                err("missing field \"response\" (MetaMathQA rows need query and response)".into())
            })?;
            NlgRecord {
                prompt: query.to_string(),
                response: response.to_string(),
                answer: None,
                messages: None,
            }
        } else if let Some(instruction) = field(obj, &["instruction"]) {
            let output = field(obj, &["output"]).ok_or_else(|| {
                err("missing field \"output\" (Alpaca rows need instruction and output)".into())
            })?;
            let prompt = match field(obj, &["input"]).filter(|s| !s.is_empty()) {
                Some(input) => format!("{instruction}\n\n{input}"),
                None => instruction.to_string(),
            };
            NlgRecord {
                prompt,
                response: output.to_string(),
                answer: None,
                messages: None,
            }
        } else {
            return Err(err(
                "missing field: expected \"query\"/\"response\", \"instruction\"/\"output\" or \
                 \"messages\""
                    .into(),
            ));
        };
        let answer = obj.get("answer").map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        records.push(NlgRecord { answer, ..record });
    }
    if records.is_empty() {
        return Err(TrainError::EmptyDataset {
            path: path.to_path_buf(),
            reason: "the file has no rows".into(),
        });
    }
    Ok(records)
}

/// Read classification data: JSONL (`text`/`sentence`, optional `text_pair`/`sentence2`,
/// `label`) or TSV/CSV with a header naming those columns (by extension).
pub fn read_nlu(path: &Path) -> Result<Vec<NluRecord>, TrainError> {
    let text = read_text(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut records = Vec::new();
    let err = |line: usize, reason: String| TrainError::Data {
        path: path.to_path_buf(),
        line,
        reason,
    };
    match ext {
        "tsv" | "csv" => {
            let sep = if ext == "tsv" { '\t' } else { ',' };
            let mut lines = text.lines().enumerate();
            let header: Vec<String> = lines
                .next()
                .map(|(_, h)| split_row(h, sep))
                .ok_or_else(|| err(1, "missing header row".into()))?;
            let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
            let text_col = col(&["text", "sentence", "sentence1"])
                .ok_or_else(|| err(1, "no text/sentence column in the header".into()))?;
            let pair_col = col(&["text_pair", "sentence2"]);
            let label_col =
                col(&["label"]).ok_or_else(|| err(1, "no label column in the header".into()))?;
            for (i, line) in lines {
                if line.trim().is_empty() {
                    continue;
                }
                let row = split_row(line, sep);
                let get = |c: usize| {
                    row.get(c).cloned().ok_or_else(|| {
                        err(
                            i + 1,
                            format!("expected {} columns, found {}", header.len(), row.len()),
                        )
                    })
                };
                records.push(NluRecord {
                    text: get(text_col)?,
                    text_pair: pair_col.map(get).transpose()?,
                    label: get(label_col)?,
                    line: i + 1,
                });
            }
        }
        _ => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| err(i + 1, format!("malformed JSON: {e}")))?;
                let obj = value
                    .as_object()
                    .ok_or_else(|| err(i + 1, "expected a JSON object".into()))?;
                let text = field(obj, &["text", "sentence", "sentence1"])
                    .ok_or_else(|| err(i + 1, "missing field \"text\"".into()))?;
                let label = match obj.get("label") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    _ => return Err(err(i + 1, "missing field \"label\"".into())),
                };
                records.push(NluRecord {
                    text: text.to_string(),
                    text_pair: field(obj, &["text_pair", "sentence2"]).map(str::to_string),
                    label,
                    line: i + 1,
                });
            }
        }
    }
    if records.is_empty() {
        return Err(TrainError::EmptyDataset {
            path: path.to_path_buf(),
            reason: "the file has no rows".into(),
        });
    }
    Ok(records)
}

/// Split a CSV/TSV row, honouring double quotes (`"a, b"` and `""` escapes).
fn split_row(line: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            c if c == sep && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Class names in a fixed order (sorted; numeric labels numerically), so label ids are stable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    names: Vec<String>,
}

impl LabelSet {
    /// The labels of a training set.
    pub fn from_records(records: &[NluRecord]) -> Self {
        let mut names: Vec<String> = records.iter().map(|r| r.label.clone()).collect();
        // numeric labels first, in numeric order, then the others by name: a total order
        // (comparing numbers as numbers and the rest as text would not be one, and sorting
        // by an inconsistent order may panic)
        names.sort_by(|a, b| {
            let key = |s: &str| s.parse::<f64>().ok().filter(|x| !x.is_nan());
            match (key(a), key(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y).then_with(|| a.cmp(b)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.cmp(b),
            }
        });
        names.dedup();
        Self { names }
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there is no class.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The id of `label`, or `None` outside the set.
    pub fn id(&self, label: &str) -> Option<usize> {
        self.names.iter().position(|n| n == label)
    }

    /// The class names in id order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// How an instruction is turned into model input.
#[derive(Debug, Clone)]
pub enum PromptFormat {
    /// The checkpoint's chat template (user turn, then the assistant's turn is opened).
    Chat(ChatTemplate),
    /// The Alpaca/MetaMathQA template PiSSA and BA-LoRA train with.
    Alpaca,
}

impl PromptFormat {
    fn alpaca(prompt: &str) -> String {
        format!(
            "Below is an instruction that describes a task. Write a response that \
             appropriately completes the request.\n\n### Instruction:\n{prompt}\n\n### Response:"
        )
    }

    /// The token ids a generation for `record` starts from, as training saw them: the
    /// conversation up to its last assistant turn with the assistant's turn opened (chat), or
    /// the Alpaca prompt with the tokenizer's special tokens (BOS where it adds one).
    pub fn prompt_ids(
        &self,
        tokenizer: &Tokenizer,
        record: &NlgRecord,
    ) -> Result<Vec<u32>, TrainError> {
        match self {
            PromptFormat::Chat(t) => {
                let mut messages = record.conversation();
                messages.pop();
                let text = t.render(&messages, true).map_err(TrainError::Tokenizer)?;
                Ok(encode(tokenizer, &text, false)?.get_ids().to_vec())
            }
            PromptFormat::Alpaca => Ok(encode(tokenizer, &Self::alpaca(&record.prompt), true)?
                .get_ids()
                .to_vec()),
        }
    }

    /// Token ids and labels of `record`: the whole text tokenised at once (so the tokens at
    /// the prompt/response boundary are the ones the model sees), labels −100 except on the
    /// response tokens.
    ///
    /// Chat: the conversation rendered by the template, every assistant turn (its closing
    /// end-of-turn token included) in the loss; a token is a response token when it starts
    /// inside an assistant turn's text, found by rendering the conversation up to each turn.
    /// Alpaca: as the PiSSA / BA-LoRA reference trains, `prompt + response` tokenised with
    /// the tokenizer's special tokens, `eos` appended, and the first `len(tokenize(prompt))`
    /// labels masked.
    fn example(
        &self,
        tokenizer: &Tokenizer,
        record: &NlgRecord,
        eos: u32,
    ) -> Result<(Vec<u32>, Vec<i64>), TrainError> {
        match self {
            PromptFormat::Chat(t) => {
                let messages = record.conversation();
                let render = |m: &[ChatMessage], open: bool| {
                    t.render(m, open).map_err(TrainError::Tokenizer)
                };
                let full = render(&messages, false)?;
                let mut spans = Vec::new();
                for (i, m) in messages.iter().enumerate() {
                    if m.role != "assistant" {
                        continue;
                    }
                    let (start, end) = (
                        render(&messages[..i], true)?,
                        render(&messages[..=i], false)?,
                    );
                    if !full.starts_with(&start) || !full.starts_with(&end) {
                        return Err(TrainError::Tokenizer(format!(
                            "the chat template does not render a conversation as the \
                             concatenation of its turns (turn {i}), so its assistant tokens \
                             cannot be found"
                        )));
                    }
                    spans.push(start.len()..end.len());
                }
                let enc = encode(tokenizer, &full, false)?;
                let labels = enc
                    .get_ids()
                    .iter()
                    .zip(enc.get_offsets())
                    .map(|(&id, &(from, _))| {
                        if spans.iter().any(|s| s.contains(&from)) {
                            id as i64
                        } else {
                            IGNORE_INDEX
                        }
                    })
                    .collect();
                Ok((enc.get_ids().to_vec(), labels))
            }
            PromptFormat::Alpaca => {
                let prompt = Self::alpaca(&record.prompt);
                let source = encode(tokenizer, &prompt, true)?.len();
                let mut ids = encode(tokenizer, &format!("{prompt}{}", record.response), true)?
                    .get_ids()
                    .to_vec();
                ids.push(eos);
                let labels = ids
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| if i < source { IGNORE_INDEX } else { id as i64 })
                    .collect();
                Ok((ids, labels))
            }
        }
    }
}

/// A tokenised training example: ids and per-token labels (−100 on the prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Labels, aligned with `ids`: the id for response tokens, −100 for prompt tokens; for
    /// classification a single class id (or the regression target's bits).
    pub labels: Vec<i64>,
    /// Segment ids for text pairs.
    pub token_types: Option<Vec<u32>>,
}

fn encode(
    tokenizer: &Tokenizer,
    text: &str,
    special_tokens: bool,
) -> Result<tokenizers::Encoding, TrainError> {
    tokenizer
        .encode(text, special_tokens)
        .map_err(|e| TrainError::Tokenizer(e.to_string()))
}

/// Tokenise instruction data (see [`PromptFormat`] for how each format is tokenised): prompt
/// tokens get label −100, so the loss is on the responses only. Examples longer than
/// `max_len` are truncated from the end; the count
/// of truncated examples is returned for a warning. Examples whose response would vanish
/// entirely are dropped.
pub fn tokenize_nlg(
    records: &[NlgRecord],
    tokenizer: &Tokenizer,
    format: &PromptFormat,
    max_len: usize,
    eos: u32,
) -> Result<(Vec<Example>, usize), TrainError> {
    let mut out = Vec::with_capacity(records.len());
    let mut truncated = 0;
    for r in records {
        let (mut ids, mut labels) = format.example(tokenizer, r, eos)?;
        if ids.len() > max_len {
            truncated += 1;
            ids.truncate(max_len);
            labels.truncate(max_len);
        }
        if labels.iter().any(|&l| l != IGNORE_INDEX) {
            out.push(Example {
                ids,
                labels,
                token_types: None,
            });
        }
    }
    Ok((out, truncated))
}

/// Tokenise classification data with the tokenizer's own special tokens (`[CLS] … [SEP]`),
/// truncated to `max_len`; labels must be in `labels` (the training set's classes).
pub fn tokenize_nlu(
    records: &[NluRecord],
    tokenizer: &Tokenizer,
    labels: &LabelSet,
    max_len: usize,
    path: &Path,
) -> Result<(Vec<Example>, usize), TrainError> {
    let mut out = Vec::with_capacity(records.len());
    let mut truncated = 0;
    for r in records {
        let id = labels.id(&r.label).ok_or_else(|| TrainError::Data {
            path: path.to_path_buf(),
            line: r.line,
            reason: format!(
                "label {:?} is outside the class set {:?}",
                r.label,
                labels.names()
            ),
        })?;
        let enc = match &r.text_pair {
            Some(pair) => tokenizer.encode((r.text.as_str(), pair.as_str()), true),
            None => tokenizer.encode(r.text.as_str(), true),
        }
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        let mut types = enc.get_type_ids().to_vec();
        if ids.len() > max_len {
            truncated += 1;
            ids.truncate(max_len);
            types.truncate(max_len);
        }
        out.push(Example {
            ids,
            labels: vec![id as i64],
            token_types: r.text_pair.is_some().then_some(types),
        });
    }
    Ok((out, truncated))
}

/// Refuse examples (tokenised from `path`) that a model with `vocab` token ids and `max_len`
/// positions cannot read: an id outside the vocabulary (a tokenizer of another model) would
/// index past the embeddings, a sequence beyond the position table past that table.
pub fn check_examples(
    examples: &[Example],
    vocab: usize,
    max_len: Option<usize>,
    path: &Path,
) -> Result<(), TrainError> {
    let bad = |reason: String| TrainError::Incompatible {
        path: path.to_path_buf(),
        reason,
    };
    for (i, e) in examples.iter().enumerate() {
        if let Some(&id) = e.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(bad(format!(
                "example {}: token id {id} is outside the model's vocabulary of {vocab} (is \
                 the tokenizer this model's?)",
                i + 1
            )));
        }
        if let Some(max) = max_len
            && e.ids.len() > max
        {
            return Err(bad(format!(
                "example {}: {} tokens, beyond the model's {max} positions; set max_len to at \
                 most {max}",
                i + 1,
                e.ids.len()
            )));
        }
    }
    Ok(())
}

/// The batches of one epoch: a seeded shuffle, then length bucketing (sort within windows of
/// 16 batches so padding stays small), then a seeded shuffle of the batch order. A pure
/// function of `(seed, epoch)`, which makes the data cursor of a checkpoint just a position.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    for window in order.chunks(batch_size.max(1) * 16) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| lengths[i]);
        batches.extend(w.chunks(batch_size.max(1)).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Collate examples into a right-padded batch and its labels: per token (`[B, T]`, −100 on
/// padding) for NLG, one class id per example for NLU.
pub fn collate(examples: &[&Example], pad_id: u32, token_labels: bool) -> (TokenBatch, Vec<i64>) {
    let seqs: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
    let mut batch = TokenBatch::right_padded(&seqs, pad_id);
    let [b, t] = batch.dims;
    let mut labels = vec![IGNORE_INDEX; b * t];
    if token_labels {
        for (i, e) in examples.iter().enumerate() {
            labels[i * t..i * t + e.labels.len()].copy_from_slice(&e.labels);
        }
    } else {
        labels = examples.iter().map(|e| e.labels[0]).collect();
    }
    if examples.iter().any(|e| e.token_types.is_some()) {
        let mut types = vec![0u32; b * t];
        for (i, e) in examples.iter().enumerate() {
            if let Some(tt) = &e.token_types {
                types[i * t..i * t + tt.len()].copy_from_slice(tt);
            }
        }
        batch.token_type_ids = Some(types);
    }
    (batch, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_beyond_the_vocabulary_or_the_positions_are_refused() {
        let e = |ids: Vec<u32>| Example {
            labels: vec![0; ids.len()],
            ids,
            token_types: None,
        };
        let path = Path::new("train.jsonl");
        let ok = [e(vec![1, 2, 9])];
        assert!(check_examples(&ok, 10, Some(3), path).is_ok());
        let msg = check_examples(&[e(vec![1]), e(vec![3, 10])], 10, None, path)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("train.jsonl: example 2: token id 10") && msg.contains("of 10"),
            "{msg}"
        );
        let msg = check_examples(&ok, 10, Some(2), path)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("3 tokens, beyond the model's 2 positions"),
            "{msg}"
        );
    }

    #[test]
    fn mixed_numeric_and_named_labels_sort_in_one_total_order() {
        let records: Vec<NluRecord> = ["b", "10", "2", "a", "NaN", "1", "2"]
            .iter()
            .enumerate()
            .map(|(line, label)| NluRecord {
                text: "x".into(),
                text_pair: None,
                label: label.to_string(),
                line,
            })
            .collect();
        let set = LabelSet::from_records(&records);
        assert_eq!(set.names(), ["1", "2", "10", "NaN", "a", "b"]);
        assert_eq!(set.id("10"), Some(2));
    }
}
