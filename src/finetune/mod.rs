//! Fine-tuning runs: a [`FinetuneConfig`] in; the adapter in PEFT's format (`adapter/`),
//! `metrics.jsonl`, `timing.jsonl`, `loss.png`, `summary.json`, the latest checkpoint and an
//! optional merged checkpoint out. The architecture comes from the checkpoint
//! ([`crate::auto`]), the method's parts from [`Method`], the loop from [`Trainer`] — this is
//! what the `finetune` example (and an experiment grid) runs.

mod config;
mod resolve;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use balora_adapters::{
    AdapterError, AdapterSlots, InjectionReport, LoraConfig, clear_variants, inject,
};
use balora_io::{
    ChatTemplate, IoError, MergeOptions, SaveOptions, TaskType, load_adapter, load_tokenizer,
    save_adapter, save_merged,
};
use balora_losses::LossError;
use balora_losses::task::causal_lm_loss;
use balora_model::{CausalLm, GenerationConfig, ModelError, SequenceClassifier};
use balora_train::data::{
    Example, LabelSet, PromptFormat, check_examples, collate, read_nlg_jsonl, read_nlu,
    tokenize_nlg, tokenize_nlu,
};
use balora_train::eval::{answer_matches, classification_metrics};
use balora_train::metrics::peak_rss_mb;
use balora_train::{
    LoopConfig, Method, NlgObjective, NluObjective, Objective, RunSummary, TrainError, Trainer,
};
use burn::module::Module;
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::auto::{Architecture, AutoCausalLm, AutoSequenceClassifier};
use crate::device::{DeviceError, parse_device};
use crate::experiment::PooledFeatures;

pub use config::{
    DtypeName, FinetuneConfig, MethodName, Preset, ScheduleName, TaskKind, TeacherSource,
};

/// A run could not be set up or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A run file (or the command line) that does not parse into settings.
    #[error("{path}: {reason}")]
    File {
        /// The TOML file, or "the command line".
        path: PathBuf,
        /// The parser's message (naming the key).
        reason: String,
    },
    /// A setting no run can use.
    #[error("invalid setting {key} = {value}: {reason}")]
    Setting {
        /// The setting's name, as in the TOML file and on the command line.
        key: &'static str,
        /// The value it was given.
        value: String,
        /// What it must be instead.
        reason: String,
    },
    /// The `device` setting names no device this build can open.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The checkpoint does not load (a missing or mis-shaped tensor, an unsupported
    /// `config.json`) or the model cannot run the batch.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Reading the tokenizer or an adapter, or writing the run's files.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The data files, the loop (a non-finite loss) or a checkpoint to resume from.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The adapter settings (rank, targets matching no layer, PiSSA on a layer it cannot
    /// decompose).
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// The regularisers' settings (a preset the task does not define, a λ out of range).
    #[error(transparent)]
    Loss(#[from] LossError),
}

fn setting(key: &'static str, value: impl fmt::Display, reason: &str) -> FinetuneError {
    FinetuneError::Setting {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Held-out scores: accuracy always, macro-F1 and MCC for classification.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Fraction correct.
    pub accuracy: f64,
    /// Macro-averaged F1 (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    /// Matthews correlation (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc: Option<f64>,
    /// Held-out response loss: the mean cross-entropy per response token (causal LMs). It moves
    /// long before a small model's answer accuracy does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_loss: Option<f64>,
}

impl fmt::Display for Scores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accuracy {:.1}%", 100.0 * self.accuracy)?;
        if let Some(v) = self.macro_f1 {
            write!(f, ", macro-F1 {v:.3}")?;
        }
        if let Some(v) = self.mcc {
            write!(f, ", MCC {v:.3}")?;
        }
        if let Some(v) = self.response_loss {
            write!(f, ", response loss {v:.3}")?;
        }
        Ok(())
    }
}

