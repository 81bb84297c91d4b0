//! The [`Trainer`]: micro-batches with gradient accumulation, the objective's terms and
//! MonteCLoRA's, global-norm clipping, AdamW, the LR schedule, observers (JSONL metrics,
//! progress, plots) and atomic checkpoints with exact resume (docs/methods.md,
//! "Reproducibility").

use std::path::{Path, PathBuf};
use std::time::Instant;

use balora_adapters::{AdapterSlots, draw_variants, variant_loss};
use balora_losses::{Lambdas, LossOutput};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{
    LoopState, has_checkpoint, is_checkpoint_name, is_partial_name, load_checkpoint,
    save_checkpoint,
};
use crate::data::{Example, collate, epoch_batches};
use crate::fault::{RENAMED, SAVED, pause_point};
use crate::metrics::{StepMetrics, StepTiming};
use crate::objective::Objective;
use crate::observer::{JsonlLog, Observer};
use crate::optim::{TorchAdamW, TorchAdamWConfig, clip_coefficient, global_grad_norm};
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
    pub adamw: TorchAdamWConfig,
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

/// The Hugging Face Trainer's defaults where it has one (cosine schedule, AdamW with its
/// defaults, clipping at 1.0), 3 % warmup, batches of 4, a 20-step demonstration run.
impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            schedule: LrSchedule::Cosine,
            warmup_ratio: 0.03,
            adamw: TorchAdamWConfig::default(),
            batch_size: 4,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            max_steps: 20,
            save_every: 0,
            seed: 42,
            stop_at_step: None,
        }
    }
}

