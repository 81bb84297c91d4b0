//! The step loop: micro-batches with gradient accumulation, BA-LoRA / MonteCLoRA terms,
//! global-norm clipping, AdamW, LR schedule, JSONL metrics, progress bar, atomic checkpoints
//! and exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use balora_adapters::{AdapterSlots, ForwardMode, draw_monteclora, monteclora_loss};
use balora_losses::task::{causal_lm_loss, classification_loss};
use balora_losses::{BaLoraLoss, LossOutput};
use balora_model::{CausalLm, SequenceClassifier, TokenBatch};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{LoopState, has_checkpoint, load_checkpoint, save_checkpoint};
use crate::data::{Example, collate, epoch_batches};
use crate::metrics::{MetricsLog, StepMetrics, StepTiming, plot_losses, read_metrics};
use crate::optim::{AdamW, AdamWConfig, global_grad_norm};
use crate::schedule::LrSchedule;

/// Loop settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Shape of the learning rate after warmup.
    pub schedule: LrSchedule,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// AdamW hyper-parameters.
    pub adamw: AdamWConfig,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clipping threshold (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Optimizer steps.
    pub max_steps: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_every: usize,
    /// Seed of data order, dropout and MonteCLoRA noise.
    pub seed: u64,
    /// End this process after this step (with a checkpoint), as a time-sliced job would;
    /// `--resume` continues later. `None`: run to `max_steps`.
    pub stop_at_step: Option<usize>,
}

/// How a model's loss is computed on a batch: the task loss plus, for BA-LoRA, the
/// regularisers against the teacher (the same model in teacher mode).
pub trait Objective<M> {
    /// The loss of `batch` at optimizer step `step`.
    fn loss(
        &self,
        model: &M,
        batch: &TokenBatch,
        labels: &[i64],
        step: usize,
    ) -> Result<LossOutput, TrainError>;
    /// Whether labels are per token (NLG) or per example (NLU).
    fn token_labels(&self) -> bool;
}

fn plain(task: Tensor<1>) -> LossOutput {
    LossOutput {
        loss: task.clone(),
        task,
        terms: balora_losses::Terms {
            consistency: None,
            diversity: None,
            svd: None,
            lambdas: [0.0; 3],
            skipped: Vec::new(),
        },
    }
}

/// Causal-LM objective (response-only cross-entropy), optionally with BA-LoRA's terms.
pub struct NlgObjective {
    /// BA-LoRA's regularisers, if the method uses them.
    pub balora: Option<BaLoraLoss>,
    /// Where the regularisers' teacher logits come from.
    pub teacher: Teacher,
}

impl NlgObjective {
    /// The objective with the default teacher (the model's frozen initial adapter).
    pub fn new(balora: Option<BaLoraLoss>) -> Self {
        Self {
            balora,
            teacher: Teacher::InitialAdapter,
        }
    }
}

/// The teacher of BA-LoRA's consistency term (spec Decision 4).
#[derive(Default)]
pub enum Teacher {
    /// The trained model itself in [`ForwardMode::Teacher`]: the frozen base plus each
    /// adapter's frozen initial factors — under PiSSA the pretrained weights up to rounding,
    /// under LoRA the base — without a second model in memory. The default.
    #[default]
    InitialAdapter,
    /// `teacher = checkpoint`: logits from a separately loaded pretrained model (given as the
    /// function that runs it, so the trainer needs no model type), for exact equivalence with
    /// the ICLR 2026 code, which keeps a second base model. Costs that model's memory and a
    /// forward through it. Freeze the model (`Module::no_grad`) so its forward records no graph.
    Checkpoint(Box<dyn Fn(&TokenBatch) -> Tensor<3>>),
}

impl Teacher {
    fn logits<M: CausalLm>(&self, model: &M, batch: &TokenBatch) -> Tensor<3> {
        match self {
            Self::InitialAdapter => model.logits(batch, ForwardMode::Teacher),
            Self::Checkpoint(forward) => forward(batch),
        }
        .detach()
    }
}