/// What a run did: `summary.json` in the run directory ([`FinetuneReport::read`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    /// The task.
    pub task: TaskKind,
    /// The method.
    pub method: MethodName,
    /// Optimizer steps done in total (0 for an evaluation only).
    pub steps: usize,
    /// Layers that received an adapter.
    pub adapted_layers: usize,
    /// Trainable adapter parameters (a classifier head not counted).
    pub trainable_params: usize,
    /// Held-out examples evaluated.
    pub eval_examples: usize,
    /// Scores before fine-tuning (`None` for an evaluation only).
    pub eval_before: Option<Scores>,
    /// Scores of the trained (or loaded) adapter.
    pub eval_after: Scores,
    /// Mean tokens per second of this process's steps.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process.
    pub peak_rss_mb: f64,
    /// The last step's total loss.
    pub final_loss: Option<f64>,
    /// The run directory.
    pub output: PathBuf,
}

/// The run directory's `summary.json`.
pub const SUMMARY: &str = "summary.json";

/// Held-out prompts generated together, as one left-padded batch with the KV cache: decoding a
/// small model on a CPU is bound by launching each layer for one token, which eight rows share
/// (the `[8, T, V]` logits of the prompt forward stay well under a GB at SmolLM2's
/// vocabulary for prompts of a few hundred tokens).
const GENERATION_BATCH: usize = 8;

impl FinetuneReport {
    /// Read a run's `summary.json`.
    pub fn read(path: &Path) -> Result<Self, IoError> {
        balora_io::fs::read_json(path)
    }

    /// Write it (atomically) to `path`.
    pub fn write(&self, path: &Path) -> Result<(), IoError> {
        balora_io::fs::write_json(path, self)
    }
}

/// Run `config`: train (or, with `eval_only`, evaluate) and write the run directory.
/// `notes` receives what a user should see along the way (scores before training, truncated
/// examples, the adapter's size); the progress bar draws itself.
pub fn finetune(
    config: &FinetuneConfig,
    notes: &mut dyn FnMut(&str),
) -> Result<FinetuneReport, FinetuneError> {
    let run = Run::new(config)?;
    match config.task {
        TaskKind::Nlg => run.nlg(notes),
        TaskKind::Nlu => run.nlu(notes),
    }
}

/// How a run ended, for [`Run::finish`].
struct Outcome<'r> {
    /// The trained adapter's config, injection and task type (`None`: an evaluation only).
    adapter: Option<(&'r LoraConfig, &'r InjectionReport, TaskType)>,
    summary: Option<&'r RunSummary>,
    eval_examples: usize,
    before: Option<Scores>,
    after: Scores,
    merge: MergeOptions,
}

impl<'r> Outcome<'r> {
    fn evaluated(eval_examples: usize, after: Scores, merge: MergeOptions) -> Self {
        Self {
            adapter: None,
            summary: None,
            eval_examples,
            before: None,
            after,
            merge,
        }
    }
}

/// A run's resolved settings.
struct Run<'a> {
    config: &'a FinetuneConfig,
    device: Device,
    dtype: DType,
    model_dir: PathBuf,
    train: PathBuf,
    eval: PathBuf,
    output: PathBuf,
    method: Method,
    architecture: Architecture,
}

fn required(path: &Option<PathBuf>, key: &'static str) -> Result<PathBuf, FinetuneError> {
    path.clone()
        .ok_or_else(|| setting(key, "none", "a path is required"))
}