impl LoopConfig {
    /// Refuse settings no run can use (before any model or data is touched): a learning rate
    /// or ε that is not a positive finite number, β outside [0, 1), a negative or infinite
    /// weight decay or clipping threshold, warmup outside [0, 1], empty batches.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |key, value: f64, expected| {
            Err(TrainError::Setting {
                key,
                value: value.to_string(),
                expected,
            })
        };
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let a = &self.adamw;
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", self.lr, "a finite learning rate ≥ 0");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", self.warmup_ratio, "a fraction in [0, 1]");
        }
        for (key, beta) in [("beta1", a.beta1), ("beta2", a.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return bad(key, beta, "a value in [0, 1)");
            }
        }
        if !positive(a.eps) {
            return bad("eps", a.eps, "a finite value > 0");
        }
        if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
            return bad("weight_decay", a.weight_decay, "a finite value ≥ 0");
        }
        if let Some(norm) = self.max_grad_norm
            && !positive(norm)
        {
            return bad("max_grad_norm", norm, "a finite value > 0 (or no clipping)");
        }
        for (key, n) in [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
        ] {
            if n == 0 {
                return bad(key, 0.0, "at least 1");
            }
        }
        Ok(())
    }

    /// The step this process stops after.
    fn stop(&self) -> usize {
        self.stop_at_step
            .unwrap_or(self.max_steps)
            .min(self.max_steps)
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

/// The checkpoint name the run's `latest` pointer holds, if it is one.
fn latest_name(output: &Path) -> Option<String> {
    let name = std::fs::read_to_string(output.join(LATEST)).ok()?;
    let name = name.trim();
    is_checkpoint_name(name).then(|| name.to_string())
}

/// The checkpoint directory the run's `latest` pointer names, when it is complete.
fn latest_checkpoint(output: &Path) -> Option<PathBuf> {
    let dir = output.join(latest_name(output)?);
    has_checkpoint(&dir).then_some(dir)
}

/// Make the output folder `output`, refusing before any training when it cannot hold a run:
/// its parent must exist (a missing one is a typo or an unmounted volume, where a created
/// tree would hide hours of checkpoints) and it must be writable (checked by the lock file).
pub fn create_output(output: &Path) -> Result<(), TrainError> {
    if output.is_dir() {
        return Ok(());
    }
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(TrainError::OutputParent {
            path: output.to_path_buf(),
            parent: parent.to_path_buf(),
        });
    }
    std::fs::create_dir(output).map_err(|source| balora_io::IoError::Fs {
        path: output.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Remove what an interrupted run may have left and a resume must not trust: `.partial`
/// checkpoint folders, temporaries of atomic writes, and checkpoints `latest` does not name
/// (superseded ones, or one renamed into place just before a crash, before `latest` moved).
/// Without a `latest` naming a complete checkpoint no checkpoint folder is touched.
fn remove_leftovers(output: &Path) -> Result<(), TrainError> {
    let keep = latest_checkpoint(output)
        .and_then(|dir| Some(dir.file_name()?.to_string_lossy().into_owned()));
    remove_entries(output, |name| {
        let superseded = is_checkpoint_name(name) && keep.as_ref().is_some_and(|k| k != name);
        superseded || is_partial_name(name) || balora_io::fs::is_temporary(name)
    })
}

/// Remove every entry of `output` whose name `doomed` selects (folders with their contents).
fn remove_entries(output: &Path, doomed: impl Fn(&str) -> bool) -> Result<(), TrainError> {
    let entries = std::fs::read_dir(output).map_err(|source| balora_io::IoError::Fs {
        path: output.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        if !doomed(&e.file_name().to_string_lossy()) {
            continue;
        }
        let path = e.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|source| balora_io::IoError::Fs { path, source })?;
    }
    Ok(())
}

/// `.lock` in the output folder, holding the writer's process id, so two runs never
/// interleave their checkpoints and metrics; removed when the trainer is dropped. A lock whose
/// process is gone (a run killed with SIGKILL) is taken over, so `--resume` after a crash works.
struct OutputLock {
    path: PathBuf,
}

impl OutputLock {
    fn acquire(dir: &Path) -> Result<Self, TrainError> {
        use std::io::Write;
        let path = dir.join(".lock");
        let me = std::process::id();
        let fs_err = |source| balora_io::IoError::Fs {
            path: path.clone(),
            source,
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => write!(file, "{me}").map_err(fs_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if let Some(pid) = holder.filter(|&pid| process_alive(pid)) {
                    return Err(TrainError::Locked { path, pid });
                }
                balora_io::fs::atomic_write(&path, me.to_string().as_bytes())?;
            }
            Err(e) => return Err(fs_err(e).into()),
        }
        Ok(Self { path })
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether process `pid` exists (Linux: `/proc/<pid>`; elsewhere every holder counts as
/// alive, and a stale lock is removed by hand).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
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

/// The per-step sums of every logged term over the micro-batches, averaged into
/// [`StepMetrics`] at the end of the step.
#[derive(Debug, Default)]
struct TermSums {
    loss: f64,
    task: f64,
    consistency: Option<f64>,
    diversity: Option<f64>,
    svd: Option<f64>,
    monteclora: Option<f64>,
    lambdas: Lambdas,
}

fn add(sum: &mut Option<f64>, value: Option<f64>) {
    if let Some(v) = value {
        *sum = Some(sum.unwrap_or(0.0) + v);
    }
}

impl TermSums {
    /// Add one micro-batch: its total loss, the objective's output and MonteCLoRA's term.
    fn add(&mut self, total: f64, out: LossOutput, monteclora: Option<f64>) {
        self.loss += total;
        self.task += out.task.into_scalar::<f64>();
        let value = |t: Option<burn::tensor::Tensor<1>>| t.map(|t| t.into_scalar::<f64>());
        add(&mut self.consistency, value(out.terms.consistency));
        add(&mut self.diversity, value(out.terms.diversity));
        add(&mut self.svd, value(out.terms.svd));
        add(&mut self.monteclora, monteclora);
        self.lambdas = out.terms.lambdas;
    }

    /// The means over `n` micro-batches.
    fn mean(self, n: usize, step: usize, lr: f64, grad_norm: f64) -> StepMetrics {
        let n = n as f64;
        let mean = |v: Option<f64>| v.map(|v| v / n);
        StepMetrics {
            step,
            loss: self.loss / n,
            task: self.task / n,
            consistency: mean(self.consistency),
            diversity: mean(self.diversity),
            svd: mean(self.svd),
            monteclora: mean(self.monteclora),
            lambdas: self.lambdas,
            lr,
            grad_norm,
        }
    }
}

/// Trains a model's adapters (and modules trained in full) on tokenised examples: owns the
/// model, the objective, AdamW, the loop state and the output directory, in the shape of
/// burn-train's learner — [`step`](Self::step) runs one optimizer step, [`fit`](Self::fit)
/// runs to the end.
///
/// Under `output` it writes `metrics.jsonl`, `timing.jsonl`, checkpoints
/// (`checkpoint-<step>/` + a `latest` pointer) and whatever the observers write. The data
/// order, dropout and MonteCLoRA noise are functions of `(seed, step)` and checkpoints hold
/// AdamW's state, so [`resume`](Self::resume) continues exactly as an uninterrupted run.
pub struct Trainer<M, O> {
    /// Always present between steps; taken while AdamW maps it into the updated model.
    model: Option<M>,
    objective: O,
    optim: TorchAdamW,
    state: LoopState,
    config: LoopConfig,
    examples: Vec<Example>,
    lengths: Vec<usize>,
    batches: Vec<Vec<usize>>,
    pad_id: u32,
    output: PathBuf,
    device: Device,
    observers: Vec<Box<dyn Observer>>,
    _lock: OutputLock,
    started: bool,
    tokens: usize,
    clock: Option<Instant>,
    last: Option<StepMetrics>,
}

impl<M, O> Trainer<M, O>
where
    M: Module + AdapterSlots,
    O: Objective<M>,
{
    /// A trainer of `model` on `examples` (padded with `pad_id`) writing into `output`
    /// (created if missing; its parent must exist), at step 0. Fails if another live run
    /// holds `output`'s lock or the folder is not writable; removes what an interrupted run
    /// left that a resume must not trust (docs/reliability.md, "Checkpoints").
    pub fn new(
        model: M,
        objective: O,
        examples: Vec<Example>,
        pad_id: u32,
        config: LoopConfig,
        output: &Path,
        device: &Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if examples.is_empty() {
            return Err(TrainError::EmptyDataset {
                path: output.to_path_buf(),
                reason: "no training example".into(),
            });
        }
        create_output(output)?;
        let lock = OutputLock::acquire(output)?;
        remove_leftovers(output)?;
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
        let batches = epoch_batches(&lengths, config.batch_size, config.seed, 0);
        Ok(Self {
            model: Some(model),
            objective,
            optim: TorchAdamW::new(config.adamw),
            state: LoopState {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                adam_steps: 0,
            },
            config,
            examples,
            lengths,
            batches,
            pad_id,
            output: output.to_path_buf(),
            device: device.clone(),
            observers: vec![Box::new(JsonlLog::new(output))],
            _lock: lock,
            started: false,
            tokens: 0,
            clock: None,
            last: None,
        })
    }

    /// Add an observer (progress bar, plot, a caller's own).
    pub fn with_observer(mut self, observer: impl Observer + 'static) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    /// The standard interactive set: a progress bar and `loss.png` (as features allow).
    pub fn with_default_observers(self) -> Self {
        #[cfg(feature = "progress")]
        let this = self.with_observer(crate::observer::Progress::default());
        #[cfg(not(feature = "progress"))]
        let this = self;
        #[cfg(feature = "plot")]
        let this = {
            let plot = crate::observer::LossPlot::new(&this.output);
            this.with_observer(plot)
        };
        this
    }

    /// Continue from the output directory's latest checkpoint, if it has one; returns whether
    /// it did. The model must be built as for the first run (same checkpoint, same seed).
    pub fn resume(&mut self) -> Result<bool, TrainError> {
        let Some(dir) = latest_checkpoint(&self.output) else {
            return Ok(false);
        };
        let model = self.take_model();
        // the cursor must fit this run (not a checkpoint of other data, batch size or length);
        // every epoch has as many batches as the first
        let (max_steps, per_epoch) = (self.config.max_steps, self.batches.len());
        let fits = |s: &LoopState| {
            if s.step <= max_steps && s.adam_steps == s.step as u64 && s.batch_in_epoch <= per_epoch
            {
                return Ok(());
            }
            Err(format!(
                "step {} (AdamW updates {}, batch {} of an epoch) does not fit this run ({} \
                 steps, {} batches per epoch): was it written with other data or settings?",
                s.step, s.adam_steps, s.batch_in_epoch, max_steps, per_epoch
            ))
        };
        match load_checkpoint(&dir, model.clone(), &mut self.optim, &self.device, fits) {
            Ok((loaded, state)) => {
                self.model = Some(loaded);
                self.batches = epoch_batches(
                    &self.lengths,
                    self.config.batch_size,
                    self.config.seed,
                    state.epoch,
                );
                self.state = state;
            }
            // a checkpoint that does not load leaves the trainer as it was
            Err(e) => {
                self.model = Some(model);
                self.optim = TorchAdamW::new(self.config.adamw);
                return Err(e);
            }
        }
        Ok(true)
    }

    /// The model being trained.
    pub fn model(&self) -> &M {
        self.model
            .as_ref()
            .expect("the model is present between steps")
    }

    /// Where the loop stands.
    pub fn state(&self) -> &LoopState {
        &self.state
    }

    /// Whether this process has steps left (before `max_steps` or `stop_at_step`).
    pub fn is_done(&self) -> bool {
        self.state.step >= self.config.stop()
    }

    fn take_model(&mut self) -> M {
        self.model
            .take()
            .expect("the model is present between steps")
    }

    fn start(&mut self) -> Result<(), TrainError> {
        if !self.started {
            for o in &mut self.observers {
                o.on_start(self.state.step, self.config.max_steps)?;
            }
            self.started = true;
            self.clock = Some(Instant::now());
        }
        Ok(())
    }

    /// One optimizer step over `grad_accum` micro-batches; logs it, and checkpoints when due
    /// (every `save_every` steps and at the process's last step).
    pub fn step(&mut self) -> Result<StepMetrics, TrainError> {
        self.start()?;
        let started = Instant::now();
        let c = &self.config;
        let warmup = (c.warmup_ratio * c.max_steps as f64).ceil() as usize;
        let lr = c.schedule.lr(c.lr, self.state.step, c.max_steps, warmup);
        let mut model = self.take_model();
        let mut accumulator = GradientsAccumulator::new();
        let (mut sums, mut tokens) = (TermSums::default(), 0usize);
        for micro in 0..self.config.grad_accum {
            if self.state.batch_in_epoch >= self.batches.len() {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
                self.batches = epoch_batches(
                    &self.lengths,
                    self.config.batch_size,
                    self.config.seed,
                    self.state.epoch,
                );
            }
            let chosen: Vec<&Example> = self.batches[self.state.batch_in_epoch]
                .iter()
                .map(|&i| &self.examples[i])
                .collect();
            self.state.batch_in_epoch += 1;
            let (batch, labels) = collate(&chosen, self.pad_id, self.objective.token_labels());
            tokens += batch.num_tokens();
            // dropout masks and MonteCLoRA noise are functions of (seed, step, micro-batch)
            let (seed, step) = (self.config.seed, self.state.step);
            self.device.seed(mix(seed, step as u64, micro as u64));
            draw_variants(
                &mut model,
                seed,
                (step * self.config.grad_accum + micro) as u64,
            );
            let out = match self.objective.loss(&model, &batch, &labels, step) {
                Ok(out) => out,
                Err(e) => {
                    self.model = Some(model);
                    return Err(e);
                }
            };
            let mut loss = out.loss.clone();
            let mc = variant_loss(&model);
            let mc_value = mc.as_ref().map(|t| t.clone().into_scalar::<f64>());
            if let Some(mc) = mc {
                loss = loss + mc;
            }
            let value = loss.clone().into_scalar::<f64>();
            if !value.is_finite() {
                self.model = Some(model);
                return Err(TrainError::NonFinite {
                    step: step + 1,
                    value,
                });
            }
            for reason in &out.terms.skipped {
                for o in &mut self.observers {
                    o.on_note(step + 1, &format!("skipped {reason}"));
                }
            }
            sums.add(value, out, mc_value);
            // the accumulated gradient is the mean over micro-batches
            let grads = loss.div_scalar(self.config.grad_accum as f64).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
        }
        let grads = accumulator.grads();
        let grad_norm = global_grad_norm(&model, &grads);
        let scale = clip_coefficient(grad_norm, self.config.max_grad_norm);
        self.model = Some(self.optim.step(model, &grads, lr, scale));
        self.state.step += 1;
        self.state.adam_steps = self.optim.steps();
        let metrics = sums.mean(self.config.grad_accum, self.state.step, lr, grad_norm);
        let elapsed = started.elapsed().as_secs_f64();
        self.tokens += tokens;
        let timing = StepTiming {
            step: self.state.step,
            tokens,
            tokens_per_s: tokens as f64 / elapsed.max(1e-9),
            step_s: elapsed,
        };
        for o in &mut self.observers {
            o.on_step(&metrics, &timing)?;
        }
        let due =
            self.config.save_every > 0 && self.state.step.is_multiple_of(self.config.save_every);
        if due || self.state.step == self.config.stop() {
            self.save_checkpoint()?;
        }
        self.last = Some(metrics.clone());
        Ok(metrics)
    }

    /// Write `checkpoint-<step>/`, point `latest` at it and drop the superseded ones. Each of
    /// the three is atomic, so a crash between any two leaves `latest` naming a complete
    /// checkpoint. When `latest` already names this step's checkpoint (a resumed run saving
    /// before any step) there is nothing new to write.
    pub fn save_checkpoint(&self) -> Result<(), TrainError> {
        let name = format!("checkpoint-{}", self.state.step);
        let step = self.state.step;
        if latest_checkpoint(&self.output).is_some_and(|dir| dir.ends_with(&name)) {
            return Ok(());
        }
        save_checkpoint(&self.output, &name, self.model(), &self.optim, &self.state)?;
        pause_point(RENAMED, step);
        balora_io::fs::atomic_write(&self.output.join(LATEST), name.as_bytes())?;
        remove_stale_checkpoints(&self.output, &name)?;
        pause_point(SAVED, step);
        Ok(())
    }

    /// Step until `max_steps` (or `stop_at_step`), then let the observers finish (the plot);
    /// returns the trained model and a summary.
    pub fn fit(mut self) -> Result<(M, RunSummary), TrainError> {
        self.start()?;
        while !self.is_done() {
            self.step()?;
        }
        for o in &mut self.observers {
            o.on_end()?;
        }
        let seconds = self.clock.map_or(0.0, |c| c.elapsed().as_secs_f64());
        let summary = RunSummary {
            steps: self.state.step,
            tokens_per_s: self.tokens as f64 / seconds.max(1e-9),
            last: self.last.take(),
        };
        Ok((self.take_model(), summary))
    }

    /// The model, ending the run here.
    pub fn into_model(mut self) -> M {
        self.take_model()
    }
}

/// Keep only the checkpoint `keep` (the others are superseded once `latest` points at it).
fn remove_stale_checkpoints(output: &Path, keep: &str) -> Result<(), TrainError> {
    remove_entries(output, |name| is_checkpoint_name(name) && name != keep)
}
