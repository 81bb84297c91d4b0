//! Process-level tests: every random draw comes from the run's seed, and nothing is lost when
//! a run dies (docs/reliability.md, "Fault tests").
//!
//! * two processes with the same seed write byte-identical `metrics.jsonl` and adapter files;
//! * a process killed with SIGKILL at a random moment, or at a pause point *inside* a
//!   checkpoint write (`BALORA_TEST_PAUSE_AT`, balora_train::fault), then resumed, writes the
//!   same bytes as an uninterrupted run, and the checkpoint `latest` named is never damaged —
//!   for generation (tiny Llama, PiSSA + BA-LoRA with dropout) and for classification (a bare
//!   tiny BERT encoder whose head is freshly drawn from the seed, BA-LoRA);
//! * a full disk (a tmpfs in a private mount namespace) stops the run with an error naming the
//!   file, leaves the last checkpoint intact and nothing a resume would trust, and the run
//!   resumes to the same bytes once there is space; a read-only or missing output folder is
//!   refused before training; a second process on a locked output folder is refused.
//!
//! The test binary runs itself as the child process (`child_run`, selected by the
//! `BALORA_REPRO_CHILD` environment variable), so the child is exactly this code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use balora_adapters::{AdapterSlots, InitMode, LoraConfig, TargetModules, clear_variants, inject};
use balora_bert::BertForSequenceClassification;
use balora_io::{SaveOptions, TaskType, save_adapter};
use balora_llama::LlamaForCausalLM;
use balora_losses::{BaLoraLoss, LossOutput, RegularizerConfig, Task};
use balora_model::TokenBatch;
use balora_testkit::fixture;
use balora_train::data::Example;
use balora_train::fault::{PAUSE_ENV, RENAMED, SAVED, TENSORS_WRITTEN};
use balora_train::schedule::LrSchedule;
use balora_train::{
    LoopConfig, NlgObjective, NluObjective, Objective, TorchAdamWConfig, TrainError, Trainer,
};
use burn::module::Module;
use burn::tensor::{DType, Device};

const STEPS: usize = 12;
const CHILD: &str = "BALORA_REPRO_CHILD";
/// Selects the full-disk scenario, run inside `unshare` (see `disk_scenario`).
const DISK: &str = "BALORA_DISK_SCENARIO";

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
fn run(task: &str, dir: &Path, resume: bool, seed: u64) -> Result<(), TrainError> {
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
        let model = fit(model, objective, examples(task), lc, dir, resume, &device)?;
        save_adapter(
            &model,
            &cfg,
            &dir.join("adapter"),
            &options(TaskType::SeqCls),
        )?;
    } else {
        let base =
            LlamaForCausalLM::from_pretrained(&fixture("models/tiny-llama"), &device, DType::F32)
                .unwrap();
        let (model, _) = inject(base, &cfg).unwrap();
        let balora = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg), STEPS).unwrap();
        let objective = Slow(NlgObjective::new(Some(balora), &model));
        let mut model = fit(model, objective, examples(task), lc, dir, resume, &device)?;
        clear_variants(&mut model);
        save_adapter(
            &model,
            &cfg,
            &dir.join("adapter"),
            &options(TaskType::CausalLm),
        )?;
    }
    Ok(())
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
) -> Result<M, TrainError> {
    let mut trainer = Trainer::new(model, objective, examples, 0, lc, dir, device)?;
    if resume {
        trainer.resume()?;
    }
    Ok(trainer.fit()?.0)
}

/// The child process: `BALORA_REPRO_CHILD=task:dir:resume:seed`. A failed run prints its
/// error (as a user sees it) and exits with status 3.
#[test]
fn child_run() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let [task, dir, resume, seed] = parts[..] else {
        panic!("bad {CHILD}={spec}");
    };
    if let Err(e) = run(
        task,
        Path::new(dir),
        resume == "resume",
        seed.parse().unwrap(),
    ) {
        eprintln!("balora error: {e}");
        std::process::exit(3);
    }
}

/// A child run; `pause` sets the pause points (`point@step`, comma-separated), and its stderr
/// is piped (for the error it prints) or dropped.
fn spawn_child(
    task: &str,
    dir: &Path,
    resume: bool,
    seed: u64,
    pause: Option<&str>,
    stderr: Stdio,
) -> Child {
    let mode = if resume { "resume" } else { "fresh" };
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_run", "--nocapture", "--test-threads", "1"])
        .env(CHILD, format!("{task}:{}:{mode}:{seed}", dir.display()))
        .env("RAYON_NUM_THREADS", "1")
        .env_remove(PAUSE_ENV)
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(pause) = pause {
        command.env(PAUSE_ENV, pause);
    }
    command.spawn().unwrap()
}

fn spawn(task: &str, dir: &Path, resume: bool, seed: u64) -> Child {
    spawn_child(task, dir, resume, seed, None, Stdio::null())
}

fn finish(mut child: Child) {
    assert!(child.wait().unwrap().success(), "child run failed");
}

