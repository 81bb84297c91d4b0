//! Every random draw comes from the run's seed, checked across processes: two processes with
//! the same seed write byte-identical `metrics.jsonl` and adapter files, and a process killed
//! with SIGKILL in the middle of a run, then resumed, writes the same bytes as an
//! uninterrupted run — for generation (tiny Llama, PiSSA + BA-LoRA with dropout) and for
//! classification (a bare tiny BERT encoder whose head is freshly drawn from the seed, BA-LoRA).
//!
//! The test binary runs itself as the child process (`child_run`, selected by the
//! `BALORA_REPRO_CHILD` environment variable), so the child is exactly this code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use balora_adapters::{AdapterSlots, InitMode, LoraConfig, TargetModules, clear_variants, inject};
use balora_bert::BertForSequenceClassification;
use balora_io::{SaveOptions, TaskType, save_adapter};
use balora_llama::LlamaForCausalLM;
use balora_losses::{BaLoraLoss, LossOutput, RegularizerConfig, Task};
use balora_model::TokenBatch;
use balora_testkit::fixture;
use balora_train::data::Example;
use balora_train::schedule::LrSchedule;
use balora_train::{
    LoopConfig, NlgObjective, NluObjective, Objective, TorchAdamWConfig, TrainError, Trainer,
};
use burn::module::Module;
use burn::tensor::{DType, Device};

const STEPS: usize = 12;
const CHILD: &str = "BALORA_REPRO_CHILD";

/// Slows every loss evaluation down so the parent can kill the child mid-run.
struct Slow<O>(O);

impl<M, O: Objective<M>> Objective<M> for Slow<O> {
    fn loss(
        &self,
        model: &M,
        batch: &TokenBatch,
        labels: &[i64],
        step: usize,
    ) -> Result<LossOutput, TrainError> {
        std::thread::sleep(Duration::from_millis(40));
        self.0.loss(model, batch, labels, step)
    }
    fn token_labels(&self) -> bool {
        self.0.token_labels()
    }
}

fn examples(task: &str) -> Vec<Example> {
    (0..24u32)
        .map(|i| {
            let prompt: Vec<u32> = (0..4).map(|k| 3 + (i * 7 + k * 13) % 100).collect();
            if task == "nlu" {
                return Example {
                    ids: prompt,
                    labels: vec![(i % 2) as i64],
                    token_types: None,
                };
            }
            let response = [10u32, 11, 12 + i % 3, 2];
            Example {
                ids: prompt.iter().chain(&response).copied().collect(),
                labels: prompt
                    .iter()
                    .map(|_| -100)
                    .chain(response.iter().map(|&t| t as i64))
                    .collect(),
                token_types: None,
            }
        })
        .collect()
}

fn loop_config(seed: u64) -> LoopConfig {
    LoopConfig {
        lr: 1e-2,
        schedule: LrSchedule::Cosine,
        warmup_ratio: 0.1,
        adamw: TorchAdamWConfig::default(),
        batch_size: 4,
        grad_accum: 2,
        max_grad_norm: Some(1.0),
        max_steps: STEPS,
        save_every: 1,
        seed,
        stop_at_step: None,
    }
}

/// One whole run, as `finetune` makes it: model, adapter and head from the seed, training
/// (resumed when `resume`), the adapter saved.
fn run(task: &str, dir: &Path, resume: bool, seed: u64) {
    let device = Device::flex().autodiff();
    let lc = loop_config(seed);
    let cfg = LoraConfig::new(
        4,
        TargetModules::names(["q_proj", "v_proj", "query", "value"]),
    )
    .with_lora_alpha(8.0)
    .with_lora_dropout(0.1)
    .with_init(InitMode::PissaFast { niter: 2 })
    .with_seed(seed);
    let options = |task_type| SaveOptions {
        task_type: Some(task_type),
        ..SaveOptions::default()
    };
    if task == "nlu" {
        let base = BertForSequenceClassification::from_pretrained(
            &fixture("peft/seqcls_bare_base"),
            Some(2),
            seed,
            &device,
            DType::F32,
        )
        .unwrap();
        let (model, _) = inject(base, &cfg).unwrap();
        let balora = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlu), STEPS).unwrap();
        let objective = Slow(NluObjective::new(Some(balora), &model));
        let model = fit(model, objective, examples(task), lc, dir, resume, &device);
        save_adapter(
            &model,
            &cfg,
            &dir.join("adapter"),
            &options(TaskType::SeqCls),
        )
        .unwrap();
    } else {
        let base =
            LlamaForCausalLM::from_pretrained(&fixture("models/tiny-llama"), &device, DType::F32)
                .unwrap();
        let (model, _) = inject(base, &cfg).unwrap();
        let balora = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg), STEPS).unwrap();
        let objective = Slow(NlgObjective::new(Some(balora), &model));
        let mut model = fit(model, objective, examples(task), lc, dir, resume, &device);
        clear_variants(&mut model);
        save_adapter(
            &model,
            &cfg,
            &dir.join("adapter"),
            &options(TaskType::CausalLm),
        )
        .unwrap();
    }
}