impl<'a> Run<'a> {
    fn new(config: &'a FinetuneConfig) -> Result<Self, FinetuneError> {
        let method = config.validate()?;
        let device = parse_device(&config.device, true)?;
        let dtype = match config.dtype {
            DtypeName::F32 => DType::F32,
            DtypeName::Bf16 if device.supports_dtype(DType::BF16) => DType::BF16,
            DtypeName::Bf16 => {
                return Err(setting("dtype", "bf16", "this device does not support it"));
            }
        };
        let model_dir = required(&config.model, "model")?;
        let architecture = Architecture::detect(&model_dir)?;
        if architecture.is_causal_lm() != (config.task == TaskKind::Nlg) {
            return Err(setting(
                "task",
                config.task,
                &format!(
                    "{} is a {:?} checkpoint: nlg needs a decoder (llama, gpt2), nlu an \
                     encoder (bert, roberta, deberta-v2)",
                    model_dir.display(),
                    architecture
                ),
            ));
        }
        // the trainer makes the output folder and refuses one whose parent is missing; the
        // default `runs/` is this command's own, so it is made here
        let output = match &config.output {
            Some(output) => output.clone(),
            None => {
                let runs = PathBuf::from("runs");
                std::fs::create_dir_all(&runs).map_err(|source| IoError::Fs {
                    path: runs.clone(),
                    source,
                })?;
                runs.join(format!("{}-{}", config.task, config.method))
            }
        };
        // refused now, not after the model is loaded
        balora_train::create_output(&output)?;
        Ok(Self {
            config,
            device,
            dtype,
            train: required(&config.train, "train")?,
            eval: required(&config.eval, "eval")?,
            model_dir,
            output,
            method,
            architecture,
        })
    }

    /// The adapter on the architecture's layers (default: every linear layer).
    fn adapter_config(&self) -> Result<LoraConfig, FinetuneError> {
        let default = self.architecture.all_linear_targets();
        self.config.adapter_config(&self.method, default)
    }

    /// Train with the standard observers, resuming when asked.
    fn train<M, O>(
        &self,
        model: M,
        objective: O,
        examples: Vec<Example>,
        pad: u32,
        loop_config: LoopConfig,
    ) -> Result<(M, RunSummary), FinetuneError>
    where
        M: Module + AdapterSlots,
        O: Objective<M>,
    {
        let mut trainer = Trainer::new(
            model,
            objective,
            examples,
            pad,
            loop_config,
            &self.output,
            &self.device,
        )?
        .with_default_observers();
        if self.config.resume {
            trainer.resume()?;
        }
        let (mut model, summary) = trainer.fit()?;
        clear_variants(&mut model);
        Ok((model, summary))
    }

    /// Save the adapter and `summary.json`; export the merged checkpoint when asked.
    fn finish<M: AdapterSlots>(
        &self,
        model: &M,
        outcome: Outcome<'_>,
        notes: &mut dyn FnMut(&str),
    ) -> Result<FinetuneReport, FinetuneError> {
        let Outcome {
            adapter,
            summary,
            eval_examples,
            before,
            after,
            merge,
        } = outcome;
        if let Some((cfg, _, task_type)) = adapter {
            let options = SaveOptions {
                base_model_name_or_path: Some(self.model_dir.display().to_string()),
                task_type: Some(task_type),
                ..SaveOptions::default()
            };
            save_adapter(model, cfg, &self.output.join("adapter"), &options)?;
        }
        if let Some(dir) = &self.config.merge_to {
            let m = save_merged(model, &self.model_dir, dir, &merge)?;
            notes(&format!(
                "merged checkpoint: {} updated weights, {} shard(s), {:.0} MB in {}",
                m.merged,
                m.shards.len(),
                m.total_bytes as f64 / 1e6,
                dir.display()
            ));
        }
        let report = FinetuneReport {
            task: self.config.task,
            method: self.config.method,
            steps: summary.map_or(0, |s| s.steps),
            adapted_layers: adapter.map_or(0, |(_, r, _)| r.adapted.len()),
            trainable_params: adapter.map_or(0, |(_, r, _)| r.trainable_params),
            eval_examples,
            eval_before: before,
            eval_after: after,
            tokens_per_s: summary.map_or(0.0, |s| s.tokens_per_s),
            peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
            final_loss: summary.and_then(|s| s.last.as_ref().map(|m| m.loss)),
            output: self.output.clone(),
        };
        if adapter.is_some() {
            report.write(&self.output.join(SUMMARY))?;
        }
        Ok(report)
    }

