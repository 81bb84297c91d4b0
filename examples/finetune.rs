//! Fine-tune a Hugging Face checkpoint with LoRA, PiSSA, BA-LoRA or MonteCLoRA.
//!
//! ```text
//! cargo run --release --example finetune                      # SmolLM2-135M + ASDiv, BA-LoRA, CPU
//! cargo run --release --example finetune -- --task nlu        # all-MiniLM-L6-v2 + Rotten Tomatoes
//! cargo run --release --example finetune -- --config run.toml # the same options from a TOML file
//! cargo run --release --features cuda --example finetune -- --device cuda:0
//! ```
//!
//! Writes `runs/<name>/`: the adapter in PEFT format (`adapter/`), `metrics.jsonl`, `loss.png`,
//! `summary.json` and the latest checkpoint (`--resume` continues from it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
#[path = "common/assets.rs"]
mod assets;

use assets::{assets, ensure_default};
use balora::adapters::{
    AdapterSlots, ForwardMode, InitMode, LoraConfig, MonteCloraConfig, TargetModules,
    clear_monteclora, inject,
};
use balora::burn::module::Module;
use balora::burn::tensor::{DType, Device};
use balora::io::{
    ChatTemplate, MergeOptions, SaveOptions, TaskType, load_adapter, load_tokenizer, save_adapter,
    save_merged,
};
use balora::losses::{BaLoraLoss, RegularizerConfig, Task};
use balora::train::data::{
    LabelSet, PromptFormat, collate, read_nlg_jsonl, read_nlu, tokenize_nlg, tokenize_nlu,
};
use balora::train::eval::{answer_matches, classification_metrics};
use balora::train::metrics::peak_rss_mb;
use balora::train::optim::AdamWConfig;
use balora::train::schedule::LrSchedule;
use balora::train::{LoopConfig, NlgObjective, NluObjective, Teacher, train};
use balora_bert::BertForSequenceClassification;
use balora_llama::LlamaForCausalLM;
use balora_model::{CausalLm, GenerationConfig, SequenceClassifier};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// Every option, from the command line or (same names) a TOML file given with `--config`;
/// the command line wins.
#[derive(Parser, Debug, Clone, Default, Serialize, Deserialize)]
#[command(
    version,
    about = "Fine-tune a language model with LoRA / PiSSA / BA-LoRA / MonteCLoRA"
)]
#[serde(default, deny_unknown_fields)]
struct Options {
    /// TOML file with any of these options.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// nlg (causal LM on instruction data) or nlu (sequence classification).
    #[arg(long)]
    task: Option<String>,
    /// lora | pissa | balora | monteclora.
    #[arg(long)]
    method: Option<String>,
    /// BA-LoRA preset: paper | iclr2026.
    #[arg(long)]
    preset: Option<String>,
    /// Override λ1 (consistency).
    #[arg(long)]
    lambda_consistency: Option<f64>,
    /// Override λ2 (diversity).
    #[arg(long)]
    lambda_diversity: Option<f64>,
    /// Override λ3 (SVD).
    #[arg(long)]
    lambda_svd: Option<f64>,
    /// BA-LoRA's teacher: adapter (the model with its frozen initial adapter, no second model
    /// in memory) | checkpoint (a separately loaded pretrained model, as the ICLR 2026 code).
    #[arg(long)]
    teacher: Option<String>,
    /// The pretrained model of `--teacher checkpoint` (default: --model).
    #[arg(long)]
    teacher_model: Option<PathBuf>,
    /// Hugging Face model directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data (JSONL for NLG; JSONL/TSV/CSV for NLU).
    #[arg(long)]
    train: Option<PathBuf>,
    /// Held-out data for evaluation.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Adapter rank r.
    #[arg(long)]
    rank: Option<usize>,
    /// lora_alpha.
    #[arg(long)]
    alpha: Option<f64>,
    /// rsLoRA scaling α/√r.
    #[arg(long)]
    rslora: Option<bool>,
    /// Adapter dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// Comma-separated module names (or a regex with --target-regex).
    #[arg(long)]
    target_modules: Option<String>,
    /// Treat --target-modules as a regex over full module paths.
    #[arg(long)]
    target_regex: Option<bool>,
    /// PiSSA's randomized SVD power iterations (0: full SVD).
    #[arg(long)]
    pissa_niter: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// cosine | linear | constant.
    #[arg(long)]
    schedule: Option<String>,
    /// Warmup fraction of the steps.
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// AdamW β1.
    #[arg(long)]
    beta1: Option<f64>,
    /// AdamW β2.
    #[arg(long)]
    beta2: Option<f64>,
    /// AdamW ε.
    #[arg(long)]
    eps: Option<f64>,
    /// AdamW decoupled weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Global gradient-norm clipping (0 disables).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Maximum tokens per example (longer ones are truncated, with a count).
    #[arg(long)]
    max_len: Option<usize>,
    /// Optimizer steps (overrides --epochs; default 20, a short demonstration run).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Epochs over the training set (used when --max-steps is absent).
    #[arg(long)]
    epochs: Option<f64>,
    /// Use only the first N training examples.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Evaluate on the first N held-out examples.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long)]
    save_every: Option<usize>,
    /// End this process after step N (with a checkpoint); continue later with --resume.
    #[arg(long)]
    stop_at_step: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// cpu | wgpu | wgpu:cpu | cuda[:N].
    #[arg(long)]
    device: Option<String>,
    /// f32 | bf16 (bf16 where the backend supports it).
    #[arg(long)]
    dtype: Option<String>,
    /// Run directory (default runs/<task>-<method>).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Continue from the run directory's latest checkpoint.
    #[arg(long)]
    #[serde(skip)]
    resume: bool,
    /// Only evaluate this saved adapter directory.
    #[arg(long)]
    eval_only: Option<PathBuf>,
    /// Also write a full Hugging Face checkpoint with the adapter merged into the weights
    /// (the base's dtype, sharded above 5 GB, tokenizer and configs copied) to this directory.
    #[arg(long)]
    merge_to: Option<PathBuf>,
}