impl<M: CausalLm> Objective<M> for NlgObjective {
    fn loss(
        &self,
        model: &M,
        batch: &TokenBatch,
        labels: &[i64],
        step: usize,
    ) -> Result<LossOutput, TrainError> {
        let logits = model.logits(batch, ForwardMode::Adapted);
        match &self.balora {
            None => Ok(plain(causal_lm_loss(logits, labels)?)),
            // the task cross-entropy shares the regularisers' fused pass over the vocabulary
            Some(b) => {
                Ok(b.nlg_causal_lm(step, logits, labels, || self.teacher.logits(model, batch))?)
            }
        }
    }
    fn token_labels(&self) -> bool {
        true
    }
}

/// Classification objective (cross-entropy), optionally with BA-LoRA's terms.
pub struct NluObjective {
    /// BA-LoRA's regularisers, if the method uses them.
    pub balora: Option<BaLoraLoss>,
}

impl<M: SequenceClassifier> Objective<M> for NluObjective {
    fn loss(
        &self,
        model: &M,
        batch: &TokenBatch,
        labels: &[i64],
        step: usize,
    ) -> Result<LossOutput, TrainError> {
        let logits = model.logits(batch, ForwardMode::Adapted);
        let task = classification_loss(logits.clone(), labels)?;
        match &self.balora {
            None => Ok(plain(task)),
            Some(b) => Ok(b.nlu(step, task, logits, || {
                model.logits(batch, ForwardMode::Teacher).detach()
            })?),
        }
    }
    fn token_labels(&self) -> bool {
        false
    }
}

/// A 64-bit mix of a seed and counters (SplitMix64 finaliser).
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const LATEST: &str = "latest";

/// The checkpoint directory the run's `latest` pointer names.
fn latest_checkpoint(output: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(output.join(LATEST)).ok()?;
    let dir = output.join(name.trim());
    has_checkpoint(&dir).then_some(dir)
}

/// Result of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Steps done (in total, counting a resumed part).
    pub steps: usize,
    /// Mean tokens per second of this process's steps.
    pub tokens_per_s: f64,
    /// Last logged metrics.
    pub last: Option<StepMetrics>,
}

