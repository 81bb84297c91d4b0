//! Our side of each [`Job`]: the library's [`Trainer`], so the benchmark measures exactly what
//! `finetune` runs.

use std::time::Instant;

use anyhow::{Context, Result};
use balora::adapters::{AdapterSlots, LoraConfig, TargetModules, inject};
use balora::auto::{Architecture, AutoCausalLm};
use balora::burn::module::Module;
use balora::burn::tensor::{DType, Device, Distribution, Tensor};
use balora::model::{CausalLm, GenerationConfig};
use balora::train::data::{Example, check_examples};
use balora::train::metrics::{StepMetrics, StepTiming, peak_rss_mb, read_metrics};
use balora::train::schedule::LrSchedule;
use balora::train::{LoopConfig, Method, NlgObjective, TorchAdamWConfig, Trainer};

use crate::job::{BenchMethod, Job, Outcome, token};

/// peft's targets for "q,v" (GPT-2 fuses q, k, v in `c_attn`), or every linear layer.
fn targets(arch: Architecture, all: bool) -> &'static [&'static str] {
    if all {
        arch.all_linear_targets()
    } else {
        arch.peft_default_targets()
    }
}

/// Run `job` on `device` and report.
pub fn run(job: &Job, device: &Device) -> Result<Outcome> {
    let mut outcome = match job {
        Job::Train {
            model_dir, method, ..
        } => train_job(
            AutoCausalLm::from_pretrained(model_dir, device, DType::F32)?,
            job,
            *method,
            device,
        )?,
        Job::Gemm {
            m,
            k,
            n,
            reps,
            warmup,
        } => gemm(*m, *k, *n, *reps, *warmup, device)?,
        Job::PissaInit {
            model_dir,
            niter,
            rank,
        } => {
            let model = AutoCausalLm::from_pretrained(model_dir, device, DType::F32)?;
            let targets = targets(model.architecture(), true);
            let cfg = lora(*rank, targets).with_init(Method::pissa_init(*niter));
            let seconds = time_inject(model, &cfg)?;
            Outcome {
                seconds: vec![seconds],
                ..Outcome::default()
            }
        }
        Job::Decode {
            model_dir,
            batch,
            prompt,
            new_tokens,
            reps,
            warmup,
        } => {
            // inference: no autodiff graph, as evaluation runs it
            let model = AutoCausalLm::from_pretrained(model_dir, device, DType::F32)?.valid();
            let vocab = model.vocab_size();
            let prompts: Vec<Vec<u32>> = (0..*batch)
                .map(|b| (0..*prompt).map(|t| token(b, t, vocab)).collect())
                .collect();
            let config = GenerationConfig::greedy(*new_tokens, Vec::new());
            let mut outcome = Outcome::default();
            for rep in 0..warmup + reps {
                let t0 = Instant::now();
                outcome.tokens = model.generate_batch(&prompts, &config, 0)?;
                if rep >= *warmup {
                    outcome.seconds.push(t0.elapsed().as_secs_f64());
                }
            }
            outcome
        }
    };
    outcome.peak_rss_mb = peak_rss_mb().unwrap_or(0.0);
    outcome.versions = format!("balora {} burn 0.22.1", env!("CARGO_PKG_VERSION"));
    Ok(outcome)
}

fn lora(rank: usize, targets: &[&str]) -> LoraConfig {
    LoraConfig::new(rank, TargetModules::names(targets.iter().copied()))
        .with_lora_alpha(2.0 * rank as f64)
        .with_lora_dropout(0.0)
}

fn time_inject<M: Module + AdapterSlots>(model: M, cfg: &LoraConfig) -> Result<f64> {
    let t0 = Instant::now();
    let (model, _) = inject(model, cfg)?;
    let seconds = t0.elapsed().as_secs_f64();
    drop(model);
    Ok(seconds)
}

fn train_job(
    model: AutoCausalLm,
    job: &Job,
    method: BenchMethod,
    device: &Device,
) -> Result<Outcome> {
    let vocab = model.vocab_size();
    let Job::Train {
        ref model_dir,
        steps,
        warmup,
        batch,
        seq,
        rank,
        seed,
        ..
    } = *job
    else {
        unreachable!("train_job gets a Train job")
    };
    let total = warmup + steps;
    let (method, all) = method.setup()?;
    let cfg = method.adapter_config(lora(rank, targets(model.architecture(), all)));
    let balora = method.regularizer(total)?;
    let (model, report) = inject(model, &cfg)?;
    let examples: Vec<Example> = (0..batch)
        .map(|b| {
            let ids: Vec<u32> = (0..seq).map(|t| token(b, t, vocab)).collect();
            Example {
                labels: ids.iter().map(|&i| i64::from(i)).collect(),
                ids,
                token_types: None,
            }
        })
        .collect();
    // refused with the model's limit named (e.g. `--seq` beyond its positions), not a panic
    check_examples(&examples, vocab, model.max_len(), model_dir)?;
    let config = LoopConfig {
        lr: 1e-4,
        schedule: LrSchedule::Constant,
        warmup_ratio: 0.0,
        adamw: TorchAdamWConfig::default(),
        batch_size: batch,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        max_steps: total,
        save_every: 0,
        seed,
        stop_at_step: None,
    };
    let out = tempfile::tempdir()?;
    let objective = NlgObjective::new(balora, &model);
    let trainer = Trainer::new(model, objective, examples, 0, config, out.path(), device)?;
    let (model, _) = trainer.fit()?;
    drop(model);
    let timing: Vec<StepTiming> = read_metrics(&out.path().join("timing.jsonl"))?;
    let metrics: Vec<StepMetrics> = read_metrics(&out.path().join("metrics.jsonl"))?;
    Ok(Outcome {
        seconds: timing.iter().skip(warmup).map(|m| m.step_s).collect(),
        loss: metrics.iter().map(|m| m.loss).collect(),
        trainable: report.trainable_params,
        ..Outcome::default()
    })
}

/// `x [m, k] · W [k, n]` forward and backward (both gradients), timed per repetition, on the
/// GEMM balora's training step uses (`balora::kernels::matmul`: faer's, on flex).
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    reps: usize,
    warmup: usize,
    device: &Device,
) -> Result<Outcome> {
    let x = Tensor::<2>::random([m, k], Distribution::Default, device).require_grad();
    let w = Tensor::<2>::random([k, n], Distribution::Default, device).require_grad();
    let mut seconds = Vec::with_capacity(reps);
    for rep in 0..warmup + reps {
        let t0 = Instant::now();
        let grads = balora::kernels::matmul(x.clone(), w.clone())
            .sum()
            .backward();
        // read one element of each gradient: the backward has surely run on any backend
        for g in [x.grad(&grads), w.grad(&grads)] {
            let g = g.context("the GEMM input received no gradient (is the device autodiff?)")?;
            g.slice([0..1, 0..1]).into_scalar::<f32>();
        }
        if rep >= warmup {
            seconds.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(Outcome {
        seconds,
        ..Outcome::default()
    })
}