macro_rules! merge {
    ($cli:expr, $file:expr, $($f:ident),*) => { $( if $cli.$f.is_none() { $cli.$f = $file.$f.clone(); } )* };
}

impl Options {
    fn resolve(mut self) -> Result<Self> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file: Options =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            merge!(
                self,
                file,
                task,
                method,
                preset,
                lambda_consistency,
                lambda_diversity,
                lambda_svd,
                teacher,
                teacher_model,
                model,
                train,
                eval,
                rank,
                alpha,
                rslora,
                dropout,
                target_modules,
                target_regex,
                pissa_niter,
                lr,
                schedule,
                warmup_ratio,
                beta1,
                beta2,
                eps,
                weight_decay,
                batch_size,
                grad_accum,
                max_grad_norm,
                max_len,
                max_steps,
                epochs,
                train_limit,
                eval_limit,
                save_every,
                stop_at_step,
                seed,
                device,
                dtype,
                output,
                eval_only,
                merge_to
            );
        }
        Ok(self)
    }

    fn task(&self) -> Result<Task> {
        match self.task.as_deref().unwrap_or("nlg") {
            "nlg" => Ok(Task::Nlg),
            "nlu" => Ok(Task::Nlu),
            other => bail!("unknown --task {other:?}: expected nlg or nlu"),
        }
    }

    /// Whether BA-LoRA's teacher is a separately loaded checkpoint (spec Decision 4).
    fn teacher_checkpoint(&self, task: Task, method: &str) -> Result<bool> {
        let checkpoint = match self.teacher.as_deref().unwrap_or("adapter") {
            "adapter" => false,
            "checkpoint" => true,
            other => bail!("unknown --teacher {other:?}: expected adapter or checkpoint"),
        };
        if !checkpoint && let Some(dir) = &self.teacher_model {
            bail!(
                "--teacher-model {} is only read with --teacher checkpoint",
                dir.display()
            );
        }
        if checkpoint && (task != Task::Nlg || method != "balora") {
            bail!(
                "--teacher checkpoint applies to --method balora on --task nlg (a classifier's \
                 new head has no pretrained teacher)"
            );
        }
        Ok(checkpoint)
    }

    fn method(&self) -> Result<&str> {
        match self.method.as_deref().unwrap_or("balora") {
            m @ ("lora" | "pissa" | "balora" | "monteclora") => Ok(m),
            other => {
                bail!("unknown --method {other:?}: expected lora, pissa, balora or monteclora")
            }
        }
    }
}

