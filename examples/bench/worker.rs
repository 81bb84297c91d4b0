//! Our side of each [`Job`]: the trainer's own step loop (`balora::train::train`), so the
//! benchmark measures exactly what `finetune` runs.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use balora::adapters::{
    AdapterSlots, InitMode, LoraConfig, MonteCloraConfig, TargetModules, inject,
};
use balora::burn::module::Module;
use balora::burn::tensor::{DType, Device, Distribution, Tensor};
use balora::losses::{BaLoraLoss, RegularizerConfig, Task};
use balora::model::CausalLm;
use balora::train::data::Example;
use balora::train::metrics::{StepMetrics, StepTiming, peak_rss_mb, read_metrics};
use balora::train::optim::AdamWConfig;
use balora::train::schedule::LrSchedule;
use balora::train::{LoopConfig, NlgObjective, train};
use balora_gpt2::Gpt2LmHeadModel;
use balora_llama::LlamaForCausalLM;

use crate::job::{Job, Outcome, token};

/// The architecture a checkpoint's `config.json` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gpt2,
    Llama,
}

impl Arch {
    pub fn of(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        match v["model_type"].as_str() {
            Some("gpt2") => Ok(Self::Gpt2),
            Some("llama" | "qwen2" | "mistral") => Ok(Self::Llama),
            other => bail!(
                "{}: model_type {other:?} is not benchmarked",
                path.display()
            ),
        }
    }

    /// peft's module names for "q,v" (GPT-2 fuses q, k, v in `c_attn`) and for every linear.
    pub fn targets(self, all: bool) -> &'static [&'static str] {
        match (self, all) {
            (Self::Gpt2, false) => &["c_attn"],
            (Self::Gpt2, true) => &["c_attn", "c_proj", "c_fc"],
            (Self::Llama, false) => &["q_proj", "v_proj"],
            (Self::Llama, true) => &[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        }
    }
}

/// Run `job` on `device` and report.
pub fn run(job: &Job, device: &Device) -> Result<Outcome> {
    let mut outcome = match job {
        Job::Train {
            model_dir, method, ..
        } => match Arch::of(model_dir)? {
            Arch::Gpt2 => {
                let m = Gpt2LmHeadModel::from_pretrained(model_dir, device, DType::F32)?;
                let v = m.config().vocab_size;
                train_job(m, v, job, method, Arch::Gpt2, device)?
            }
            Arch::Llama => {
                let m = LlamaForCausalLM::from_pretrained(model_dir, device, DType::F32)?;
                let v = m.config().vocab_size;
                train_job(m, v, job, method, Arch::Llama, device)?
            }
        },
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
            let arch = Arch::of(model_dir)?;
            let init = match niter {
                0 => InitMode::Pissa,
                &niter => InitMode::PissaFast { niter },
            };
            let cfg = lora(*rank, arch.targets(true)).with_init(init);
            let seconds = match arch {
                Arch::Gpt2 => time_inject(
                    Gpt2LmHeadModel::from_pretrained(model_dir, device, DType::F32)?,
                    &cfg,
                )?,
                Arch::Llama => time_inject(
                    LlamaForCausalLM::from_pretrained(model_dir, device, DType::F32)?,
                    &cfg,
                )?,
            };
            Outcome {
                seconds: vec![seconds],
                ..Outcome::default()
            }
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

/// The adapter and regulariser of each benchmarked method.
fn method_setup(
    method: &str,
    rank: usize,
    arch: Arch,
    steps: usize,
) -> Result<(LoraConfig, Option<BaLoraLoss>)> {
    let qv = lora(rank, arch.targets(false));
    let pissa = qv.clone().with_init(InitMode::PissaFast { niter: 4 });
    let preset = |name| -> Result<Option<BaLoraLoss>> {
        Ok(Some(BaLoraLoss::new(
            RegularizerConfig::preset(name, Task::Nlg)?,
            steps,
        )?))
    };
    Ok(match method {
        "lora" => (qv, None),
        "lora-all" => (lora(rank, arch.targets(true)), None),
        "pissa" => (pissa, None),
        "balora-paper" => (pissa, preset("paper")?),
        "balora-iclr2026" => (pissa, preset("iclr2026")?),
        "monteclora" => (qv.with_monteclora(Some(MonteCloraConfig::new())), None),
        other => bail!(
            "unknown method {other:?}: expected one of {:?}",
            crate::job::METHODS
        ),
    })
}

fn train_job<M: CausalLm + Module + AdapterSlots>(
    model: M,
    vocab: usize,
    job: &Job,
    method: &str,
    arch: Arch,
    device: &Device,
) -> Result<Outcome> {
    let Job::Train {
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
    let (cfg, balora) = method_setup(method, rank, arch, total)?;
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
    let config = LoopConfig {
        lr: 1e-4,
        schedule: LrSchedule::Constant,
        warmup_ratio: 0.0,
        adamw: AdamWConfig::default(),
        batch_size: batch,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        max_steps: total,
        save_every: 0,
        seed,
        stop_at_step: None,
    };
    let out = tempfile::tempdir()?;
    let objective = NlgObjective::new(balora);
    let (model, _) = train(
        model,
        &objective,
        &examples,
        0,
        &config,
        out.path(),
        false,
        device,
    )?;
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
