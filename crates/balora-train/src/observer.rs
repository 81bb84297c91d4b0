//! What watches a run: [`Observer`]s receive every step's metrics and timing. The trainer
//! always writes the JSONL files ([`JsonlLog`]); a progress bar ([`Progress`], feature
//! `progress`) and the loss plot ([`LossPlot`], feature `plot`) are added by the caller.

use std::path::{Path, PathBuf};

use crate::TrainError;
use crate::metrics::{MetricsLog, StepMetrics, StepTiming};

/// Receives the events of a run, in order.
pub trait Observer {
    /// The run starts (or resumes) after `step` of `max_steps` optimizer steps.
    fn on_start(&mut self, _step: usize, _max_steps: usize) -> Result<(), TrainError> {
        Ok(())
    }
    /// An optimizer step finished.
    fn on_step(&mut self, metrics: &StepMetrics, timing: &StepTiming) -> Result<(), TrainError>;
    /// Something worth telling the user during `step` (a regulariser skipped on a batch).
    fn on_note(&mut self, _step: usize, _note: &str) {}
    /// The run ended normally (also when it stopped early at `stop_at_step`).
    fn on_end(&mut self) -> Result<(), TrainError> {
        Ok(())
    }
}

/// `metrics.jsonl` (deterministic: what the seed fixes) and `timing.jsonl` (speeds) in the
/// output directory, one line per step, flushed at once. On resume the lines after the
/// checkpoint are dropped first, so the files read as an uninterrupted run's.
pub struct JsonlLog {
    dir: PathBuf,
    logs: Option<(MetricsLog, MetricsLog)>,
}

impl JsonlLog {
    /// The logs of the run writing into `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            logs: None,
        }
    }
}

impl Observer for JsonlLog {
    fn on_start(&mut self, step: usize, _max_steps: usize) -> Result<(), TrainError> {
        self.logs = Some((
            MetricsLog::open(&self.dir.join("metrics.jsonl"), step)?,
            MetricsLog::open(&self.dir.join("timing.jsonl"), step)?,
        ));
        Ok(())
    }

    fn on_step(&mut self, metrics: &StepMetrics, timing: &StepTiming) -> Result<(), TrainError> {
        if let Some((m, t)) = &mut self.logs {
            m.write(metrics)?;
            t.write(timing)?;
        }
        Ok(())
    }
}

/// A terminal progress bar with the step's losses and speed.
#[cfg(feature = "progress")]
#[derive(Default)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

#[cfg(feature = "progress")]
impl Observer for Progress {
    fn on_start(&mut self, step: usize, max_steps: usize) -> Result<(), TrainError> {
        let bar = indicatif::ProgressBar::new(max_steps as u64).with_position(step as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        self.bar = Some(bar);
        Ok(())
    }

    fn on_step(&mut self, m: &StepMetrics, t: &StepTiming) -> Result<(), TrainError> {
        let Some(bar) = &self.bar else {
            return Ok(());
        };
        let term =
            |name: &str, v: Option<f64>| v.map_or(String::new(), |v| format!(" {name} {v:.3}"));
        bar.set_message(format!(
            "loss {:.4} task {:.4}{}{}{} {:.0} tok/s",
            m.loss,
            m.task,
            term("C", m.consistency),
            term("D", m.diversity),
            term("S", m.svd),
            t.tokens_per_s
        ));
        bar.inc(1);
        Ok(())
    }

    fn on_note(&mut self, step: usize, note: &str) {
        if let Some(bar) = &self.bar {
            bar.println(format!("step {step}: {note}"));
        }
    }

    fn on_end(&mut self) -> Result<(), TrainError> {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        Ok(())
    }
}

/// `loss.png` in the output directory at the end of the run: the task loss and each weighted
/// regulariser against the step, from `metrics.jsonl` (so a resumed run plots its whole
/// curve).
#[cfg(feature = "plot")]
pub struct LossPlot {
    dir: PathBuf,
}

#[cfg(feature = "plot")]
impl LossPlot {
    /// The plot of the run writing into `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
}

#[cfg(feature = "plot")]
impl Observer for LossPlot {
    fn on_step(&mut self, _: &StepMetrics, _: &StepTiming) -> Result<(), TrainError> {
        Ok(())
    }

    fn on_end(&mut self) -> Result<(), TrainError> {
        let metrics = crate::metrics::read_metrics::<StepMetrics>(&self.dir.join("metrics.jsonl"))?;
        crate::metrics::plot_losses(&metrics, &self.dir.join("loss.png"))
    }
}
