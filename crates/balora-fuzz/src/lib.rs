//! Fuzz harnesses: one function per kind of file balora reads from strangers — model configs
//! per architecture (through the models' constructors), safetensors (header and tensor
//! reads, and the weight loader), PEFT adapters, `tokenizer.json`, chat templates, the NLG /
//! chat JSONL and NLU JSONL/TSV/CSV datasets, TOML run files and experiment grids, and
//! training checkpoints (docs/reliability.md, "Fuzzing").
//!
//! A harness writes its input where balora expects the file, calls the public entry point a
//! user's run calls, and, when that accepts the input, uses the result (a forward pass, a
//! render, a tokenisation, a training step). Errors are the expected outcome; a panic, an
//! abort, a hang or an unbounded allocation is a finding. `fuzz/` runs them under libFuzzer
//! (`cargo fuzz`); `tests/replay.rs` replays every committed corpus and regression input and
//! a few thousand deterministic mutations of them in the ordinary test suite.
//!
//! Inputs made of two files (a config and its tensors) start with the first file's length as
//! a little-endian `u32` ([`two_files`]).

#![warn(missing_docs)]

pub mod seeds;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use balora::experiment::ExperimentConfig;
use balora::finetune::FinetuneConfig;
use balora_adapters::{LoraConfig, TargetModules, inject};
use balora_bert::BertForSequenceClassification;
use balora_gpt2::Gpt2LmHeadModel;
use balora_io::{ChatMessage, ChatTemplate, load_adapter, load_tokenizer};
use balora_llama::LlamaForCausalLM;
use balora_model::{CausalLm, SequenceClassifier, TokenBatch};
use balora_train::data::{
    Example, LabelSet, PromptFormat, read_nlg_jsonl, read_nlu, tokenize_nlg, tokenize_nlu,
};
use balora_train::{LoopConfig, NlgObjective, Trainer};
use burn::tensor::{DType, Device};

/// A harness: takes any bytes, must not panic, hang or allocate without bound.
pub type Harness = fn(&[u8]);

/// Every harness by name: the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders.
pub const TARGETS: &[(&str, Harness)] = &[
    ("config_llama", config_llama),
    ("config_bert", config_bert),
    ("config_gpt2", config_gpt2),
    ("safetensors", safetensors),
    ("peft_adapter", peft_adapter),
    ("tokenizer", tokenizer),
    ("chat_template", chat_template),
    ("nlg_jsonl", nlg_jsonl),
    ("nlu_jsonl", nlu_jsonl),
    ("nlu_tsv", nlu_tsv),
    ("nlu_csv", nlu_csv),
    ("run_config", run_config),
    ("experiment_config", experiment_config),
    ("checkpoint", checkpoint),
];

/// The tiny fixture models and the tokenizer the harnesses build on.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn model_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// Split an input into two files: a little-endian `u32` length, the first file, the second.
pub fn two_files(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return (data, &[]);
    };
    let n = (u32::from_le_bytes(*len) as usize).min(rest.len());
    rest.split_at(n)
}

/// Join two files into one input (the inverse of [`two_files`]), for seeds.
pub fn join_files(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut out = (first.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(first);
    out.extend_from_slice(second);
    out
}

/// Per-thread state: a scratch folder and the models built once.
struct Scratch {
    dir: tempfile::TempDir,
    llama: Option<LlamaForCausalLM>,
    trainee: Option<LlamaForCausalLM>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        dir: tempfile::tempdir().expect("a scratch folder"),
        llama: None,
        trainee: None,
    });
}

/// A folder of the scratch space for `target`, created once with `files` copied in.
fn workdir(target: &str, files: &[(&Path, &str)]) -> PathBuf {
    SCRATCH.with_borrow(|s| {
        let dir = s.dir.path().join(target);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).expect("scratch folder");
            for (from, name) in files {
                std::fs::copy(from, dir.join(name)).expect("fixture copy");
            }
        }
        dir
    })
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("scratch write");
}

fn cpu() -> Device {
    Device::flex()
}

/// A short batch of valid ids for a model with `vocab` tokens.
fn batch(vocab: usize) -> TokenBatch {
    let v = vocab.max(1) as u32;
    TokenBatch::right_padded(&[vec![1 % v, 2 % v, 3 % v], vec![4 % v]], 0)
}

/// A model checkpoint directory whose `config.json` is the input, beside the fixture's
/// weights.
fn config_dir(target: &str, fixture: &str, data: &[u8]) -> PathBuf {
    let weights = model_fixture(fixture).join("model.safetensors");
    let dir = workdir(target, &[(&weights, "model.safetensors")]);
    write(&dir.join("config.json"), data);
    dir
}