    fn adapted_note(&self, report: &InjectionReport, seconds: f64) -> String {
        format!(
            "{}: {} adapted layers, {} trainable parameters, initialised in {seconds:.2} s",
            self.config.method,
            report.adapted.len(),
            report.trainable_params
        )
    }

    fn nlg(&self, notes: &mut dyn FnMut(&str)) -> Result<FinetuneReport, FinetuneError> {
        let c = self.config;
        let tokenizer = load_tokenizer(&self.model_dir)?;
        let format = match ChatTemplate::load(&self.model_dir)? {
            Some(t) => PromptFormat::Chat(t),
            None => PromptFormat::Alpaca,
        };
        let mut base = AutoCausalLm::from_pretrained(&self.model_dir, &self.device, self.dtype)?;
        let eos = *base.eos_ids().first().ok_or_else(|| {
            setting(
                "model",
                self.model_dir.display(),
                "config.json has no eos_token_id",
            )
        })?;
        let pad = base.pad_id().unwrap_or(eos);
        let mut eval_records = read_nlg_jsonl(&self.eval)?;
        eval_records.truncate(c.eval_limit.unwrap_or(8));
        let max_len = c.max_len.unwrap_or(256);
        let (eval_examples, _) = tokenize_nlg(&eval_records, &tokenizer, &format, max_len, eos)?;
        check_examples(
            &eval_examples,
            base.vocab_size(),
            base.max_len(),
            &self.eval,
        )?;
        let evaluate = |model: &AutoCausalLm| -> Result<Scores, FinetuneError> {
            let model = model.valid();
            let response_loss = response_loss(&model, &eval_examples, pad)?;
            let mut correct = 0;
            let greedy = GenerationConfig::greedy(48, vec![eos]);
            for records in eval_records.chunks(GENERATION_BATCH) {
                let prompts = records
                    .iter()
                    .map(|r| format.prompt_ids(&tokenizer, r))
                    .collect::<Result<Vec<_>, _>>()?;
                let outs = model.generate_batch(&prompts, &greedy, pad)?;
                for (r, out) in records.iter().zip(outs) {
                    let text = tokenizer
                        .decode(&out, true)
                        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
                    let gold = r.answer.as_ref().unwrap_or(&r.response);
                    correct += usize::from(answer_matches(&text, gold));
                }
            }
            Ok(Scores {
                accuracy: correct as f64 / eval_records.len().max(1) as f64,
                macro_f1: None,
                mcc: None,
                response_loss: Some(response_loss),
            })
        };
        let n_eval = eval_records.len();
        if let Some(adapter) = &c.eval_only {
            load_adapter(&mut base, adapter)?;
            let after = evaluate(&base)?;
            let outcome = Outcome::evaluated(n_eval, after, MergeOptions::default());
            return self.finish(&base, outcome, notes);
        }
        let mut records = read_nlg_jsonl(&self.train)?;
        records.truncate(c.train_limit.unwrap_or(usize::MAX));
        let (examples, truncated) = tokenize_nlg(&records, &tokenizer, &format, max_len, eos)?;
        check_examples(&examples, base.vocab_size(), base.max_len(), &self.train)?;
        if truncated > 0 {
            notes(&format!(
                "warning: {truncated} of {} examples were truncated to {max_len} tokens",
                records.len()
            ));
        }
        let teacher = match c.teacher {
            TeacherSource::Checkpoint => {
                let dir = c.teacher_model.as_ref().unwrap_or(&self.model_dir);
                notes(&format!(
                    "teacher: a second model loaded from {}",
                    dir.display()
                ));
                Some(AutoCausalLm::from_pretrained(
                    dir,
                    &self.device,
                    self.dtype,
                )?)
            }
            TeacherSource::Adapter => None,
        };
        let cfg = self.adapter_config()?;
        let lc = self.config.loop_config(examples.len(), 2e-4, 4);
        let before = c.eval_before.then(|| evaluate(&base)).transpose()?;
        if let Some(before) = &before {
            notes(&format!("before fine-tuning: {before} ({n_eval} problems)"));
        }
        let t0 = Instant::now();
        let (model, report) = inject(base, &cfg)?;
        notes(&self.adapted_note(&report, t0.elapsed().as_secs_f64()));
        let objective = match (self.method.regularizer(lc.max_steps)?, teacher) {
            (Some(loss), Some(teacher)) => NlgObjective::with_teacher(loss, teacher),
            (balora, _) => NlgObjective::new(balora, &model),
        };
        let (model, summary) = self.train(model, objective, examples, pad, lc)?;
        let outcome = Outcome {
            adapter: Some((&cfg, &report, TaskType::CausalLm)),
            summary: Some(&summary),
            eval_examples: n_eval,
            before,
            after: evaluate(&model)?,
            merge: MergeOptions::default(),
        };
        self.finish(&model, outcome, notes)
    }