fn adapter_config(o: &Options, task: Task, method: &str) -> Result<LoraConfig> {
    let default_targets = match task {
        Task::Nlg => "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        Task::Nlu => "query,key,value,dense",
    };
    let targets = o
        .target_modules
        .clone()
        .unwrap_or_else(|| default_targets.into());
    let targets = if o.target_regex.unwrap_or(false) {
        TargetModules::Regex(targets)
    } else {
        TargetModules::names(targets.split(',').map(str::trim).filter(|s| !s.is_empty()))
    };
    let r = o.rank.unwrap_or(8);
    let init = match (method, o.pissa_niter.unwrap_or(4)) {
        ("lora" | "monteclora", _) => InitMode::Gaussian,
        (_, 0) => InitMode::Pissa,
        (_, niter) => InitMode::PissaFast { niter },
    };
    let config = LoraConfig::new(r, targets)
        .with_lora_alpha(o.alpha.unwrap_or(2.0 * r as f64))
        .with_use_rslora(o.rslora.unwrap_or(false))
        .with_lora_dropout(o.dropout.unwrap_or(0.0))
        .with_init(init)
        .with_seed(o.seed.unwrap_or(42))
        .with_monteclora((method == "monteclora").then(MonteCloraConfig::new));
    config.validate()?;
    Ok(config)
}

fn regularizer(o: &Options, task: Task, method: &str, steps: usize) -> Result<Option<BaLoraLoss>> {
    if method != "balora" {
        return Ok(None);
    }
    let mut c = RegularizerConfig::preset(o.preset.as_deref().unwrap_or("paper"), task)?;
    if let Some(v) = o.lambda_consistency {
        c.lambda_consistency = v;
    }
    if let Some(v) = o.lambda_diversity {
        c.lambda_diversity = v;
    }
    if let Some(v) = o.lambda_svd {
        c.lambda_svd = v;
    }
    Ok(Some(BaLoraLoss::new(c, steps)?))
}

fn loop_config(o: &Options, steps: usize) -> Result<LoopConfig> {
    let schedule = match o.schedule.as_deref().unwrap_or("cosine") {
        "cosine" => LrSchedule::Cosine,
        "linear" => LrSchedule::Linear,
        "constant" => LrSchedule::Constant,
        other => bail!("unknown --schedule {other:?}: expected cosine, linear or constant"),
    };
    Ok(LoopConfig {
        lr: o.lr.unwrap_or(2e-4),
        schedule,
        warmup_ratio: o.warmup_ratio.unwrap_or(0.03),
        adamw: AdamWConfig {
            beta1: o.beta1.unwrap_or(0.9),
            beta2: o.beta2.unwrap_or(0.999),
            eps: o.eps.unwrap_or(1e-8),
            weight_decay: o.weight_decay.unwrap_or(0.0),
        },
        batch_size: o.batch_size.unwrap_or(4),
        grad_accum: o.grad_accum.unwrap_or(1),
        max_grad_norm: o.max_grad_norm.or(Some(1.0)).filter(|v| *v > 0.0),
        max_steps: steps,
        save_every: o.save_every.unwrap_or(0),
        seed: o.seed.unwrap_or(42),
        stop_at_step: o.stop_at_step,
    })
}

