//! balora against PyTorch + PEFT, on the same machine in the same run.
//!
//! ```text
//! cargo run --release --example bench                        # GPT-2-small + SmolLM2-135M, both sides
//! cargo run --release --example bench -- --models gpt2-small --methods lora,balora-paper
//! cargo run --release --example bench -- --no-reference      # balora only
//! cargo run --example bench -- --smoke                       # 1 step on tiny models (CI)
//! cargo run --release --example bench -- --render bench/results/<date>-<vendor>.json  # again
//! ```
//!
//! Every job (a method's training steps, a PiSSA initialisation, the GEMM ceiling) runs in its
//! own process on each side, back to back, with the same threads, dtype (f32), seed, weights
//! and tokens: ours is this binary with `--worker`, the reference is
//! `bench/reference/bench.py` (pinned in `bench/reference/requirements.txt`). The table of
//! medians and ratios is printed and written with a PNG chart to
//! `bench/results/<date>-<vendor>.*`.
//! How to read it: `docs/performance.md`.

#[path = "../common/assets.rs"]
mod assets;
mod flops;
mod job;
mod report;
mod weights;
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use job::{BenchMethod, Job, Outcome, median};
use report::{DecodeRow, GemmRow, InitRow, Results, Side, TrainRow};

#[derive(Parser, Debug)]
#[command(about = "Benchmark balora against PyTorch + PEFT in the same run")]
struct Cli {
    /// Models: gpt2-small (random weights, written once), smollm2 (SmolLM2-135M, real
    /// weights), smollm2-shape (its configuration with random weights, for machines without
    /// the real ones), tiny-llama, tiny-gpt2 (test fixtures) or a Hugging Face directory.
    #[arg(long, default_value = "gpt2-small,smollm2", value_delimiter = ',')]
    models: Vec<String>,
    /// Training rows.
    #[arg(
        long,
        default_value = "lora,lora-all,pissa,balora-paper,balora-iclr2026,monteclora",
        value_delimiter = ','
    )]
    methods: Vec<BenchMethod>,
    /// Measured steps per method (after the warm-up).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Unmeasured steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Adapter rank (α = 2r).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Seed of both sides.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// CPU threads of both sides.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Our device: cpu | wgpu | cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The reference's device: cpu | cuda (PyTorch's, e.g. on a GPU machine against our
    /// `--device wgpu`: `scripts/gpu-check`).
    #[arg(long, default_value = "cpu")]
    reference_device: String,
    /// Name the results `<date>-<tag>.*` instead of `<date>-<CPU vendor>.*` (a GPU run).
    #[arg(long)]
    tag: Option<String>,
    /// Python with torch, transformers and peft (bench/reference/requirements.txt).
    #[arg(long, default_value = "scripts/.venv-ref/bin/python")]
    python: PathBuf,
    /// Measure balora only.
    #[arg(long)]
    no_reference: bool,
    /// Leave out the GEMM, PiSSA-initialisation and decoding rows.
    #[arg(long)]
    train_only: bool,
    /// New tokens per decoding row (greedy, KV cache, prompts of 32 tokens; batches 1 and 8).
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// One step of every method on the tiny test models (so the command cannot rot in CI).
    #[arg(long)]
    smoke: bool,
    /// Where `<date>-<vendor>.json` and `.png` go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Print the table of a results file (`bench/results/<date>.json`), redraw its PNG beside
    /// it, and exit.
    #[arg(long)]
    render: Option<PathBuf>,
    /// Run one job (JSON) in this process and print its outcome (used by the orchestrator).
    #[arg(long, hide = true)]
    worker: Option<String>,
}

