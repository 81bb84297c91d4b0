//! Run an experiment grid (methods × seeds × learning rates, the rate chosen per method on a
//! validation split): the command line of [`balora::experiment`].
//!
//! ```text
//! cargo run --release --example experiment -- --suite nlu-sentiment   # bench/suites/*.toml
//! cargo run --release --example experiment -- --config grid.toml
//! cargo run --example experiment -- --suite nlu-sentiment --smoke     # 2 × 2 × 1 step (CI)
//! cargo run --example experiment -- --render bench/results/experiments/nlu-sentiment-intel
//! ```
//!
//! Writes `summary.json`, `summary.md` and `scores.png` in the grid's output folder; rerunning
//! skips finished runs and resumes an interrupted one from its checkpoint.

use std::path::PathBuf;

use anyhow::Result;
use balora::experiment::{Experiment, ExperimentConfig, ExperimentReport};
use balora::finetune::{MethodName, finetune};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Compare fine-tuning methods over seeds and learning rates")]
struct Options {
    /// A suite of bench/suites (its file name without `.toml`).
    #[arg(long, conflicts_with = "config")]
    suite: Option<String>,
    /// A grid's TOML file (the keys of `balora::experiment::ExperimentConfig`; `[base]` holds
    /// `finetune`'s options).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Two methods × two seeds × one learning rate, one step each, on a few examples (CI).
    #[arg(long)]
    smoke: bool,
    /// Redraw `scores.png` of a finished grid's folder (its `summary.json`) and print its table.
    #[arg(long, conflicts_with_all = ["suite", "config", "smoke"])]
    render: Option<PathBuf>,
}

fn main() -> Result<()> {
    balora::alloc::keep_freed_memory();
    let o = Options::parse();
    if let Some(dir) = &o.render {
        let report = ExperimentReport::read(&dir.join("summary.json"))?;
        report.draw_scores(&dir.join("scores.png"))?;
        println!("{}", report.markdown());
        return Ok(());
    }
    let path = match (&o.suite, &o.config) {
        (Some(suite), _) => PathBuf::from(format!("bench/suites/{suite}.toml")),
        (None, Some(path)) => path.clone(),
        (None, None) => anyhow::bail!("give --suite NAME or --config FILE"),
    };
    let mut config = ExperimentConfig::read(&path)?;
    if o.smoke {
        config.methods = vec![MethodName::Lora.into(), MethodName::Balora.into()];
        config.seeds = vec![1, 2];
        config.learning_rates.truncate(1);
        config.base.max_steps = Some(1);
        config.base.train_limit = Some(64);
        config.base.eval_limit = Some(16);
        config.output = PathBuf::from("target/smoke/experiment").join(&config.name);
    }
    let mut run = |c: &balora::finetune::FinetuneConfig| finetune(c, &mut |_| {});
    let report = Experiment::new(&config, &mut run, &mut |line| println!("{line}")).run()?;
    println!("\n{}", report.markdown());
    println!("wrote {}", config.output.display());
    Ok(())
}