/// Train `model` on `examples` for `config.max_steps` optimizer steps, writing
/// `metrics.jsonl`, `loss.png` and checkpoints (`checkpoint-<step>/` + a `latest` pointer)
/// under `output`. With `resume`, continue from the latest checkpoint: the data order, dropout
/// and MonteCLoRA noise are functions of `(seed, step)` and AdamW's state is restored, so the
/// loss curve continues exactly as an uninterrupted run's.
#[allow(clippy::too_many_arguments)]
pub fn train<M, O>(
    mut model: M,
    objective: &O,
    examples: &[Example],
    pad_id: u32,
    config: &LoopConfig,
    output: &Path,
    resume: bool,
    device: &Device,
) -> Result<(M, RunSummary), TrainError>
where
    M: Module + AdapterSlots,
    O: Objective<M>,
{
    if examples.is_empty() {
        return Err(TrainError::EmptyDataset {
            path: output.to_path_buf(),
            reason: "no training example".into(),
        });
    }
    let mut optim = AdamW::new(config.adamw);
    let mut state = LoopState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        adam_steps: 0,
    };
    if resume && let Some(dir) = latest_checkpoint(output) {
        let (m, s) = load_checkpoint(&dir, model, &mut optim, device)?;
        model = m;
        state = s;
    }
    let metrics_path = output.join("metrics.jsonl");
    let mut log = MetricsLog::open(&metrics_path, state.step)?;
    let mut timing = MetricsLog::open(&output.join("timing.jsonl"), state.step)?;
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let mut batches = epoch_batches(&lengths, config.batch_size, config.seed, state.epoch);
    let warmup = (config.warmup_ratio * config.max_steps as f64).ceil() as usize;
    let bar = ProgressBar::new(config.max_steps as u64).with_position(state.step as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut tokens_total, started) = (0usize, Instant::now());
    let mut last = None;
    let stop = config
        .stop_at_step
        .unwrap_or(config.max_steps)
        .min(config.max_steps);
    while state.step < stop {
        let step_start = Instant::now();
        let lr = config
            .schedule
            .lr(config.lr, state.step, config.max_steps, warmup);
        let mut accumulator = GradientsAccumulator::new();
        let (mut sums, mut tokens) = ([0.0f64; 6], 0usize);
        let mut seen = [false; 4];
        let mut lambdas = [0.0; 3];
        for micro in 0..config.grad_accum {
            if state.batch_in_epoch >= batches.len() {
                state.epoch += 1;
                state.batch_in_epoch = 0;
                batches = epoch_batches(&lengths, config.batch_size, config.seed, state.epoch);
            }
            let chosen: Vec<&Example> = batches[state.batch_in_epoch]
                .iter()
                .map(|&i| &examples[i])
                .collect();
            state.batch_in_epoch += 1;
            let (batch, labels) = collate(&chosen, pad_id, objective.token_labels());
            tokens += batch.num_tokens();
            // dropout masks and MonteCLoRA noise are functions of (seed, step, micro-batch)
            device.seed(mix(config.seed, state.step as u64, micro as u64));
            draw_monteclora(
                &mut model,
                config.seed,
                (state.step * config.grad_accum + micro) as u64,
            );
            let out = objective.loss(&model, &batch, &labels, state.step)?;
            let mut loss = out.loss.clone();
            if let Some(mc) = monteclora_loss(&model) {
                sums[5] += mc.clone().into_scalar::<f64>();
                seen[3] = true;
                loss = loss + mc;
            }
            let value = loss.clone().into_scalar::<f64>();
            if !value.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    step: state.step + 1,
                    value,
                });
            }
            sums[0] += value;
            sums[1] += out.task.into_scalar::<f64>();
            for (i, term) in [out.terms.consistency, out.terms.diversity, out.terms.svd]
                .into_iter()
                .enumerate()
            {
                if let Some(t) = term {
                    sums[2 + i] += t.into_scalar::<f64>();
                    seen[i] = true;
                }
            }
            lambdas = out.terms.lambdas;
            for reason in out.terms.skipped {
                bar.println(format!("step {}: skipped {reason}", state.step + 1));
            }
            // the accumulated gradient is the mean over micro-batches
            let grads = loss.div_scalar(config.grad_accum as f64).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
        }
        let grads = accumulator.grads();
        let grad_norm = global_grad_norm(&model, &grads);
        let scale = config
            .max_grad_norm
            .map_or(1.0, |max| (max / (grad_norm + 1e-6)).min(1.0));
        model = optim.step(model, &grads, lr, scale);
        state.step += 1;
        state.adam_steps = optim.steps;
        let n = config.grad_accum as f64;
        let avg = |i: usize, on: bool| on.then_some(sums[i] / n);
        let elapsed = step_start.elapsed().as_secs_f64();
        tokens_total += tokens;
        let m = StepMetrics {
            step: state.step,
            loss: sums[0] / n,
            task: sums[1] / n,
            consistency: avg(2, seen[0]),
            diversity: avg(3, seen[1]),
            svd: avg(4, seen[2]),
            monteclora: avg(5, seen[3]),
            lambdas,
            lr,
            grad_norm,
        };
        log.write(&m)?;
        let t = StepTiming {
            step: state.step,
            tokens,
            tokens_per_s: tokens as f64 / elapsed.max(1e-9),
            step_s: elapsed,
        };
        timing.write(&t)?;
        bar.set_message(format!(
            "loss {:.4} task {:.4}{}{}{} {:.0} tok/s",
            m.loss,
            m.task,
            m.consistency
                .map_or(String::new(), |v| format!(" C {v:.3}")),
            m.diversity.map_or(String::new(), |v| format!(" D {v:.3}")),
            m.svd.map_or(String::new(), |v| format!(" S {v:.3}")),
            t.tokens_per_s
        ));
        bar.inc(1);
        last = Some(m);
        let due = config.save_every > 0 && state.step.is_multiple_of(config.save_every);
        if due || state.step == stop {
            let name = format!("checkpoint-{}", state.step);
            save_checkpoint(&output.join(&name), &model, &optim, &state)?;
            balora_io::fs::atomic_write(&output.join(LATEST), name.as_bytes())?;
            remove_stale_checkpoints(output, &name);
        }
    }
    bar.finish();
    plot_losses(
        &read_metrics::<StepMetrics>(&metrics_path)?,
        &output.join("loss.png"),
    )?;
    Ok((
        model,
        RunSummary {
            steps: state.step,
            tokens_per_s: tokens_total as f64 / started.elapsed().as_secs_f64().max(1e-9),
            last,
        },
    ))
}

/// Keep only the checkpoint `keep` (the others are superseded once `latest` points at it).
fn remove_stale_checkpoints(output: &Path, keep: &str) {
    if let Ok(entries) = std::fs::read_dir(output) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("checkpoint-") && name != keep {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