/// `config.json` of a Llama / Mistral / Qwen2 checkpoint, through `from_pretrained`.
pub fn config_llama(data: &[u8]) {
    let dir = config_dir("config_llama", "tiny-llama", data);
    if let Ok(m) = LlamaForCausalLM::from_pretrained(&dir, &cpu(), DType::F32) {
        let _ = CausalLm::logits(&m, &batch(m.vocab_size()));
    }
}

/// `config.json` of a BERT / RoBERTa checkpoint, through `from_pretrained` with a head.
pub fn config_bert(data: &[u8]) {
    let dir = config_dir("config_bert", "tiny-bert-cls", data);
    if let Ok(m) = BertForSequenceClassification::from_pretrained(&dir, None, 0, &cpu(), DType::F32)
    {
        let _ = SequenceClassifier::logits(&m, &batch(2));
    }
}

/// `config.json` of a GPT-2 checkpoint, through `from_pretrained`.
pub fn config_gpt2(data: &[u8]) {
    let dir = config_dir("config_gpt2", "tiny-gpt2", data);
    if let Ok(m) = Gpt2LmHeadModel::from_pretrained(&dir, &cpu(), DType::F32) {
        let _ = CausalLm::logits(&m, &batch(m.vocab_size()));
    }
}

/// A safetensors file: its header alone, every tensor read through `SafetensorsFile`, and the
/// file as a model's weights (Burn's store, behind `from_pretrained`).
pub fn safetensors(data: &[u8]) {
    let config = model_fixture("tiny-llama").join("config.json");
    let dir = workdir("safetensors", &[(&config, "config.json")]);
    let path = dir.join("model.safetensors");
    write(&path, data);
    let _ = balora_io::tensors::read_header(&path);
    if let Ok(file) = balora_io::tensors::SafetensorsFile::open(&path) {
        for name in file.names() {
            let _ = file.data(&name);
            let Some(shape) = file.shape(&name) else {
                continue;
            };
            match shape[..] {
                [a] => drop(file.tensor::<1>(&name, [a], &cpu(), DType::F32)),
                [a, b] => drop(file.tensor::<2>(&name, [a, b], &cpu(), DType::F32)),
                _ => drop(file.values::<f64>(&name)),
            }
        }
    }
    if let Ok(m) = LlamaForCausalLM::from_pretrained(&dir, &cpu(), DType::F32) {
        let _ = CausalLm::logits(&m, &batch(m.vocab_size()));
    }
}

fn base_llama() -> LlamaForCausalLM {
    SCRATCH.with_borrow_mut(|s| {
        s.llama
            .get_or_insert_with(|| {
                LlamaForCausalLM::from_pretrained(&model_fixture("tiny-llama"), &cpu(), DType::F32)
                    .expect("the tiny Llama fixture loads")
            })
            .clone()
    })
}

/// A PEFT adapter folder: `adapter_config.json` and `adapter_model.safetensors` (two files),
/// loaded onto the tiny Llama.
pub fn peft_adapter(data: &[u8]) {
    let (config, weights) = two_files(data);
    let dir = workdir("peft_adapter", &[]);
    write(&dir.join(balora_io::CONFIG_FILE), config);
    write(&dir.join(balora_io::WEIGHTS_FILE), weights);
    let mut model = base_llama();
    if load_adapter(&mut model, &dir).is_ok() {
        let _ = CausalLm::logits(&model, &batch(model.vocab_size()));
    }
}

/// `tokenizer.json`: loaded as a run loads it, then used on a text, a pair and a decode.
pub fn tokenizer(data: &[u8]) {
    let dir = workdir("tokenizer", &[]);
    write(&dir.join(balora_io::TOKENIZER_FILE), data);
    let Ok(tok) = load_tokenizer(&dir) else {
        return;
    };
    if let Ok(enc) = tok.encode("Hello wörld, 12 3! <s>", true) {
        let _ = tok.decode(enc.get_ids(), false);
    }
    let _ = tok.encode(("a question?", "an answer."), true);
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "What is 2 + 2?"),
        ChatMessage::new("assistant", "4"),
    ]
}

/// A chat template (`tokenizer_config.json` → `chat_template`, as UTF-8 text): loaded,
/// then rendered with and without the generation prompt.
pub fn chat_template(data: &[u8]) {
    let dir = workdir("chat_template", &[]);
    let config = serde_json::json!({
        "chat_template": String::from_utf8_lossy(data),
        "bos_token": "<s>",
        "eos_token": {"content": "</s>"},
    });
    write(
        &dir.join("tokenizer_config.json"),
        config.to_string().as_bytes(),
    );
    if let Ok(Some(t)) = ChatTemplate::load(&dir) {
        let _ = t.render(&conversation(), true);
        let _ = t.render(&conversation()[1..2], false);
    }
}

/// The word-level tokenizer the dataset harnesses tokenise with.
fn data_tokenizer() -> tokenizers::Tokenizer {
    load_tokenizer(&fixture("data-tokenizer")).expect("the harness tokenizer loads")
}