/// Wait until `child` has stopped itself at its pause point (state `T` in `/proc`).
fn wait_stopped(child: &mut Child, what: &str) {
    let started = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        // the state follows the parenthesised command name
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what}: the child ended ({status}) before its pause point");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: the child never reached its pause point"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Let a paused child continue.
fn resume_stopped(child: &Child) {
    // SAFETY: kill has no preconditions; the pid is our own live child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGCONT) }, 0);
}

/// Every file of a folder, by name.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The entry names of a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A step in `[lo, hi]` that differs from run to run (named in every assertion message, so a
/// failure can be replayed).
fn random_step(lo: usize, hi: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    lo + nanos % (hi - lo + 1)
}

/// The final files of a run that must equal the uninterrupted run's.
const OUTPUTS: [&str; 2] = ["metrics.jsonl", "adapter/adapter_model.safetensors"];

fn assert_same_outputs(reference: &Path, dir: &Path, what: &str) {
    for file in OUTPUTS {
        assert!(
            bytes(reference, file) == bytes(dir, file),
            "{what}: {file} differs from the uninterrupted run's"
        );
    }
}

/// SIGKILL at each pause point inside the checkpoint write of a random step `k`: the
/// checkpoint of step `k - 1` (snapshotted when it was saved) is untouched and still the one
/// `latest` names — or, once step `k`'s is complete and named, that one — and `--resume`
/// reproduces the uninterrupted run `reference`.
fn kill_inside_checkpoint_writes(task: &str, reference: &Path, root: &Path) {
    for point in [TENSORS_WRITTEN, RENAMED, SAVED] {
        let k = random_step(2, STEPS - 1);
        let what = format!("{task}: SIGKILL at {point}@{k}");
        let dir = root.join(point);
        let pauses = format!("{SAVED}@{},{point}@{k}", k - 1);
        let mut child = spawn_child(task, &dir, false, 5, Some(&pauses), Stdio::null());
        wait_stopped(&mut child, &what);
        let previous = format!("checkpoint-{}", k - 1);
        let saved = snapshot(&dir.join(&previous));
        resume_stopped(&child);
        wait_stopped(&mut child, &what);
        child.kill().unwrap();
        child.wait().unwrap();
        let latest = std::fs::read_to_string(dir.join("latest")).unwrap();
        if point == SAVED {
            assert_eq!(latest, format!("checkpoint-{k}"), "{what}");
            assert_eq!(
                listing(&dir.join(&latest)),
                ["trainer_state.json", "trainer_state.safetensors"],
                "{what}"
            );
        } else {
            assert_eq!(
                latest, previous,
                "{what}: latest moved before the checkpoint was complete"
            );
            assert!(
                snapshot(&dir.join(&previous)) == saved,
                "{what}: {previous} was changed"
            );
        }
        finish(spawn(task, &dir, true, 5));
        assert_same_outputs(reference, &dir, &what);
    }
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
    // SIGKILL at a random moment once a random number of steps is checkpointed, then resume
    let after = random_step(1, STEPS - 3);
    let mut killed = spawn(task, &dir("k"), false, 5);
    let started = Instant::now();
    while checkpoint_step(&dir("k")).is_none_or(|s| s < after) {
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
    assert_same_outputs(
        &dir("a"),
        &dir("k"),
        &format!("{task}: kill -9 after step {at} + resume"),
    );
    kill_inside_checkpoint_writes(task, &dir("a"), root.path());
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

/// Run `scenario` (a `#[test]` of this binary selected by `--exact`) in a private mount
/// namespace, where it may mount a tmpfs: `unshare --mount --map-root-user` (a user namespace,
/// no privilege needed), or `unshare --mount` where that is refused and this process is root.
fn in_mount_namespace(scenario: &str, spec: &str) {
    let exe = std::env::current_exe().unwrap();
    let args = ["--exact", scenario, "--nocapture", "--test-threads", "1"];
    let mut tried = Vec::new();
    for flags in [&["--mount", "--map-root-user"][..], &["--mount"][..]] {
        let out = Command::new("unshare")
            .args(flags)
            .arg(&exe)
            .args(args)
            .env(DISK, spec)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("unshare (util-linux) runs the full-disk scenario");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return;
        }
        // unshare itself failed (no user namespaces): try the next way in
        if stderr.starts_with("unshare:") {
            tried.push(stderr);
            continue;
        }
        panic!(
            "{scenario} failed:\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    panic!("cannot enter a private mount namespace for {scenario}: {tried:?}");
}

fn mount_tmpfs(dir: &Path, options: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mount -t tmpfs -o {options} {}",
        dir.display()
    );
}

/// Write to `dir` until the file system is full; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 1 << 16];
    while file.write_all(&chunk).is_ok() {}
    // the last pages, byte by byte
    while file.write_all(&[0]).and_then(|_| file.flush()).is_ok() {}
    path
}

/// Inside the mount namespace: `BALORA_DISK_SCENARIO=task:reference:work`.
#[test]
fn disk_scenario() {
    let Ok(spec) = std::env::var(DISK) else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let [task, reference, work] = parts[..] else {
        panic!("bad {DISK}={spec}");
    };
    let (reference, work) = (Path::new(reference), Path::new(work));

    // a read-only file system: the output folder can neither be made nor written
    let ro = work.join("read-only");
    mount_tmpfs(&ro, "ro,size=1m");
    for output in [ro.join("run"), ro.clone()] {
        let err = trainer_on(&output).expect_err("a read-only output is refused");
        let e = err.to_string();
        assert!(
            e.contains(&*output.to_string_lossy()) && e.contains("Read-only file system"),
            "{e}"
        );
    }

    // a disk that fills up after checkpoint k
    let disk = work.join("disk");
    mount_tmpfs(&disk, "size=16m");
    let out = disk.join("run");
    let k = random_step(2, STEPS - 2);
    let what = format!("{task}: disk full after checkpoint {k}");
    let pause = format!("{SAVED}@{k}");
    let mut child = spawn_child(task, &out, false, 5, Some(&pause), Stdio::piped());
    wait_stopped(&mut child, &what);
    let name = format!("checkpoint-{k}");
    let saved = snapshot(&out.join(&name));
    let filler = fill(&disk);
    resume_stopped(&child);
    let failed = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(3), "{what}: {stderr}");
    assert!(
        stderr.contains("balora error: ")
            && stderr.contains(&*out.to_string_lossy())
            && stderr.contains("No space left on device"),
        "{what}: the error does not name the file and the cause: {stderr}"
    );
    // the last good checkpoint is intact and the only thing a resume would trust
    assert_eq!(
        std::fs::read_to_string(out.join("latest")).unwrap(),
        name,
        "{what}"
    );
    assert!(
        snapshot(&out.join(&name)) == saved,
        "{what}: {name} was changed"
    );
    let left: Vec<String> = listing(&out)
        .into_iter()
        .filter(|n| n.starts_with('.') || (n.starts_with("checkpoint-") && *n != name))
        .collect();
    assert!(left.is_empty(), "{what}: left behind {left:?}");
    // space again: the run resumes from checkpoint k to the uninterrupted run's bytes
    std::fs::remove_file(filler).unwrap();
    finish(spawn(task, &out, true, 5));
    assert_same_outputs(reference, &out, &what);
}