/// Train to the end (continuing from `dir`'s checkpoint with `resume`) and return the model.
fn fit<M: Module + AdapterSlots, O: Objective<M>>(
    model: M,
    objective: O,
    examples: Vec<Example>,
    lc: LoopConfig,
    dir: &Path,
    resume: bool,
    device: &Device,
) -> M {
    let mut trainer = Trainer::new(model, objective, examples, 0, lc, dir, device).unwrap();
    if resume {
        trainer.resume().unwrap();
    }
    trainer.fit().unwrap().0
}

/// The child process: `BALORA_REPRO_CHILD=task:dir:resume:seed`.
#[test]
fn child_run() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let [task, dir, resume, seed] = parts[..] else {
        panic!("bad {CHILD}={spec}");
    };
    run(
        task,
        Path::new(dir),
        resume == "resume",
        seed.parse().unwrap(),
    );
}

fn spawn(task: &str, dir: &Path, resume: bool, seed: u64) -> Child {
    let mode = if resume { "resume" } else { "fresh" };
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_run", "--nocapture", "--test-threads", "1"])
        .env(CHILD, format!("{task}:{}:{mode}:{seed}", dir.display()))
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child) {
    assert!(child.wait().unwrap().success(), "child run failed");
}

fn bytes(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

/// The step of the newest checkpoint, once one exists.
fn checkpoint_step(dir: &Path) -> Option<usize> {
    let name = std::fs::read_to_string(dir.join("latest")).ok()?;
    name.trim().strip_prefix("checkpoint-")?.parse().ok()
}

fn check_task(task: &str) {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| -> PathBuf { root.path().join(name) };
    // two processes at once, same seed
    let (a, b) = (
        spawn(task, &dir("a"), false, 5),
        spawn(task, &dir("b"), false, 5),
    );
    finish(a);
    finish(b);
    for file in ["metrics.jsonl", "adapter/adapter_model.safetensors"] {
        assert!(
            bytes(&dir("a"), file) == bytes(&dir("b"), file),
            "{task}: {file} differs between two processes with the same seed"
        );
    }
    let lines = String::from_utf8(bytes(&dir("a"), "metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), STEPS, "{task}");
    // another seed gives another run (the comparison above can fail)
    finish(spawn(task, &dir("c"), false, 6));
    assert!(bytes(&dir("a"), "metrics.jsonl") != bytes(&dir("c"), "metrics.jsonl"));
    // SIGKILL once a few steps are checkpointed, then resume
    let mut killed = spawn(task, &dir("k"), false, 5);
    let started = Instant::now();
    while checkpoint_step(&dir("k")).is_none_or(|s| s < 4) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{task}: no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    killed.kill().unwrap(); // SIGKILL on Unix
    killed.wait().unwrap();
    let at = checkpoint_step(&dir("k")).unwrap();
    assert!(
        at < STEPS,
        "{task}: the child finished before it was killed"
    );
    assert!(!dir("k").join("adapter").exists());
    finish(spawn(task, &dir("k"), true, 5));
    for file in ["metrics.jsonl", "adapter/adapter_model.safetensors"] {
        assert!(
            bytes(&dir("a"), file) == bytes(&dir("k"), file),
            "{task}: {file} after kill -9 at step {at} + resume differs from the uninterrupted run"
        );
    }
}

#[test]
fn same_seed_same_bytes_and_kill_resume_nlg() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    check_task("nlg");
}

#[test]
fn same_seed_same_bytes_and_kill_resume_nlu() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    check_task("nlu");
}