fn chatml() -> ChatTemplate {
    ChatTemplate::load(&fixture("data-tokenizer"))
        .expect("the harness template loads")
        .expect("the harness tokenizer has a chat template")
}

/// NLG / chat JSONL: read, then tokenised with the Alpaca format and a chat template.
pub fn nlg_jsonl(data: &[u8]) {
    let dir = workdir("nlg_jsonl", &[]);
    let path = dir.join("train.jsonl");
    write(&path, data);
    let Ok(records) = read_nlg_jsonl(&path) else {
        return;
    };
    let tok = data_tokenizer();
    for format in [PromptFormat::Alpaca, PromptFormat::Chat(chatml())] {
        let _ = tokenize_nlg(&records, &tok, &format, 16, 2);
        if let Some(r) = records.first() {
            let _ = format.prompt_ids(&tok, r);
        }
    }
}

fn nlu(data: &[u8], ext: &str) {
    let dir = workdir(&format!("nlu_{ext}"), &[]);
    let path = dir.join(format!("train.{ext}"));
    write(&path, data);
    let Ok(records) = read_nlu(&path) else {
        return;
    };
    let labels = LabelSet::from_records(&records);
    let _ = tokenize_nlu(&records, &data_tokenizer(), &labels, 16, &path);
}

/// NLU JSONL (`text`, optional `text_pair`, `label`): read, labelled, tokenised.
pub fn nlu_jsonl(data: &[u8]) {
    nlu(data, "jsonl");
}

/// NLU TSV with a header row.
pub fn nlu_tsv(data: &[u8]) {
    nlu(data, "tsv");
}

/// NLU CSV with a header row (quoted fields).
pub fn nlu_csv(data: &[u8]) {
    nlu(data, "csv");
}

/// A `finetune --config` TOML file: parsed and checked as the command line does.
pub fn run_config(data: &[u8]) {
    let dir = workdir("run_config", &[]);
    let path = dir.join("run.toml");
    write(&path, data);
    if let Ok(config) = FinetuneConfig::resolve(Some(&path), serde_json::Value::Null) {
        let _ = config.loop_config(10, 1e-4, 4);
    }
}

/// An experiment grid's TOML file.
pub fn experiment_config(data: &[u8]) {
    let dir = workdir("experiment_config", &[]);
    let path = dir.join("grid.toml");
    write(&path, data);
    if let Ok(config) = ExperimentConfig::read(&path) {
        let _ = config.selection_runs();
    }
}

/// The LoRA-adapted tiny Llama a checkpoint is resumed onto (built once).
fn trainee() -> LlamaForCausalLM {
    SCRATCH.with_borrow_mut(|s| {
        s.trainee
            .get_or_insert_with(|| {
                let device = cpu().autodiff();
                let base = LlamaForCausalLM::from_pretrained(
                    &model_fixture("tiny-llama"),
                    &device,
                    DType::F32,
                )
                .expect("the tiny Llama fixture loads");
                let cfg = LoraConfig::new(2, TargetModules::names(["q_proj", "v_proj"]));
                inject(base, &cfg).expect("LoRA on the tiny Llama").0
            })
            .clone()
    })
}

/// The trainer a checkpoint is resumed into: the adapted tiny Llama on four examples, three
/// steps of two examples, writing into `out`.
fn checkpoint_trainer(
    out: &Path,
) -> Result<Trainer<LlamaForCausalLM, NlgObjective<LlamaForCausalLM>>, balora_train::TrainError> {
    let model = trainee();
    let objective = NlgObjective::new(None, &model);
    let examples: Vec<Example> = (0..4u32)
        .map(|i| Example {
            ids: vec![1, 2 + i, 3, 4],
            labels: vec![-100, -100, 3, 4],
            token_types: None,
        })
        .collect();
    let config = LoopConfig {
        max_steps: 3,
        batch_size: 2,
        ..LoopConfig::default()
    };
    Trainer::new(
        model,
        objective,
        examples,
        0,
        config,
        out,
        &cpu().autodiff(),
    )
}

/// A training checkpoint folder (`trainer_state.json`, `trainer_state.safetensors`: two
/// files) that `latest` names: resumed onto the adapted tiny Llama, then one step trained.
pub fn checkpoint(data: &[u8]) {
    let (state, tensors) = two_files(data);
    let out = workdir("checkpoint", &[]).join("run");
    let ckpt = out.join("checkpoint-1");
    std::fs::create_dir_all(&ckpt).expect("scratch folder");
    write(&out.join("latest"), b"checkpoint-1");
    write(&ckpt.join("trainer_state.json"), state);
    write(&ckpt.join("trainer_state.safetensors"), tensors);
    let Ok(mut trainer) = checkpoint_trainer(&out) else {
        return;
    };
    if let Ok(true) = trainer.resume()
        && !trainer.is_done()
    {
        let _ = trainer.step();
    }
}