fn device_and_dtype(o: &Options) -> Result<(Device, DType)> {
    let device = balora::parse_device(o.device.as_deref().unwrap_or("cpu"), true)?;
    let dtype = match o.dtype.as_deref().unwrap_or("f32") {
        "f32" => DType::F32,
        "bf16" if device.supports_dtype(DType::BF16) => DType::BF16,
        "bf16" => bail!("this device does not support bf16; use --dtype f32"),
        other => bail!("unknown --dtype {other:?}: expected f32 or bf16"),
    };
    Ok((device, dtype))
}

/// `--max-steps`, else `--epochs` over the data, else a short demonstration run of 20 steps
/// (a few minutes on two CPU cores).
fn steps_for(o: &Options, examples: usize, batch: usize, accum: usize) -> usize {
    match (o.max_steps, o.epochs) {
        (Some(steps), _) => steps,
        (None, Some(epochs)) => ((examples as f64 * epochs) / (batch * accum) as f64)
            .ceil()
            .max(1.0) as usize,
        (None, None) => 20,
    }
}

fn main() -> Result<()> {
    // training frees and reallocates the same large buffers every step (`balora::alloc`)
    balora::alloc::keep_freed_memory();
    let o = Options::parse().resolve()?;
    let task = o.task()?;
    let method = o.method()?.to_string();
    match task {
        Task::Nlg => run_nlg(&o, &method),
        Task::Nlu => run_nlu(&o, &method),
    }
}

fn run_nlg(o: &Options, method: &str) -> Result<()> {
    let model_dir = o
        .model
        .clone()
        .unwrap_or_else(|| assets().join("models/SmolLM2-135M-Instruct"));
    let train_path = o
        .train
        .clone()
        .unwrap_or_else(|| assets().join("data/asdiv/train.jsonl"));
    let eval_path = o
        .eval
        .clone()
        .unwrap_or_else(|| assets().join("data/asdiv/eval.jsonl"));
    if o.model.is_none() || o.train.is_none() {
        ensure_default(&model_dir)?;
        ensure_default(&train_path)?;
    }
    let (device, dtype) = device_and_dtype(o)?;
    let teacher = if o.teacher_checkpoint(Task::Nlg, method)? {
        let dir = o.teacher_model.as_ref().unwrap_or(&model_dir);
        // frozen: its forward records no autodiff graph
        let model = LlamaForCausalLM::from_pretrained(dir, &device, dtype)?.no_grad();
        println!("teacher: a second model loaded from {}", dir.display());
        Teacher::Checkpoint(Box::new(move |batch| {
            model.logits(batch, ForwardMode::Adapted)
        }))
    } else {
        Teacher::InitialAdapter
    };
    let output = o
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/nlg-{method}")));
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let tokenizer = load_tokenizer(&model_dir)?;
    let format = match ChatTemplate::load(&model_dir)? {
        Some(t) => PromptFormat::Chat(t),
        None => PromptFormat::Alpaca,
    };
    let base = LlamaForCausalLM::from_pretrained(&model_dir, &device, dtype)?;
    let eos = *base
        .config()
        .eos_ids()
        .first()
        .context("config.json has no eos_token_id")?;
    let pad = base.config().pad_token_id.unwrap_or(eos);
    let eval_records = read_nlg_jsonl(&eval_path)?;
    let eval_records = &eval_records[..eval_records.len().min(o.eval_limit.unwrap_or(8))];
    let evaluate = |model: &LlamaForCausalLM| -> Result<f64> {
        let model = model.valid();
        let mut correct = 0;
        for r in eval_records {
            let prompt = format.prompt_ids(&tokenizer, r)?;
            let out = model.generate(&prompt, &GenerationConfig::greedy(48, vec![eos]), true)?;
            let text = tokenizer
                .decode(&out, true)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let gold = r.answer.clone().unwrap_or_else(|| r.response.clone());
            correct += usize::from(answer_matches(&text, &gold));
        }
        Ok(correct as f64 / eval_records.len().max(1) as f64)
    };
    if let Some(adapter) = &o.eval_only {
        let mut model = base;
        load_adapter(&mut model, adapter)?;
        let acc = evaluate(&model)?;
        println!(
            "eval-only: accuracy {:.1}% on {} held-out problems",
            100.0 * acc,
            eval_records.len()
        );
        return merge(o, &model, &model_dir, MergeOptions::default());
    }
    let mut records = read_nlg_jsonl(&train_path)?;
    records.truncate(o.train_limit.unwrap_or(usize::MAX));
    let (examples, truncated) =
        tokenize_nlg(&records, &tokenizer, &format, o.max_len.unwrap_or(256), eos)?;
    if truncated > 0 {
        eprintln!(
            "warning: {truncated} of {} examples were truncated to {} tokens",
            records.len(),
            o.max_len.unwrap_or(256)
        );
    }
    let cfg = adapter_config(o, Task::Nlg, method)?;
    let lc = loop_config(o, 0)?;
    let steps = steps_for(o, examples.len(), lc.batch_size, lc.grad_accum);
    let lc = LoopConfig {
        max_steps: steps,
        ..lc
    };
    let before = evaluate(&base)?;
    println!(
        "accuracy before fine-tuning: {:.1}% ({} problems)",
        100.0 * before,
        eval_records.len()
    );
    let t0 = Instant::now();
    let (model, report) = inject(base, &cfg)?;
    println!(
        "{method}: {} adapted layers, {} trainable parameters, initialised in {:.2} s",
        report.adapted.len(),
        report.trainable_params,
        t0.elapsed().as_secs_f64()
    );
    let objective = NlgObjective {
        balora: regularizer(o, Task::Nlg, method, steps)?,
        teacher,
    };
    let (mut model, summary) = train(
        model, &objective, &examples, pad, &lc, &output, o.resume, &device,
    )?;
    clear_monteclora(&mut model);
    let after = Scores::accuracy(evaluate(&model)?);
    finish(
        &output,
        &model,
        &cfg,
        TaskType::CausalLm,
        &model_dir,
        method,
        Scores::accuracy(before),
        after,
        &summary,
    )?;
    merge(o, &model, &model_dir, MergeOptions::default())
}