    fn nlu(&self, notes: &mut dyn FnMut(&str)) -> Result<FinetuneReport, FinetuneError> {
        let c = self.config;
        let tokenizer = load_tokenizer(&self.model_dir)?;
        let mut train_records = read_nlu(&self.train)?;
        train_records.truncate(c.train_limit.unwrap_or(usize::MAX));
        let labels = LabelSet::from_records(&train_records);
        let mut eval_records = read_nlu(&self.eval)?;
        eval_records.truncate(c.eval_limit.unwrap_or(500));
        let max_len = c.max_len.unwrap_or(128);
        let (examples, _) =
            tokenize_nlu(&train_records, &tokenizer, &labels, max_len, &self.train)?;
        let (eval_examples, _) =
            tokenize_nlu(&eval_records, &tokenizer, &labels, max_len, &self.eval)?;
        let mut base = AutoSequenceClassifier::from_pretrained(
            &self.model_dir,
            Some(labels.len()),
            c.seed,
            &self.device,
            self.dtype,
        )?;
        check_examples(&examples, base.vocab_size(), base.max_len(), &self.train)?;
        check_examples(
            &eval_examples,
            base.vocab_size(),
            base.max_len(),
            &self.eval,
        )?;
        let evaluate = |model: &AutoSequenceClassifier| {
            let model = model.valid();
            let (mut predicted, mut gold) = (Vec::new(), Vec::new());
            for chunk in eval_examples.chunks(32) {
                let refs: Vec<_> = chunk.iter().collect();
                let (batch, y) = collate(&refs, 0, false);
                let logits = model.logits(&batch);
                let pred = logits.argmax(1).into_data();
                predicted.extend(pred.iter::<i64>().map(|p| p as usize));
                gold.extend(y.iter().map(|&g| g as usize));
            }
            let m = classification_metrics(&predicted, &gold, labels.len());
            Scores {
                accuracy: m.accuracy,
                macro_f1: Some(m.macro_f1),
                mcc: Some(m.mcc),
                response_loss: None,
            }
        };
        let n_eval = eval_examples.len();
        let merge = classifier_config(&base, &labels);
        let write_features = |model: &AutoSequenceClassifier| match &c.features_to {
            Some(path) => Ok(pooled_features(model, &eval_examples, &labels).write(path)?),
            None => Ok::<(), FinetuneError>(()),
        };
        if let Some(adapter) = &c.eval_only {
            load_adapter(&mut base, adapter)?;
            let after = evaluate(&base);
            write_features(&base)?;
            return self.finish(&base, Outcome::evaluated(n_eval, after, merge), notes);
        }
        let cfg = self.adapter_config()?;
        let lc = self.config.loop_config(examples.len(), 5e-4, 16);
        let before = c.eval_before.then(|| evaluate(&base));
        if let Some(before) = &before {
            notes(&format!("before fine-tuning: {before}"));
        }
        let t0 = Instant::now();
        let (model, report) = inject(base, &cfg)?;
        notes(&self.adapted_note(&report, t0.elapsed().as_secs_f64()));
        let objective = NluObjective::new(self.method.regularizer(lc.max_steps)?, &model);
        let (model, summary) = self.train(model, objective, examples, 0, lc)?;
        write_features(&model)?;
        let outcome = Outcome {
            adapter: Some((&cfg, &report, TaskType::SeqCls)),
            summary: Some(&summary),
            eval_examples: n_eval,
            before,
            after: evaluate(&model),
            merge,
        };
        self.finish(&model, outcome, notes)
    }
}