fn main() -> Result<()> {
    // training frees and reallocates the same large buffers every step (`balora::alloc`)
    balora::alloc::keep_freed_memory();
    let mut cli = Cli::parse();
    if let Some(spec) = &cli.worker {
        let job: Job = serde_json::from_str(spec).context("parsing the --worker job")?;
        let device = balora::parse_device(&cli.device, true)?;
        let outcome = worker::run(&job, &device)?;
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    if let Some(path) = &cli.render {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let results: Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        println!("{}", results.table());
        results.plot(&path.with_extension("png"))?;
        return Ok(());
    }
    if cli.smoke {
        cli.models = vec!["tiny-llama".into(), "tiny-gpt2".into()];
        (cli.steps, cli.warmup, cli.batch, cli.seq) = (1, 0, 2, 16);
    }
    let reference = !cli.no_reference && cli.python.exists();
    if !cli.no_reference && !reference {
        eprintln!(
            "note: {} not found, so only balora is measured. For both sides: \
             python3 -m venv scripts/.venv-ref && scripts/.venv-ref/bin/pip install -r \
             bench/reference/requirements.txt",
            cli.python.display()
        );
    }
    let models: Vec<(String, PathBuf)> = cli
        .models
        .iter()
        .map(|m| Ok((m.clone(), model_dir(m)?)))
        .collect::<Result<_>>()?;

    let mut jobs: Vec<(String, Job)> = Vec::new();
    let gemm = if cli.smoke {
        [64, 128, 256]
    } else {
        [512, 768, 3072]
    };
    if !cli.train_only {
        let (reps, warmup) = if cli.smoke { (2, 1) } else { (20, 3) };
        let [m, k, n] = gemm;
        jobs.push((
            "gemm".into(),
            Job::Gemm {
                m,
                k,
                n,
                reps,
                warmup,
            },
        ));
        for (name, dir) in &models {
            for niter in [0, 4] {
                let job = Job::PissaInit {
                    model_dir: dir.clone(),
                    niter,
                    rank: cli.rank,
                };
                jobs.push((name.clone(), job));
            }
        }
        for (name, dir) in &models {
            // balora's GPT-2 has no KV cache: its decoding re-runs the sequence (not a row)
            if balora::auto::Architecture::detect(dir)? == balora::auto::Architecture::Gpt2 {
                continue;
            }
            for batch in [1, 8] {
                let job = Job::Decode {
                    model_dir: dir.clone(),
                    batch,
                    prompt: if cli.smoke { 4 } else { 32 },
                    new_tokens: if cli.smoke { 2 } else { cli.decode_tokens },
                    reps: if cli.smoke { 1 } else { 3 },
                    warmup: 1,
                };
                jobs.push((name.clone(), job));
            }
        }
    }
    for (name, dir) in &models {
        for method in &cli.methods {
            let job = Job::Train {
                model_dir: dir.clone(),
                method: *method,
                steps: cli.steps,
                warmup: cli.warmup,
                batch: cli.batch,
                seq: cli.seq,
                rank: cli.rank,
                seed: cli.seed,
            };
            jobs.push((name.clone(), job));
        }
    }

    let sides = if reference { 2 } else { 1 };
    let bar = ProgressBar::new((jobs.len() * sides) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outcomes: Vec<(String, Job, Outcome, Option<Outcome>)> = Vec::new();
    let mut versions = Vec::new();
    for (name, job) in jobs {
        bar.set_message(format!("balora {name} {}", describe(&job)));
        let ours = run_ours(&cli, &job)?;
        bar.inc(1);
        let theirs = if reference {
            bar.set_message(format!("PEFT {name} {}", describe(&job)));
            let o = run_reference(&cli, &job)?;
            bar.inc(1);
            Some(o)
        } else {
            None
        };
        // one line per job, also where the bar is hidden (a log): a run cut short keeps them
        let theirs_s = theirs
            .as_ref()
            .map(|t| format!(", PEFT {:.3} s", median(&t.seconds)));
        bar.suspend(|| {
            eprintln!(
                "{name} {}: balora {:.3} s{} (medians)",
                describe(&job),
                median(&ours.seconds),
                theirs_s.unwrap_or_default()
            );
        });
        for v in std::iter::once(&ours.versions).chain(theirs.as_ref().map(|t| &t.versions)) {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
        outcomes.push((name, job, ours, theirs));
    }
    bar.finish_and_clear();

    let mut results = Results {
        date: today(),
        machine: cpu_model(),
        tag: cli.tag.clone(),
        threads: cli.threads,
        settings: serde_json::json!({
            "batch": cli.batch, "seq": cli.seq, "steps": cli.steps, "warmup": cli.warmup,
            "rank": cli.rank, "alpha": 2 * cli.rank, "seed": cli.seed, "dtype": "f32",
            "device": cli.device, "reference_device": cli.reference_device, "optimizer": "AdamW lr 1e-4, grad-norm clip 1.0",
            "profile": if cfg!(debug_assertions) { "dev" } else { "release" },
            "gemm": balora::kernels::gemm_library(),
            "smoke": cli.smoke,
        }),
        versions,
        gemm: None,
        pissa_init: Vec::new(),
        decode: Vec::new(),
        train: Vec::new(),
        goals: Vec::new(),
    };
    let gflops =
        |o: &Outcome| 6.0 * gemm.iter().product::<usize>() as f64 / median(&o.seconds) / 1e9;
    let mut gemm_rate = (None, None);
    for (name, job, ours, theirs) in &outcomes {
        match job {
            Job::Gemm { m, k, n, .. } => {
                let (o, r) = (gflops(ours), theirs.as_ref().map(gflops));
                gemm_rate = (Some(o * 1e9), r.map(|r| r * 1e9));
                results.gemm = Some(GemmRow {
                    shape: [*m, *k, *n],
                    ours_gflops: o,
                    reference_gflops: r,
                });
            }
            Job::Decode {
                batch, new_tokens, ..
            } => {
                let rate = |o: &Outcome| (batch * new_tokens) as f64 / median(&o.seconds);
                results.decode.push(DecodeRow {
                    model: name.clone(),
                    batch: *batch,
                    new_tokens: *new_tokens,
                    ours_tokens_per_s: rate(ours),
                    reference_tokens_per_s: theirs.as_ref().map(rate),
                    same_ids: theirs.as_ref().map(|t| t.tokens == ours.tokens),
                });
            }
            Job::PissaInit { niter, .. } => results.pissa_init.push(InitRow {
                model: name.clone(),
                niter: *niter,
                ours_s: median(&ours.seconds),
                reference_s: theirs.as_ref().map(|t| median(&t.seconds)),
            }),
            Job::Train {
                model_dir,
                method,
                batch,
                seq,
                ..
            } => {
                let flops =
                    flops::forward_flops(model_dir, *batch, *seq)? * flops::step_forwards(*method);
                let tokens = batch * seq;
                results.train.push(TrainRow {
                    model: name.clone(),
                    method: method.to_string(),
                    ours: Side::of(ours, tokens, flops, gemm_rate.0),
                    reference: theirs
                        .as_ref()
                        .map(|t| Side::of(t, tokens, flops, gemm_rate.1)),
                });
            }
        }
    }
    results.check_goals();
    println!("{}", results.table());
    let json = results.write(&cli.out)?;
    println!("wrote {} and its .png", json.display());
    Ok(())
}

fn describe(job: &Job) -> String {
    match job {
        Job::Train { method, .. } => method.to_string(),
        Job::Gemm { .. } => "GEMM".into(),
        Job::PissaInit { niter: 0, .. } => "PiSSA init (full SVD)".into(),
        Job::Decode { batch, .. } => format!("greedy decoding, batch {batch}"),
        Job::PissaInit { niter, .. } => format!("PiSSA init (niter {niter})"),
    }
}

/// The directory of a `--models` entry, prepared if it is one of ours.
fn model_dir(name: &str) -> Result<PathBuf> {
    Ok(match name {
        "gpt2-small" => {
            let dir = PathBuf::from(".cache/bench/gpt2-small");
            weights::ensure_gpt2_small(&dir)?;
            dir
        }
        "smollm2-shape" => {
            let dir = PathBuf::from(".cache/bench/smollm2-shape");
            weights::ensure_smollm2_shape(&dir)?;
            dir
        }
        "smollm2" => {
            let dir = assets::assets().join("models/SmolLM2-135M-Instruct");
            assets::ensure_default(&dir)?;
            dir
        }
        "tiny-llama" | "tiny-gpt2" => PathBuf::from("tests/fixtures/models").join(name),
        path => {
            let dir = PathBuf::from(path);
            if !dir.join("config.json").exists() {
                bail!(
                    "--models {path:?}: not a known name and {}/config.json does not exist",
                    dir.display()
                );
            }
            dir
        }
    })
}

/// Run `cmd`, which prints an [`Outcome`] as its last stdout line.
fn collect(mut cmd: Command, what: &str) -> Result<Outcome> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what} printed no result: {stdout}"))
}

fn run_ours(cli: &Cli, job: &Job) -> Result<Outcome> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--worker")
        .arg(serde_json::to_string(job)?)
        .arg("--device")
        .arg(&cli.device)
        .env("RAYON_NUM_THREADS", cli.threads.to_string());
    collect(cmd, &format!("balora worker ({})", describe(job)))
}

fn run_reference(cli: &Cli, job: &Job) -> Result<Outcome> {
    let script = Path::new("bench/reference/bench.py");
    let mut cmd = Command::new(&cli.python);
    cmd.arg(script)
        .arg(serde_json::to_string(job)?)
        .arg("--threads")
        .arg(cli.threads.to_string())
        .arg("--device")
        .arg(&cli.reference_device)
        .env("OMP_NUM_THREADS", cli.threads.to_string())
        .env("MKL_NUM_THREADS", cli.threads.to_string());
    collect(cmd, &format!("PEFT reference ({})", describe(job)))
}

/// `YYYY-MM-DD` (UTC) from the system clock.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Howard Hinnant's civil_from_days.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
