//! Fine-tune a Hugging Face checkpoint with LoRA, PiSSA, BA-LoRA or MonteCLoRA: the command
//! line of [`balora::finetune`].
//!
//! ```text
//! cargo run --release --example finetune                      # SmolLM2-135M + ASDiv, BA-LoRA, CPU
//! cargo run --release --example finetune -- --task nlu        # all-MiniLM-L6-v2 + Rotten Tomatoes
//! cargo run --release --example finetune -- --config run.toml # the same options from a TOML file
//! cargo run --release --features cuda --example finetune -- --device cuda:0
//! ```
//!
//! Writes `runs/<task>-<method>/`: the adapter in PEFT format (`adapter/`), `metrics.jsonl`,
//! `loss.png`, `summary.json` and the latest checkpoint (`--resume` continues from it).

use std::path::PathBuf;

use anyhow::Result;
#[path = "common/assets.rs"]
mod assets;

use assets::{assets, ensure_default};
use balora::finetune::{
    DtypeName, FinetuneConfig, MethodName, Preset, ScheduleName, TaskKind, TeacherSource, finetune,
};
use clap::Parser;
use serde::Serialize;

/// Every option, from the command line or (same names) a TOML file given with `--config`;
/// the command line wins. Each one is a field of `balora::finetune::FinetuneConfig`, whose
/// documentation gives its default.
#[derive(Parser, Debug, Default, Serialize)]
#[command(
    version,
    about = "Fine-tune a language model with LoRA / PiSSA / BA-LoRA / MonteCLoRA"
)]
struct Options {
    /// TOML file with any of these options.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// nlg (causal LM on instruction data) or nlu (sequence classification).
    #[arg(long)]
    task: Option<TaskKind>,
    /// lora | pissa | balora | monteclora.
    #[arg(long)]
    method: Option<MethodName>,
    /// BA-LoRA preset: paper | iclr2026.
    #[arg(long)]
    preset: Option<Preset>,
    /// Override λ1 (consistency).
    #[arg(long)]
    lambda_consistency: Option<f64>,
    /// Override λ2 (diversity).
    #[arg(long)]
    lambda_diversity: Option<f64>,
    /// Override λ3 (SVD).
    #[arg(long)]
    lambda_svd: Option<f64>,
    /// BA-LoRA's teacher: adapter (the model's frozen initial adapter, no second model in
    /// memory) | checkpoint (a separately loaded pretrained model, as the ICLR 2026 code).
    #[arg(long)]
    teacher: Option<TeacherSource>,
    /// The pretrained model of `--teacher checkpoint` (default: --model).
    #[arg(long)]
    teacher_model: Option<PathBuf>,
    /// Hugging Face model directory (its config.json's model_type picks the architecture).
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
    /// lora_alpha (default 2r).
    #[arg(long)]
    alpha: Option<f64>,
    /// rsLoRA scaling α/√r.
    #[arg(long)]
    rslora: Option<bool>,
    /// Adapter dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// Comma-separated module names (or a regex with --target-regex); default: every linear
    /// layer.
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
    schedule: Option<ScheduleName>,
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
    /// Seed of everything random in the run.
    #[arg(long)]
    seed: Option<u64>,
    /// cpu | wgpu | wgpu:cpu | cuda[:N].
    #[arg(long)]
    device: Option<String>,
    /// f32 | bf16 (bf16 where the backend supports it).
    #[arg(long)]
    dtype: Option<DtypeName>,
    /// Run directory (default runs/<task>-<method>).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Continue from the run directory's latest checkpoint.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resume: bool,
    /// Only evaluate this saved adapter directory.
    #[arg(long)]
    eval_only: Option<PathBuf>,
    /// Also write a full Hugging Face checkpoint with the adapter merged into the weights
    /// (the base's dtype, sharded above 5 GB, tokenizer and configs copied) to this directory.
    #[arg(long)]
    merge_to: Option<PathBuf>,
}

/// The run's config: the `--config` file's keys, overridden by the options given.
fn resolve(cli: &Options) -> Result<FinetuneConfig> {
    Ok(FinetuneConfig::resolve(
        cli.config.as_deref(),
        serde_json::to_value(cli)?,
    )?)
}

/// The project's real model and data for the task's default run, fetched on first use.
fn with_default_assets(mut config: FinetuneConfig) -> Result<FinetuneConfig> {
    let (model, data) = match config.task {
        TaskKind::Nlg => ("models/SmolLM2-135M-Instruct", "data/asdiv"),
        TaskKind::Nlu => ("models/all-MiniLM-L6-v2", "data/rotten_tomatoes"),
    };
    for (slot, default) in [
        (&mut config.model, assets().join(model)),
        (&mut config.train, assets().join(data).join("train.jsonl")),
        (&mut config.eval, assets().join(data).join("eval.jsonl")),
    ] {
        if slot.is_none() {
            ensure_default(&default)?;
            *slot = Some(default);
        }
    }
    Ok(config)
}

fn main() -> Result<()> {
    // training frees and reallocates the same large buffers every step (`balora::alloc`)
    balora::alloc::keep_freed_memory();
    let config = with_default_assets(resolve(&Options::parse())?)?;
    let report = finetune(&config, &mut |note| println!("{note}"))?;
    match report.eval_before {
        None => println!(
            "eval-only: {} on {} held-out examples",
            report.eval_after, report.eval_examples
        ),
        Some(before) => println!(
            "done: held-out {before} before, {} after; {:.0} tokens/s, peak memory {:.0} MB; \
             wrote {}",
            report.eval_after,
            report.tokens_per_s,
            report.peak_rss_mb,
            report.output.display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(args: &[&str]) -> String {
        let args = std::iter::once("finetune").chain(args.iter().copied());
        Options::try_parse_from(args)
            .expect_err("the option value must be refused")
            .to_string()
    }

    #[test]
    fn unknown_option_values_are_refused_with_the_choices() {
        for (args, words) in [
            (&["--method", "qlora"][..], &["qlora", "monteclora"][..]),
            (&["--task", "seq2seq"], &["seq2seq", "nlu"]),
            (&["--schedule", "step"], &["step", "cosine"]),
            (&["--dtype", "fp8"], &["fp8", "bf16"]),
            (&["--preset", "neurips"], &["neurips", "iclr2026"]),
            (&["--teacher", "ema"], &["ema", "checkpoint"]),
            (&["--rank", "eight"], &["--rank", "eight"]),
        ] {
            let e = refused(args);
            assert!(words.iter().all(|w| e.contains(w)), "{args:?}: {e}");
        }
    }

    #[test]
    fn config_files_merge_under_the_command_line_and_refuse_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "method = \"lora\"\nrank = 4\nlr = 0.001\n").unwrap();
        let file = path.to_str().unwrap();
        let cli = Options::try_parse_from(["finetune", "--config", file, "--rank", "16"]).unwrap();
        let o = resolve(&cli).unwrap();
        assert_eq!(
            (o.method, o.rank, o.lr),
            (MethodName::Lora, 16, Some(0.001))
        );
        std::fs::write(&path, "learning_rate = 0.001\n").unwrap();
        let cli = Options::try_parse_from(["finetune", "--config", file]).unwrap();
        let e = format!("{:#}", resolve(&cli).unwrap_err());
        assert!(e.contains("run.toml") && e.contains("learning_rate"), "{e}");
    }
}