/// The mean cross-entropy per response token of `model` on `examples` (labels −100 on the
/// prompt), in batches of 8: each batch's mean weighted by its labelled tokens.
fn response_loss(
    model: &AutoCausalLm,
    examples: &[Example],
    pad: u32,
) -> Result<f64, FinetuneError> {
    let (mut total, mut tokens) = (0.0, 0usize);
    for chunk in examples.chunks(8) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (batch, labels) = collate(&refs, pad, true);
        // the causal shift scores label t+1 at position t: the first column is never a target
        let t = batch.seq_len();
        let n = labels
            .chunks(t.max(1))
            .flat_map(|row| row.iter().skip(1))
            .filter(|&&l| l != -100)
            .count();
        let loss = causal_lm_loss(model.logits(&batch), &labels)?;
        total += loss.into_scalar::<f64>() * n as f64;
        tokens += n;
    }
    Ok(total / tokens.max(1) as f64)
}

/// The pooled vector the head reads for each of `examples`, with its gold class.
fn pooled_features(
    model: &AutoSequenceClassifier,
    examples: &[Example],
    labels: &LabelSet,
) -> PooledFeatures {
    let model = model.valid();
    let mut out = PooledFeatures {
        label_names: labels.names().to_vec(),
        labels: Vec::with_capacity(examples.len()),
        rows: Vec::with_capacity(examples.len()),
    };
    for chunk in examples.chunks(32) {
        let refs: Vec<_> = chunk.iter().collect();
        let (batch, y) = collate(&refs, 0, false);
        let pooled = model.pooled(&batch);
        let [_, d] = pooled.dims();
        let values: Vec<f32> = pooled.into_data().iter::<f32>().collect();
        out.rows
            .extend(values.chunks(d.max(1)).map(<[f32]>::to_vec));
        out.labels.extend(y.iter().map(|&g| g as usize));
    }
    out
}