#[test]
fn a_full_or_read_only_disk_fails_cleanly_and_the_last_checkpoint_resumes() {
    if std::env::var(CHILD).is_ok() || std::env::var(DISK).is_ok() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    finish(spawn("nlg", &reference, false, 5));
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    in_mount_namespace(
        "disk_scenario",
        &format!("nlg:{}:{}", reference.display(), work.display()),
    );
}

/// A trainer of the tiny Llama writing into `output` (nothing is trained).
fn trainer_on(output: &Path) -> Result<(), TrainError> {
    let device = Device::flex().autodiff();
    let base =
        LlamaForCausalLM::from_pretrained(&fixture("models/tiny-llama"), &device, DType::F32)
            .unwrap();
    let cfg = LoraConfig::new(4, TargetModules::names(["q_proj", "v_proj"]));
    let (model, _) = inject(base, &cfg).unwrap();
    let objective = NlgObjective::new(None, &model);
    Trainer::new(
        model,
        objective,
        examples("nlg"),
        0,
        loop_config(5),
        output,
        &device,
    )?;
    Ok(())
}

#[test]
fn a_missing_output_parent_is_refused_before_anything_is_written() {
    if std::env::var(CHILD).is_ok() || std::env::var(DISK).is_ok() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let output = root.path().join("not-mounted").join("run");
    let e = trainer_on(&output).unwrap_err();
    assert!(matches!(e, TrainError::OutputParent { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("not-mounted") && e.contains("does not exist"),
        "{e}"
    );
    assert!(listing(root.path()).is_empty(), "something was created");
}

/// A second process on an output folder another live process is writing to is refused; once
/// the first is gone (SIGKILL) its lock is taken over and the run resumes to the bytes of an
/// uninterrupted run.
#[test]
fn a_second_process_on_a_locked_output_folder_is_refused() {
    if std::env::var(CHILD).is_ok() || std::env::var(DISK).is_ok() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (reference, dir) = (root.path().join("reference"), root.path().join("run"));
    finish(spawn("nlg", &reference, false, 5));
    let pause = format!("{SAVED}@3");
    let mut first = spawn_child("nlg", &dir, false, 5, Some(&pause), Stdio::null());
    wait_stopped(&mut first, "the first run");
    let second = spawn_child("nlg", &dir, true, 5, None, Stdio::piped())
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("another run (process {})", first.id())),
        "{stderr}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    finish(spawn("nlg", &dir, true, 5));
    assert_same_outputs(&reference, &dir, "resume after the lock holder died");
}