fn run_nlu(o: &Options, method: &str) -> Result<()> {
    let model_dir = o
        .model
        .clone()
        .unwrap_or_else(|| assets().join("models/all-MiniLM-L6-v2"));
    let train_path = o
        .train
        .clone()
        .unwrap_or_else(|| assets().join("data/rotten_tomatoes/train.jsonl"));
    let eval_path = o
        .eval
        .clone()
        .unwrap_or_else(|| assets().join("data/rotten_tomatoes/eval.jsonl"));
    if o.model.is_none() || o.train.is_none() {
        ensure_default(&model_dir)?;
        ensure_default(&train_path)?;
    }
    let (device, dtype) = device_and_dtype(o)?;
    o.teacher_checkpoint(Task::Nlu, method)?;
    let output = o
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/nlu-{method}")));
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let tokenizer = load_tokenizer(&model_dir)?;
    let mut train_records = read_nlu(&train_path)?;
    train_records.truncate(o.train_limit.unwrap_or(usize::MAX));
    let labels = LabelSet::from_records(&train_records);
    let eval_records = read_nlu(&eval_path)?;
    let eval_records = &eval_records[..eval_records.len().min(o.eval_limit.unwrap_or(500))];
    let max_len = o.max_len.unwrap_or(128);
    let (examples, _) = tokenize_nlu(&train_records, &tokenizer, &labels, max_len, &train_path)?;
    let (eval_examples, _) = tokenize_nlu(eval_records, &tokenizer, &labels, max_len, &eval_path)?;
    let base = BertForSequenceClassification::from_pretrained(
        &model_dir,
        Some(labels.len()),
        o.seed.unwrap_or(42),
        &device,
        dtype,
    )?;
    let evaluate = |model: &BertForSequenceClassification| -> Result<Scores> {
        let model = model.valid();
        let (mut predicted, mut gold) = (Vec::new(), Vec::new());
        for chunk in eval_examples.chunks(32) {
            let refs: Vec<_> = chunk.iter().collect();
            let (batch, y) = collate(&refs, 0, false);
            let logits = model.logits(&batch, balora::adapters::ForwardMode::Adapted);
            let pred: Vec<i64> = logits.argmax(1).into_data().iter::<i64>().collect();
            predicted.extend(pred.iter().map(|&p| p as usize));
            gold.extend(y.iter().map(|&g| g as usize));
        }
        let m = classification_metrics(&predicted, &gold, labels.len());
        Ok(Scores {
            accuracy: m.accuracy,
            macro_f1: Some(m.macro_f1),
            mcc: Some(m.mcc),
        })
    };
    if let Some(adapter) = &o.eval_only {
        let mut model = base;
        load_adapter(&mut model, adapter)?;
        println!(
            "eval-only: {} on {} held-out examples",
            evaluate(&model)?,
            eval_examples.len()
        );
        return merge(o, &model, &model_dir, classifier_config(&model, &labels));
    }
    let cfg = adapter_config(o, Task::Nlu, method)?;
    let lc = loop_config(o, 0)?;
    let lc = LoopConfig {
        batch_size: o.batch_size.unwrap_or(16),
        lr: o.lr.unwrap_or(5e-4),
        ..lc
    };
    let steps = steps_for(o, examples.len(), lc.batch_size, lc.grad_accum);
    let lc = LoopConfig {
        max_steps: steps,
        ..lc
    };
    let before = evaluate(&base)?;
    println!("before fine-tuning: {before}");
    let (model, report) = inject(base, &cfg)?;
    println!(
        "{method}: {} adapted layers, {} trainable adapter parameters",
        report.adapted.len(),
        report.trainable_params
    );
    let objective = NluObjective {
        balora: regularizer(o, Task::Nlu, method, steps)?,
    };
    let (mut model, summary) = train(
        model, &objective, &examples, 0, &lc, &output, o.resume, &device,
    )?;
    clear_monteclora(&mut model);
    let after = evaluate(&model)?;
    finish(
        &output,
        &model,
        &cfg,
        TaskType::SeqCls,
        &model_dir,
        method,
        before,
        after,
        &summary,
    )?;
    merge(o, &model, &model_dir, classifier_config(&model, &labels))
}