/// The merged classifier's `config.json` names its task class and the trained labels.
fn classifier_config(model: &AutoSequenceClassifier, labels: &LabelSet) -> MergeOptions {
    let class = model.class_name();
    let names = labels.names().iter().enumerate();
    let id2label: serde_json::Map<_, _> = names
        .clone()
        .map(|(i, n)| (i.to_string(), n.clone().into()))
        .collect();
    let label2id: serde_json::Map<_, _> = names.map(|(i, n)| (n.clone(), i.into())).collect();
    let mut options = MergeOptions::default();
    for (k, v) in [
        ("architectures", serde_json::json!([class])),
        ("id2label", id2label.into()),
        ("label2id", label2id.into()),
    ] {
        options.config_overrides.insert(k.into(), v);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--eval-only` with the adapter a run of `config` saved under `dir/run`.
    fn evaluate_saved_adapter(config: FinetuneConfig, dir: &Path) -> FinetuneReport {
        let config = FinetuneConfig {
            eval_only: Some(dir.join("run/adapter")),
            output: Some(dir.join("eval")),
            ..config
        };
        finetune(&config, &mut |_| {}).unwrap()
    }

    fn refused(config: FinetuneConfig) -> String {
        let e = finetune(&config, &mut |_| {}).expect_err("the setting must be refused");
        e.to_string()
    }

    /// A short classification run on the real MiniLM and Rotten Tomatoes: its `summary.json`
    /// reads back as the report, and evaluating the saved adapter alone (head included) gives
    /// the scores the run reported.
    #[test]
    fn a_run_writes_what_reads_back_and_its_adapter_scores_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let asset = balora_testkit::asset;
        let config = FinetuneConfig {
            task: TaskKind::Nlu,
            model: Some(asset("models/all-MiniLM-L6-v2")),
            train: Some(asset("data/rotten_tomatoes/train.jsonl")),
            eval: Some(asset("data/rotten_tomatoes/eval.jsonl")),
            max_steps: Some(3),
            train_limit: Some(48),
            eval_limit: Some(24),
            output: Some(dir.path().join("run")),
            features_to: Some(dir.path().join("trained-features.json")),
            ..FinetuneConfig::default()
        };
        let report = finetune(&config, &mut |_| {}).unwrap();
        assert_eq!((report.steps, report.eval_examples), (3, 24));
        assert!(report.eval_before.is_some() && report.final_loss.is_some());
        let read = FinetuneReport::read(&dir.path().join("run").join(SUMMARY)).unwrap();
        assert_eq!(read, report);
        let evaluated = evaluate_saved_adapter(
            FinetuneConfig {
                features_to: Some(dir.path().join("saved-features.json")),
                ..config
            },
            dir.path(),
        );
        assert_eq!(evaluated.eval_after, report.eval_after);
        assert_eq!(evaluated.eval_before, None);
        // the pooled features: one 384-d row per evaluated example, the same from the saved
        // adapter as from the trained model
        let trained = PooledFeatures::read(&dir.path().join("trained-features.json")).unwrap();
        let saved = PooledFeatures::read(&dir.path().join("saved-features.json")).unwrap();
        assert_eq!((trained.rows.len(), trained.rows[0].len()), (24, 384));
        assert_eq!(
            (&trained.labels, &trained.label_names),
            (&saved.labels, &saved.label_names)
        );
        let diff = trained
            .rows
            .iter()
            .flatten()
            .zip(saved.rows.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "features differ by {diff}");
    }

    /// A tiny test checkpoint (`tests/fixtures/models/<fixture>`) beside a word-level tokenizer
    /// (words outside its vocabulary become `[UNK]`; `<eos>` is id 1, where config.json's eos
    /// moves).
    fn tiny_with_a_tokenizer(dir: &Path, fixture: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(fixture);
        let model = dir.join(fixture);
        std::fs::create_dir(&model).unwrap();
        std::fs::copy(
            src.join("model.safetensors"),
            model.join("model.safetensors"),
        )
        .unwrap();
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        config["eos_token_id"] = 1.into();
        config["bos_token_id"] = 1.into();
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        let words = [
            "[UNK]", "<eos>", "what", "is", "two", "plus", "three", "?", "the", "answer",
        ];
        let digits = (0..10).map(|d| d.to_string());
        let vocab: serde_json::Map<_, _> = words
            .iter()
            .map(|w| w.to_string())
            .chain(digits)
            .enumerate()
            .map(|(i, w)| (w, i.into()))
            .collect();
        let tokenizer = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [{"id": 1, "content": "<eos>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        std::fs::write(model.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        model
    }

    /// GPT-2 (fused `c_attn`, Conv1D weights, tied head) and Gemma (GeGLU, `(1 + w)` RMSNorm)
    /// fine-tune through the same entry point as Llama, chosen by config.json: BA-LoRA on
    /// peft's default targets lowers the held-out response loss, and the saved adapter alone
    /// scores what the run reported.
    #[test]
    fn gpt2_and_gemma_fine_tune_and_their_adapters_score_the_same() {
        for fixture in ["tiny-gpt2", "tiny-gemma"] {
            let dir = tempfile::tempdir().unwrap();
            let model = tiny_with_a_tokenizer(dir.path(), fixture);
            let data = dir.path().join("train.jsonl");
            let row = r#"{"query": "what is two plus three ?", "response": "the answer is 5", "answer": "5"}"#;
            std::fs::write(&data, format!("{row}\n").repeat(8)).unwrap();
            let config = FinetuneConfig {
                model: Some(model),
                train: Some(data.clone()),
                eval: Some(data),
                max_steps: Some(12),
                lr: Some(1e-2),
                eval_limit: Some(2),
                output: Some(dir.path().join("run")),
                ..FinetuneConfig::default()
            };
            let report = finetune(&config, &mut |_| {}).unwrap();
            assert_eq!((report.method, report.steps), (MethodName::Balora, 12));
            assert!(report.adapted_layers > 0, "{fixture}");
            let loss = |s: &Scores| s.response_loss.unwrap();
            let before = loss(report.eval_before.as_ref().unwrap());
            let after = loss(&report.eval_after);
            assert!(
                after < before,
                "{fixture}: held-out response loss {before} → {after}"
            );
            let evaluated = evaluate_saved_adapter(config, dir.path());
            // the file holds PiSSA converted to plain LoRA on the original base
            // (docs/methods.md, "PiSSA conversion on save"): equal in exact arithmetic,
            // within f32 rounding here
            assert_eq!(evaluated.eval_after.accuracy, report.eval_after.accuracy);
            let reloaded = loss(&evaluated.eval_after);
            assert!(
                (reloaded - after).abs() < 1e-5 * after,
                "{fixture}: {reloaded} vs {after}"
            );
        }
    }

    /// DeBERTa-v3 is chosen by config.json for classification: BA-LoRA (NLU terms, teacher
    /// included) with the pooler and classifier trained learns three one-word classes, and
    /// the saved adapter (head included) scores what the run reported.
    #[test]
    fn deberta_fine_tunes_for_classification_and_its_adapter_scores_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_with_a_tokenizer(dir.path(), "tiny-deberta-v3-cls");
        let data = dir.path().join("train.jsonl");
        let rows: String = [("two", "a"), ("three", "b"), ("plus", "c")]
            .iter()
            .map(|(text, label)| format!("{{\"text\": \"{text} ?\", \"label\": \"{label}\"}}\n"))
            .collect::<String>()
            .repeat(4);
        std::fs::write(&data, rows).unwrap();
        let config = FinetuneConfig {
            task: TaskKind::Nlu,
            model: Some(model),
            train: Some(data.clone()),
            eval: Some(data),
            max_steps: Some(20),
            lr: Some(1e-2),
            batch_size: Some(6),
            output: Some(dir.path().join("run")),
            ..FinetuneConfig::default()
        };
        let report = finetune(&config, &mut |_| {}).unwrap();
        assert_eq!((report.method, report.steps), (MethodName::Balora, 20));
        let before = report.eval_before.as_ref().unwrap().accuracy;
        assert!(
            report.eval_after.accuracy > before,
            "accuracy {before} → {:?}",
            report.eval_after
        );
        let evaluated = evaluate_saved_adapter(config, dir.path());
        assert_eq!(evaluated.eval_after.accuracy, report.eval_after.accuracy);
    }

    #[test]
    fn settings_no_run_can_use_are_refused_before_anything_loads() {
        let e = refused(FinetuneConfig {
            device: "tpu".into(),
            ..FinetuneConfig::default()
        });
        assert!(e.contains("tpu") && e.contains("cuda"), "{e}");
        let e = refused(FinetuneConfig {
            task: TaskKind::Nlu,
            teacher: TeacherSource::Checkpoint,
            ..FinetuneConfig::default()
        });
        assert!(e.contains("task nlg"), "{e}");
        let e = refused(FinetuneConfig {
            teacher_model: Some("base".into()),
            ..FinetuneConfig::default()
        });
        assert!(e.contains("teacher_model = base"), "{e}");
        let e = refused(FinetuneConfig {
            task: TaskKind::Nlu,
            preset: Preset::Iclr2026,
            ..FinetuneConfig::default()
        });
        assert!(e.contains("iclr2026"), "{e}");
        let e = refused(FinetuneConfig::default());
        assert!(e.contains("model") && e.contains("required"), "{e}");
    }
}