/// The merged classifier's `config.json` names its task class and the trained labels.
fn classifier_config(model: &BertForSequenceClassification, labels: &LabelSet) -> MergeOptions {
    let class = if model.config().model_type == "bert" {
        "BertForSequenceClassification"
    } else {
        "RobertaForSequenceClassification"
    };
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .names()
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), n.clone().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = labels
        .names()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i.into()))
        .collect();
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

/// `--merge-to`: the adapter folded into a full checkpoint of the base model.
fn merge<M: AdapterSlots>(
    o: &Options,
    model: &M,
    model_dir: &Path,
    options: MergeOptions,
) -> Result<()> {
    let Some(dir) = &o.merge_to else {
        return Ok(());
    };
    let report = save_merged(model, model_dir, dir, &options)?;
    println!(
        "merged checkpoint: {} updated weights, {} shard(s), {:.0} MB in {}",
        report.merged,
        report.shards.len(),
        report.total_bytes as f64 / 1e6,
        dir.display()
    );
    Ok(())
}

/// Held-out scores: accuracy always, macro-F1 and MCC for classification.
#[derive(Debug, Clone, Copy, Serialize)]
struct Scores {
    accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    macro_f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcc: Option<f64>,
}

impl Scores {
    fn accuracy(accuracy: f64) -> Self {
        Self {
            accuracy,
            macro_f1: None,
            mcc: None,
        }
    }
}

impl std::fmt::Display for Scores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "accuracy {:.1}%", 100.0 * self.accuracy)?;
        if let Some(v) = self.macro_f1 {
            write!(f, ", macro-F1 {v:.3}")?;
        }
        if let Some(v) = self.mcc {
            write!(f, ", MCC {v:.3}")?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn finish<M: AdapterSlots>(
    output: &Path,
    model: &M,
    cfg: &LoraConfig,
    task_type: TaskType,
    model_dir: &Path,
    method: &str,
    before: Scores,
    after: Scores,
    summary: &balora::train::RunSummary,
) -> Result<()> {
    let options = SaveOptions {
        base_model_name_or_path: Some(model_dir.display().to_string()),
        task_type: Some(task_type),
        ..SaveOptions::default()
    };
    save_adapter(model, cfg, &output.join("adapter"), &options)?;
    let peak_rss_mb = peak_rss_mb().unwrap_or(0.0);
    let json = serde_json::json!({
        "method": method,
        "steps": summary.steps,
        "accuracy_before": before.accuracy,
        "accuracy_after": after.accuracy,
        "eval_before": before,
        "eval_after": after,
        "tokens_per_s": summary.tokens_per_s,
        "peak_rss_mb": peak_rss_mb,
        "final_loss": summary.last.as_ref().map(|m| m.loss),
    });
    balora::io::fs::atomic_write(
        &output.join("summary.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!(
        "done: held-out {before} before, {after} after; {:.0} tokens/s, peak memory {:.0} MB; wrote {}",
        summary.tokens_per_s,
        peak_rss_mb,
        output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Options)) -> Options {
        let mut o = Options::default();
        f(&mut o);
        o
    }

    fn message<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.expect_err("the option value must be refused"))
    }

    #[test]
    fn unknown_option_values_are_refused_with_the_choices() {
        let e = message(with(|o| o.method = Some("qlora".into())).method());
        assert!(e.contains("\"qlora\"") && e.contains("monteclora"), "{e}");
        let e = message(with(|o| o.task = Some("seq2seq".into())).task());
        assert!(e.contains("\"seq2seq\"") && e.contains("nlu"), "{e}");
        let e = message(loop_config(&with(|o| o.schedule = Some("step".into())), 1));
        assert!(e.contains("\"step\"") && e.contains("cosine"), "{e}");
        let e = message(device_and_dtype(&with(|o| o.dtype = Some("fp8".into()))));
        assert!(e.contains("\"fp8\"") && e.contains("bf16"), "{e}");
        let e = message(device_and_dtype(&with(|o| o.device = Some("tpu".into()))));
        assert!(e.contains("tpu") && e.contains("cuda"), "{e}");
        let e = message(regularizer(
            &with(|o| o.preset = Some("neurips".into())),
            Task::Nlg,
            "balora",
            10,
        ));
        assert!(e.contains("neurips"), "{e}");
        let e = message(
            with(|o| o.teacher = Some("ema".into())).teacher_checkpoint(Task::Nlg, "balora"),
        );
        assert!(e.contains("\"ema\"") && e.contains("checkpoint"), "{e}");
        let e = message(
            with(|o| o.teacher = Some("checkpoint".into())).teacher_checkpoint(Task::Nlu, "balora"),
        );
        assert!(e.contains("--task nlg"), "{e}");
        let e = message(
            with(|o| o.teacher_model = Some("base".into())).teacher_checkpoint(Task::Nlg, "balora"),
        );
        assert!(e.contains("--teacher-model base"), "{e}");
        let e = Options::try_parse_from(["finetune", "--rank", "eight"])
            .expect_err("a non-numeric rank")
            .to_string();
        assert!(e.contains("--rank") && e.contains("eight"), "{e}");
    }

    #[test]
    fn config_files_merge_under_the_command_line_and_refuse_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "method = \"lora\"\nrank = 4\nlr = 0.001\n").unwrap();
        let o = Options::try_parse_from([
            "finetune",
            "--config",
            path.to_str().unwrap(),
            "--rank",
            "16",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(
            (o.method.as_deref(), o.rank, o.lr),
            (Some("lora"), Some(16), Some(0.001))
        );
        std::fs::write(&path, "learning_rate = 0.001\n").unwrap();
        let e = message(with(|o| o.config = Some(path.clone())).resolve());
        assert!(e.contains("run.toml") && e.contains("learning_rate"), "{e}");
    }
}
