//! Experiment grids: methods × seeds × learning rates over one task, each run in its own
//! folder, resumable, summarised over seeds as JSON, a Markdown table and PNGs (accuracy bars
//! with error bars, learning curves).
//!
//! The learning rate is chosen **per method on a validation split carved from the training
//! data** (seeded, written under `data/`), never on the evaluation sets: tuned learning rates
//! change the ranking of LoRA variants, and choosing them on the test sets would report a
//! best case. The final runs then train on the rest of the training data with each seed and
//! are scored on every evaluation set.

mod data;
mod features;
mod method;
#[cfg(feature = "plot")]
mod plot;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::finetune::{FinetuneConfig, FinetuneError, FinetuneReport, SUMMARY, Scores, TaskKind};
use balora_io::IoError;
use balora_io::fs::{read_json, write_json};

pub use data::{DataSummary, PreparedData, TrainingData, carve_validation, prepare};
pub use features::{FeatureSpread, PooledFeatures, pca_2d, silhouette};
pub use method::GridMethod;
pub use stats::Summary;

/// A grid over one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The experiment's name (headings, file names).
    pub name: String,
    /// Every run's settings but the method, seed, learning rate, data and output.
    pub base: FinetuneConfig,
    /// The methods compared (`balora-iclr2026`: BA-LoRA with that preset).
    pub methods: Vec<GridMethod>,
    /// The seeds of the final runs (the first one also seeds the learning-rate selection).
    pub seeds: Vec<u64>,
    /// The learning rates tried per method on the validation split.
    pub learning_rates: Vec<f64>,
    /// The fraction of the training data held out for choosing the learning rate.
    #[serde(default = "default_validation")]
    pub validation_fraction: f64,
    /// The evaluation sets by name, in report order; the first is scored by the training run
    /// itself, the others by evaluating its saved adapter.
    pub eval_sets: BTreeMap<String, PathBuf>,
    /// Seeded changes to the training data (label noise, class imbalance) before the
    /// validation split is carved; the evaluation sets stay clean.
    #[serde(default)]
    pub training_data: TrainingData,
    /// What the learning rate is chosen by (default: accuracy for nlu, response loss for nlg).
    #[serde(default)]
    pub selection_metric: Option<SelectionMetric>,
    /// Methods whose pooled features of the first evaluation set (first seed's final run) are
    /// drawn side by side in `features.png` by PCA, each with its silhouette score (NLU).
    #[serde(default)]
    pub feature_picture: Vec<GridMethod>,
    /// Where everything goes.
    pub output: PathBuf,
}

fn default_validation() -> f64 {
    0.1
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// `select` (learning-rate choice) or `final`.
    pub phase: Phase,
    /// The method.
    pub method: GridMethod,
    /// The seed.
    pub seed: u64,
    /// The learning rate.
    pub lr: f64,
    /// Its folder.
    pub dir: PathBuf,
}

/// The two phases of a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Every learning rate on the validation split, with the first seed.
    Select,
    /// Every seed at the chosen learning rate, on the evaluation sets.
    Final,
}

/// What a grid found: the chosen learning rates and, per method and evaluation set, the
/// summary of accuracy (and macro-F1 / response loss where the task has them) over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentReport {
    /// The experiment.
    pub name: String,
    /// The chosen learning rate per method.
    pub chosen_lr: BTreeMap<String, f64>,
    /// What the rates were chosen by (absent in grids written before it could be chosen:
    /// the task's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_metric: Option<SelectionMetric>,
    /// Validation score per method and learning rate (the selection's evidence).
    pub validation: BTreeMap<String, Vec<(f64, f64)>>,
    /// The standard deviation of the validation score across the learning-rate grid, per
    /// method (MonteCLoRA's stability claim is about this and the spread over seeds).
    pub lr_sd: BTreeMap<String, f64>,
    /// Per method, per evaluation set: the metrics' summaries over seeds.
    pub results: BTreeMap<String, BTreeMap<String, MetricSummaries>>,
    /// What the runs trained and chose on (absent in grids written before it was recorded).
    #[serde(default)]
    pub data: Option<DataSummary>,
    /// Per method of `feature_picture`: how well the gold classes separate in its features.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, FeatureSpread>,
    /// Seconds of wall time spent by this process.
    pub wall_s: f64,
}

/// Summaries of each metric over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummaries {
    /// Accuracy.
    pub accuracy: Summary,
    /// Macro-F1 (classification).
    pub macro_f1: Option<Summary>,
    /// Held-out response loss (causal LMs).
    pub response_loss: Option<Summary>,
}

/// A grid could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A grid file that does not parse.
    #[error("{path}: {reason}")]
    File {
        /// The TOML file.
        path: PathBuf,
        /// The parser's message (naming the key).
        reason: String,
    },
    /// A setting no grid can use.
    #[error("experiment {name}: {reason}")]
    Config {
        /// The experiment.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// One run of the grid failed; the grid stops, and a rerun resumes from the runs
    /// already written.
    #[error("run {dir}: {source}")]
    Run {
        /// The run's folder.
        dir: PathBuf,
        /// The run's own error.
        source: Box<FinetuneError>,
    },
    /// Writing `summary.json`, `summary.md` or a cached evaluation.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Reading the training data or a run's metrics, or drawing a plot.
    #[error(transparent)]
    Train(#[from] balora_train::TrainError),
    /// Training data the grid's `training_data` changes cannot apply to.
    #[error("{path}: {reason}")]
    Data {
        /// The training file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The settings a grid gave a run, recorded in its folder before it starts.
const RUN_CONFIG: &str = "grid-run.json";

/// The folder name of a learning rate (`lr-3e-4`).
fn lr_dir(lr: f64) -> String {
    format!("lr-{lr:e}")
}

impl ExperimentConfig {
    /// Read a grid from the TOML file `path` and check it ([`check`](Self::check)).
    pub fn read(path: &Path) -> Result<Self, ExperimentError> {
        let bytes = balora_io::fs::read(path)?;
        let bad = |reason: String| ExperimentError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = String::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
        let config: Self = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// Refuse a grid no run of which could start: empty lists, learning rates that are not
    /// positive finite numbers, a validation fraction outside (0, 1), a base that is not a
    /// valid run.
    pub fn check(&self) -> Result<(), ExperimentError> {
        let bad = |reason: &str| {
            Err(ExperimentError::Config {
                name: self.name.clone(),
                reason: reason.into(),
            })
        };
        if self.methods.is_empty() || self.seeds.is_empty() || self.learning_rates.is_empty() {
            return bad("methods, seeds and learning_rates each need at least one value");
        }
        if self.eval_sets.is_empty() {
            return bad("eval_sets needs at least one evaluation set");
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad("validation_fraction must lie in (0, 1)");
        }
        if self.base.train.is_none() || self.base.model.is_none() {
            return bad("base.model and base.train are required");
        }
        if let Err(reason) = self.training_data.check() {
            return bad(&reason);
        }
        if !self.training_data.is_identity() && self.base.task != TaskKind::Nlu {
            return bad("training_data changes labels: they need base.task = \"nlu\"");
        }
        let metric = self.selection_metric();
        if !metric.reported_by(self.base.task) {
            return bad(&format!(
                "selection_metric {metric:?} is not reported by task {:?}",
                self.base.task
            ));
        }
        if !self.feature_picture.is_empty() && self.base.task != TaskKind::Nlu {
            return bad("feature_picture draws a classifier's features: base.task = \"nlu\"");
        }
        if let Some(m) = self
            .feature_picture
            .iter()
            .find(|m| !self.methods.contains(m))
        {
            return bad(&format!(
                "feature_picture names {m}, which is not in methods"
            ));
        }
        if let Some(lr) = self
            .learning_rates
            .iter()
            .find(|lr| !(lr.is_finite() && **lr > 0.0))
        {
            return bad(&format!("learning rate {lr} is not a finite value > 0"));
        }
        self.base.validate().map_err(|e| ExperimentError::Config {
            name: self.name.clone(),
            reason: format!("base: {e}"),
        })?;
        Ok(())
    }

    /// What the learning rate is chosen by.
    pub fn selection_metric(&self) -> SelectionMetric {
        self.selection_metric
            .unwrap_or(SelectionMetric::of_task(self.base.task))
    }

    /// The selection runs: every method × learning rate, first seed.
    pub fn selection_runs(&self) -> Vec<RunSpec> {
        let seed = self.seeds[0];
        let mut runs = Vec::new();
        for &method in &self.methods {
            for &lr in &self.learning_rates {
                runs.push(RunSpec {
                    phase: Phase::Select,
                    method,
                    seed,
                    lr,
                    dir: self
                        .output
                        .join("select")
                        .join(method.to_string())
                        .join(lr_dir(lr)),
                });
            }
        }
        runs
    }

    /// The final runs: every method × seed at its chosen learning rate.
    pub fn final_runs(&self, chosen: &BTreeMap<String, f64>) -> Vec<RunSpec> {
        let mut runs = Vec::new();
        for &method in &self.methods {
            let lr = chosen[&method.to_string()];
            for &seed in &self.seeds {
                runs.push(RunSpec {
                    phase: Phase::Final,
                    method,
                    seed,
                    lr,
                    dir: self
                        .output
                        .join("runs")
                        .join(method.to_string())
                        .join(format!("seed-{seed}")),
                });
            }
        }
        runs
    }

    /// The run's settings: the base with the spec's method, seed, rate and data.
    fn run_config(&self, spec: &RunSpec, train: &Path, eval: &Path) -> FinetuneConfig {
        FinetuneConfig {
            method: spec.method.method,
            preset: spec.method.preset.unwrap_or(self.base.preset),
            seed: spec.seed,
            lr: Some(spec.lr),
            train: Some(train.to_path_buf()),
            eval: Some(eval.to_path_buf()),
            output: Some(spec.dir.clone()),
            // an interrupted run continues from its checkpoint
            resume: true,
            eval_only: None,
            eval_before: spec.phase == Phase::Final,
            merge_to: None,
            features_to: None,
            ..self.base.clone()
        }
    }
}

/// What the learning rate is chosen by, on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMetric {
    /// Accuracy (the default for classification).
    Accuracy,
    /// Macro-F1 (classification): on imbalanced data, where predicting the majority class
    /// everywhere scores the majority's share in accuracy.
    MacroF1,
    /// Response loss, lower is better (the default for causal LMs: it moves long before a
    /// small model's accuracy does).
    ResponseLoss,
}

impl SelectionMetric {
    /// The default of a task.
    pub fn of_task(task: TaskKind) -> Self {
        match task {
            TaskKind::Nlu => Self::Accuracy,
            TaskKind::Nlg => Self::ResponseLoss,
        }
    }

    /// Whether runs of `task` report the metric.
    pub fn reported_by(self, task: TaskKind) -> bool {
        match self {
            Self::Accuracy => true,
            Self::MacroF1 => task == TaskKind::Nlu,
            Self::ResponseLoss => task == TaskKind::Nlg,
        }
    }

    /// The score of a run, higher is better (a loss negated); `None` when the run's task does
    /// not report the metric.
    pub fn score(self, scores: &Scores) -> Option<f64> {
        match self {
            Self::Accuracy => Some(scores.accuracy),
            Self::MacroF1 => scores.macro_f1,
            Self::ResponseLoss => scores.response_loss.map(|l| -l),
        }
    }
}

/// A run's validation score by `metric` (checked against the task before any run).
fn selection_score(metric: SelectionMetric, scores: &Scores) -> f64 {
    metric.score(scores).unwrap_or(f64::NAN)
}

/// Runs a grid. `run` executes one fine-tuning run (normally [`crate::finetune::finetune`];
/// tests pass a stand-in); `notes` gets a progress line per run with the overall ETA.
pub struct Experiment<'a> {
    config: &'a ExperimentConfig,
    run: &'a mut dyn FnMut(&FinetuneConfig) -> Result<FinetuneReport, FinetuneError>,
    notes: &'a mut dyn FnMut(&str),
    done: usize,
    total: usize,
    started: Instant,
}

impl<'a> Experiment<'a> {
    /// A grid over `config`, running each fine-tuning run with `run`.
    pub fn new(
        config: &'a ExperimentConfig,
        run: &'a mut dyn FnMut(&FinetuneConfig) -> Result<FinetuneReport, FinetuneError>,
        notes: &'a mut dyn FnMut(&str),
    ) -> Self {
        let total = config.methods.len() * (config.learning_rates.len() + config.seeds.len());
        Self {
            config,
            run,
            notes,
            done: 0,
            total,
            started: Instant::now(),
        }
    }

    /// Refuse to reuse a run folder (finished or interrupted) whose recorded settings differ
    /// from what the grid would run now — e.g. a final run made at another chosen rate after
    /// the grid's rates changed — naming the keys that differ. Folders from before the
    /// settings were recorded are taken as they are.
    fn same_settings(
        &self,
        spec: &RunSpec,
        config: &FinetuneConfig,
    ) -> Result<(), ExperimentError> {
        let path = spec.dir.join(RUN_CONFIG);
        if !path.is_file() {
            return Ok(());
        }
        let was: FinetuneConfig = read_json(&path)?;
        if &was == config {
            return Ok(());
        }
        let (was, now) = (
            serde_json::to_value(&was).unwrap_or_default(),
            serde_json::to_value(config).unwrap_or_default(),
        );
        let keys: Vec<String> = now
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| was.get(k.as_str()) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k} {} → {v}",
                    was.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect();
        Err(ExperimentError::Config {
            name: self.config.name.clone(),
            reason: format!(
                "{} was run with other settings than the grid gives it now ({}); remove the \
                 folder to run it again, or restore the grid",
                spec.dir.display(),
                keys.join(", ")
            ),
        })
    }

    /// Run `spec` unless its folder already holds a finished run's `summary.json`.
    fn one(
        &mut self,
        spec: &RunSpec,
        config: FinetuneConfig,
    ) -> Result<FinetuneReport, ExperimentError> {
        let summary = spec.dir.join(SUMMARY);
        let t0 = Instant::now();
        self.same_settings(spec, &config)?;
        let how = if summary.is_file() {
            "done before"
        } else {
            std::fs::create_dir_all(&spec.dir).map_err(|source| IoError::Fs {
                path: spec.dir.clone(),
                source,
            })?;
            write_json(&spec.dir.join(RUN_CONFIG), &config)?;
            (self.run)(&config).map_err(|e| ExperimentError::Run {
                dir: spec.dir.clone(),
                source: Box::new(e),
            })?;
            "ran"
        };
        // the file, not the value in memory: a resumed grid then sums exactly the same numbers
        let report = FinetuneReport::read(&summary)?;
        self.done += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = elapsed / self.done as f64 * (self.total - self.done) as f64;
        (self.notes)(&format!(
            "[{}/{}] {:?} {} seed {} lr {:e}: {} ({how} in {:.0} s; eta {:.0} min)",
            self.done,
            self.total,
            spec.phase,
            spec.method,
            spec.seed,
            spec.lr,
            report.eval_after,
            t0.elapsed().as_secs_f64(),
            eta / 60.0
        ));
        Ok(report)
    }

    /// Run the whole grid (skipping finished runs) and write `summary.json`, `summary.md`,
    /// `scores.png` and `curves.png` under the output folder (with the `plot` feature).
    pub fn run(mut self) -> Result<ExperimentReport, ExperimentError> {
        let c = self.config;
        c.check()?;
        let data = c.output.join("data");
        let train = c.base.train.as_ref().expect("checked");
        let prepared = prepare(
            train,
            &c.training_data,
            c.validation_fraction,
            c.seeds[0],
            &data,
        )?;
        let (train, validation) = (prepared.train, prepared.validation);
        // 1. the learning rate per method, on the validation split only
        let mut validation_scores: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for spec in c.selection_runs() {
            let report = self.one(&spec, c.run_config(&spec, &train, &validation))?;
            validation_scores
                .entry(spec.method.to_string())
                .or_default()
                .push((
                    spec.lr,
                    selection_score(c.selection_metric(), &report.eval_after),
                ));
        }
        // the best validation score per method; among equal scores, the later in learning_rates
        let chosen: BTreeMap<String, f64> = validation_scores
            .iter()
            .map(|(m, scores)| {
                let best = scores
                    .iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map_or(f64::NAN, |s| s.0);
                (m.clone(), best)
            })
            .collect();
        let lr_sd = validation_scores
            .iter()
            .map(|(m, s)| {
                let values: Vec<f64> = s.iter().map(|v| v.1.abs()).collect();
                (m.clone(), Summary::of(&values).map_or(0.0, |s| s.sd))
            })
            .collect();
        // 2. every seed at the chosen rate, scored on every evaluation set
        let (first_name, first_set) = c.eval_sets.iter().next().expect("checked");
        let mut scores: BTreeMap<String, BTreeMap<String, Vec<Scores>>> = BTreeMap::new();
        #[cfg(feature = "plot")]
        let mut curves = Vec::new();
        for spec in c.final_runs(&chosen) {
            let report = self.one(&spec, c.run_config(&spec, &train, first_set))?;
            #[cfg(feature = "plot")]
            {
                let metrics = spec.dir.join("metrics.jsonl");
                if metrics.is_file() {
                    let steps: Vec<balora_train::metrics::StepMetrics> =
                        balora_train::metrics::read_metrics(&metrics)?;
                    curves.push((spec.method.to_string(), steps));
                }
            }
            let by_set = scores.entry(spec.method.to_string()).or_default();
            by_set
                .entry(first_name.clone())
                .or_default()
                .push(report.eval_after);
            for (name, set) in c.eval_sets.iter().skip(1) {
                let s = evaluate_saved(&mut *self.run, c, &spec, (&train, set), name)?;
                by_set.entry(name.clone()).or_default().push(s);
            }
        }
        // 3. the feature picture: the first seed's final run of each method named
        let mut pictures = Vec::new();
        for spec in c.final_runs(&chosen) {
            if spec.seed == c.seeds[0] && c.feature_picture.contains(&spec.method) {
                let data = (train.as_path(), first_set.as_path());
                let f = saved_features(&mut *self.run, c, &spec, data, first_name)?;
                pictures.push((spec.method.to_string(), f));
            }
        }
        let mut spreads = Vec::new();
        for (method, f) in &pictures {
            let (points, spread) = f.spread().ok_or_else(|| ExperimentError::Config {
                name: c.name.clone(),
                reason: format!(
                    "{method}'s features are not one row of equal length per example with two \
                     or more classes"
                ),
            })?;
            spreads.push((method.clone(), points, spread));
        }
        let results = scores
            .into_iter()
            .map(|(m, sets)| {
                let sets = sets
                    .into_iter()
                    .map(|(name, s)| (name, summarise(&s)))
                    .collect();
                (m, sets)
            })
            .collect();
        let report = ExperimentReport {
            name: c.name.clone(),
            chosen_lr: chosen,
            selection_metric: Some(c.selection_metric()),
            validation: validation_scores,
            lr_sd,
            results,
            data: Some(prepared.summary),
            features: spreads.iter().map(|(m, _, s)| (m.clone(), *s)).collect(),
            wall_s: self.started.elapsed().as_secs_f64(),
        };
        write_json(&c.output.join("summary.json"), &report)?;
        balora_io::fs::atomic_write(&c.output.join("summary.md"), report.markdown().as_bytes())?;
        #[cfg(feature = "plot")]
        {
            report.draw_scores(&c.output.join("scores.png"))?;
            plot::curves(&c.name, &curves, &c.output.join("curves.png"))?;
            if let Some((_, f)) = pictures.first() {
                let panels: Vec<plot::Panel<'_>> = spreads
                    .iter()
                    .map(|(m, points, spread)| plot::Panel {
                        method: m,
                        points,
                        spread: *spread,
                    })
                    .collect();
                let title = format!("{}: pooled features of {first_name}", c.name);
                plot::features(
                    &title,
                    &panels,
                    &f.labels,
                    &f.label_names,
                    &c.output.join("features.png"),
                )?;
            }
        }
        Ok(report)
    }
}

/// Evaluate a final run's saved adapter alone on `set`, into `<run>/<label>`, with `edit`
/// applied to the run's settings.
fn run_saved(
    run: &mut dyn FnMut(&FinetuneConfig) -> Result<FinetuneReport, FinetuneError>,
    c: &ExperimentConfig,
    spec: &RunSpec,
    (train, set): (&Path, &Path),
    label: &str,
    edit: impl FnOnce(&mut FinetuneConfig),
) -> Result<FinetuneReport, ExperimentError> {
    let mut config = FinetuneConfig {
        eval_only: Some(spec.dir.join("adapter")),
        output: Some(spec.dir.join(label)),
        resume: false,
        ..c.run_config(spec, train, set)
    };
    edit(&mut config);
    run(&config).map_err(|e| ExperimentError::Run {
        dir: spec.dir.clone(),
        source: Box::new(e),
    })
}

/// Score a final run's saved adapter on another evaluation set (cached in
/// `eval-<name>.json`, so a resumed grid does not evaluate twice).
fn evaluate_saved(
    run: &mut dyn FnMut(&FinetuneConfig) -> Result<FinetuneReport, FinetuneError>,
    c: &ExperimentConfig,
    spec: &RunSpec,
    data: (&Path, &Path),
    name: &str,
) -> Result<Scores, ExperimentError> {
    let cache = spec.dir.join(format!("eval-{name}.json"));
    if cache.is_file() {
        return Ok(read_json(&cache)?);
    }
    let report = run_saved(run, c, spec, data, &format!("eval-{name}"), |_| {})?;
    write_json(&cache, &report.eval_after)?;
    Ok(report.eval_after)
}

/// The pooled features of a final run's saved adapter on an evaluation set (cached in
/// `features-<name>.json`).
fn saved_features(
    run: &mut dyn FnMut(&FinetuneConfig) -> Result<FinetuneReport, FinetuneError>,
    c: &ExperimentConfig,
    spec: &RunSpec,
    data: (&Path, &Path),
    name: &str,
) -> Result<PooledFeatures, ExperimentError> {
    let path = spec.dir.join(format!("features-{name}.json"));
    if !path.is_file() {
        let to = path.clone();
        run_saved(run, c, spec, data, &format!("features-{name}"), |cfg| {
            cfg.features_to = Some(to)
        })?;
    }
    Ok(PooledFeatures::read(&path)?)
}

fn summarise(scores: &[Scores]) -> MetricSummaries {
    let of = |f: &dyn Fn(&Scores) -> Option<f64>| {
        let v: Option<Vec<f64>> = scores.iter().map(f).collect();
        v.and_then(|v| Summary::of(&v))
    };
    MetricSummaries {
        accuracy: of(&|s| Some(s.accuracy)).expect("at least one seed"),
        macro_f1: of(&|s| s.macro_f1),
        response_loss: of(&|s| s.response_loss),
    }
}

impl ExperimentReport {
    /// Read a grid's `summary.json`.
    pub fn read(path: &Path) -> Result<Self, IoError> {
        read_json(path)
    }

    /// Draw `scores.png` (accuracy bars with error bars per evaluation set) from this report:
    /// what `experiment --render DIR` redraws for a committed grid.
    #[cfg(feature = "plot")]
    pub fn draw_scores(&self, path: &Path) -> Result<(), ExperimentError> {
        Ok(plot::bars(self, path)?)
    }

    /// The Markdown table: one row per method, one column per evaluation set, mean ± sd
    /// [95 % interval] of accuracy (and macro-F1 / response loss), and the chosen rate.
    pub fn markdown(&self) -> String {
        let sets: Vec<&String> = self
            .results
            .values()
            .next()
            .map(|s| s.keys().collect())
            .unwrap_or_default();
        let mut out = format!("## {}\n\n| method | lr | lr-grid sd |", self.name);
        for s in &sets {
            out.push_str(&format!(" {s} |"));
        }
        out.push_str("\n|---|---|---|");
        out.push_str(&"---|".repeat(sets.len()));
        out.push('\n');
        let cell = |s: &Summary, pct: bool| {
            let k = if pct { 100.0 } else { 1.0 };
            let ci = s
                .ci95
                .map_or(String::new(), |c| format!(" [±{:.2}]", k * c));
            format!("{:.2} ± {:.2}{ci}", k * s.mean, k * s.sd)
        };
        for (method, by_set) in &self.results {
            out.push_str(&format!(
                "| {method} | {:e} | {:.4} |",
                self.chosen_lr.get(method).copied().unwrap_or(f64::NAN),
                self.lr_sd.get(method).copied().unwrap_or(f64::NAN)
            ));
            for s in &sets {
                let m = &by_set[*s];
                let mut text = format!("acc {}", cell(&m.accuracy, true));
                if let Some(f1) = &m.macro_f1 {
                    text.push_str(&format!("; F1 {}", cell(f1, true)));
                }
                if let Some(l) = &m.response_loss {
                    text.push_str(&format!("; loss {}", cell(l, false)));
                }
                out.push_str(&format!(" {text} |"));
            }
            out.push('\n');
        }
        if let Some(d) = &self.data {
            out.push_str(&format!(
                "\nTrained on {} rows, rates chosen on {} validation rows",
                d.train_rows, d.validation_rows
            ));
            if d.flipped > 0 {
                out.push_str(&format!("; {} labels flipped", d.flipped));
            }
            if !d.label_counts.is_empty() {
                let counts: Vec<String> = d
                    .label_counts
                    .iter()
                    .map(|(l, n)| format!("{l}: {n}"))
                    .collect();
                out.push_str(&format!("; rows per label {}", counts.join(", ")));
            }
            out.push_str(".\n");
        }
        for (method, s) in &self.features {
            out.push_str(&format!(
                "\nFeatures of {method}: silhouette {:.3} in the full space, {:.3} in the 2-D \
                 PCA drawn (which holds {:.0} % of the variance).",
                s.silhouette,
                s.silhouette_2d,
                100.0 * s.explained
            ));
        }
        if !self.features.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "\nMean ± sd over {} seed(s) [95 % t-interval half-width]; accuracy and F1 in %. \
             Learning rates chosen per method on the validation split. Wall time {:.0} s.\n",
            self.results
                .values()
                .next()
                .and_then(|s| s.values().next())
                .map_or(0, |m| m.accuracy.n),
            self.wall_s
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::MethodName;

    fn config(dir: &Path) -> ExperimentConfig {
        let train = dir.join("train.jsonl");
        let rows: String = (0..20)
            .map(|i| format!("{{\"text\": \"row {i}\", \"label\": \"{}\"}}\n", i % 2))
            .collect();
        std::fs::write(&train, rows).unwrap();
        ExperimentConfig {
            name: "toy".into(),
            base: FinetuneConfig {
                task: TaskKind::Nlu,
                model: Some(dir.join("model")),
                train: Some(train),
                ..FinetuneConfig::default()
            },
            methods: vec![MethodName::Lora.into(), MethodName::Pissa.into()],
            seeds: vec![1, 2, 3],
            learning_rates: vec![1e-4, 1e-3],
            validation_fraction: 0.25,
            eval_sets: BTreeMap::from([
                ("in-domain".to_string(), dir.join("test-a.jsonl")),
                ("shifted".to_string(), dir.join("test-b.jsonl")),
            ]),
            training_data: TrainingData::default(),
            selection_metric: None,
            feature_picture: Vec::new(),
            output: dir.join("out"),
        }
    }

    /// A stand-in for `finetune`: scores depend on method, rate, seed and evaluation file,
    /// and a training run leaves its `summary.json` as a real one does.
    fn fake(c: &FinetuneConfig) -> Result<FinetuneReport, FinetuneError> {
        let lr = c.lr.unwrap();
        let best = if c.method == MethodName::Lora {
            1e-3
        } else {
            1e-4
        };
        let eval = c.eval.as_ref().unwrap().display().to_string();
        let shift = if eval.ends_with("test-b.jsonl") {
            0.1
        } else {
            0.0
        };
        let accuracy = if lr == best { 0.8 } else { 0.6 } - shift + 0.01 * c.seed as f64;
        let report = FinetuneReport {
            task: c.task,
            method: c.method,
            steps: 3,
            adapted_layers: 1,
            trainable_params: 1,
            eval_examples: 4,
            eval_before: Some(Scores {
                accuracy: 0.5,
                macro_f1: None,
                mcc: None,
                response_loss: None,
            }),
            eval_after: Scores {
                accuracy,
                macro_f1: Some(accuracy),
                mcc: None,
                response_loss: None,
            },
            tokens_per_s: 1.0,
            peak_rss_mb: 1.0,
            final_loss: Some(0.1),
            output: c.output.clone().unwrap(),
        };
        if let Some(path) = &c.features_to {
            // two classes, further apart for LoRA than for PiSSA
            let gap = if c.method == MethodName::Lora {
                4.0
            } else {
                1.0
            };
            let rows = (0..8)
                .map(|i| vec![(i % 2) as f32 * gap + 0.1 * i as f32, (i / 2) as f32])
                .collect();
            let labels = (0..8).map(|i| i % 2).collect();
            let names = vec!["0".into(), "1".into()];
            PooledFeatures {
                label_names: names,
                labels,
                rows,
            }
            .write(path)
            .unwrap();
        }
        if c.eval_only.is_none() {
            let dir = c.output.as_ref().unwrap();
            std::fs::create_dir_all(dir).unwrap();
            report.write(&dir.join(SUMMARY)).unwrap();
        }
        Ok(report)
    }

    #[test]
    fn the_selection_metric_scores_higher_as_better() {
        let s = Scores {
            accuracy: 0.9,
            macro_f1: Some(0.47),
            mcc: None,
            response_loss: None,
        };
        assert_eq!(SelectionMetric::Accuracy.score(&s), Some(0.9));
        assert_eq!(SelectionMetric::MacroF1.score(&s), Some(0.47));
        assert_eq!(SelectionMetric::ResponseLoss.score(&s), None);
        let lm = Scores {
            response_loss: Some(0.5),
            macro_f1: None,
            ..s
        };
        assert_eq!(SelectionMetric::ResponseLoss.score(&lm), Some(-0.5));
        let toml = "selection_metric = \"macro_f1\"";
        #[derive(Deserialize)]
        struct Key {
            selection_metric: SelectionMetric,
        }
        let k: Key = toml::from_str(toml).unwrap();
        assert_eq!(k.selection_metric, SelectionMetric::MacroF1);
    }

    #[test]
    fn a_preset_method_runs_balora_with_that_preset() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.methods = vec![
            "balora".parse().unwrap(),
            "balora-iclr2026".parse().unwrap(),
        ];
        let runs = c.selection_runs();
        assert!(runs[2].dir.ends_with("select/balora-iclr2026/lr-1e-4"));
        let (t, e) = (Path::new("train.jsonl"), Path::new("eval.jsonl"));
        let preset = c.run_config(&runs[2], t, e);
        assert_eq!(
            (preset.method, preset.preset),
            (MethodName::Balora, crate::finetune::Preset::Iclr2026)
        );
        assert_eq!(c.run_config(&runs[0], t, e).preset, c.base.preset);
    }

    /// Every committed grid under `bench/results/experiments/` (what docs/results.md quotes)
    /// reads back, and its chosen rates and summaries are what its committed runs' own
    /// `summary.json` and `eval-*.json` files give.
    #[test]
    fn committed_grids_agree_with_their_runs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/experiments");
        let mut grids = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let dir = entry.unwrap().path();
            let report = ExperimentReport::read(&dir.join("summary.json")).unwrap();
            for (method, sets) in &report.results {
                // the rate: the best validation score over the method's selection runs
                let mut validation = Vec::new();
                for run in std::fs::read_dir(dir.join("select").join(method)).unwrap() {
                    let run = run.unwrap().path();
                    let lr: f64 = run.file_name().unwrap().to_str().unwrap()[3..]
                        .parse()
                        .unwrap();
                    let r = FinetuneReport::read(&run.join(SUMMARY)).unwrap();
                    let metric = report
                        .selection_metric
                        .unwrap_or(SelectionMetric::of_task(r.task));
                    validation.push((lr, selection_score(metric, &r.eval_after)));
                }
                // the committed grids list increasing rates: a tie goes to the larger one
                validation.sort_by(|a, b| a.0.total_cmp(&b.0));
                let best = validation
                    .iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap();
                assert_eq!(
                    report.chosen_lr[method],
                    best.0,
                    "{}: {method}",
                    dir.display()
                );
                let first = sets.keys().next().unwrap();
                for (set, summary) in sets {
                    let mut scores = Vec::new();
                    for seed in std::fs::read_dir(dir.join("runs").join(method)).unwrap() {
                        let seed = seed.unwrap().path();
                        scores.push(if set == first {
                            FinetuneReport::read(&seed.join(SUMMARY))
                                .unwrap()
                                .eval_after
                        } else {
                            read_json(&seed.join(format!("eval-{set}.json"))).unwrap()
                        });
                    }
                    let want = summarise(&scores);
                    let close = |a: &Summary, b: &Summary| {
                        a.n == b.n && (a.mean - b.mean).abs() < 1e-12 && (a.sd - b.sd).abs() < 1e-12
                    };
                    assert!(
                        close(&summary.accuracy, &want.accuracy),
                        "{}: {method} on {set}",
                        dir.display()
                    );
                }
            }
            grids += 1;
        }
        assert!(grids >= 2, "{grids} grids in {}", root.display());
    }

    #[test]
    fn every_committed_suite_reads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/suites");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = ExperimentConfig::read(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(path.file_stem().unwrap().to_str(), Some(c.name.as_str()));
                n += 1;
            }
        }
        assert!(n >= 5, "{n} suites in {}", dir.display());
    }

    #[test]
    fn grids_no_run_could_use_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |edit: &dyn Fn(&mut ExperimentConfig)| {
            let mut c = config(dir.path());
            edit(&mut c);
            c.check().unwrap_err().to_string()
        };
        let e = refused(&|c| c.feature_picture = vec![MethodName::Balora.into()]);
        assert!(e.contains("feature_picture names balora"), "{e}");
        let e = refused(&|c| c.training_data.label_noise = 1.5);
        assert!(e.contains("label_noise"), "{e}");
        let e = refused(&|c| {
            c.training_data.imbalance = Some(9.0);
            c.base.task = TaskKind::Nlg;
        });
        assert!(e.contains("base.task"), "{e}");
        let e = refused(&|c| c.selection_metric = Some(SelectionMetric::ResponseLoss));
        assert!(e.contains("selection_metric ResponseLoss"), "{e}");
        let e = refused(&|c| c.learning_rates = vec![0.0]);
        assert!(e.contains("learning rate 0"), "{e}");
    }

    #[test]
    fn the_grid_expands_to_selection_then_final_runs() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let select = c.selection_runs();
        assert_eq!(select.len(), 2 * 2);
        assert!(
            select
                .iter()
                .all(|r| r.seed == 1 && r.phase == Phase::Select)
        );
        let chosen = BTreeMap::from([("lora".into(), 1e-3), ("pissa".into(), 1e-4)]);
        let fin = c.final_runs(&chosen);
        assert_eq!(fin.len(), 2 * 3);
        assert!(fin.iter().all(|r| r.lr == chosen[&r.method.to_string()]));
        let mut dirs: Vec<_> = select.iter().chain(&fin).map(|r| r.dir.clone()).collect();
        dirs.sort();
        dirs.dedup();
        assert_eq!(dirs.len(), 10, "every run has its own folder");
    }

    #[test]
    fn the_validation_split_is_seeded_disjoint_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let train = c.base.train.clone().unwrap();
        let carve = |d: &str| {
            let p = carve_validation(&train, 0.25, 7, &dir.path().join(d)).unwrap();
            (p.train, p.validation)
        };
        let ((a, b), (a2, b2)) = (carve("x"), carve("y"));
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!((read(&a), read(&b)), (read(&a2), read(&b2)));
        let (t, v): (Vec<String>, Vec<String>) = (
            read(&a).lines().map(String::from).collect(),
            read(&b).lines().map(String::from).collect(),
        );
        assert_eq!((t.len(), v.len()), (15, 5));
        assert!(t.iter().all(|row| !v.contains(row)));
    }

    #[test]
    fn rates_are_chosen_on_validation_only_and_finished_runs_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.feature_picture = vec![MethodName::Lora.into(), MethodName::Pissa.into()];
        let tests: Vec<PathBuf> = c.eval_sets.values().cloned().collect();
        let mut calls: Vec<FinetuneConfig> = Vec::new();
        let mut record = |cfg: &FinetuneConfig| {
            calls.push(cfg.clone());
            fake(cfg)
        };
        let report = Experiment::new(&c, &mut record, &mut |_| {}).run().unwrap();
        // selection: 4 runs on the carved split, before any evaluation set is read
        let validation = c.output.join("data/validation.jsonl");
        for cfg in &calls[..4] {
            assert_eq!(cfg.eval.as_ref(), Some(&validation));
            assert_eq!(cfg.train.as_ref(), Some(&c.output.join("data/train.jsonl")));
            assert!(!tests.contains(cfg.eval.as_ref().unwrap()));
        }
        assert!(calls.iter().all(|cfg| cfg.train != c.base.train));
        // a selection run's "before" is never reported: it is not computed
        assert!(calls[..4].iter().all(|cfg| !cfg.eval_before));
        assert!(calls[4..].iter().all(|cfg| cfg.eval_before));
        assert_eq!(report.chosen_lr["lora"], 1e-3);
        assert_eq!(report.chosen_lr["pissa"], 1e-4);
        // final: 2 methods × 3 seeds, each scored on both sets; the features of each method's
        // first seed on the first set
        assert_eq!(calls.len(), 4 + 6 + 6 + 2);
        let pictured: Vec<_> = calls.iter().filter(|c| c.features_to.is_some()).collect();
        assert!(
            pictured
                .iter()
                .all(|p| p.seed == 1 && p.eval == Some(tests[0].clone()))
        );
        let (lora, pissa) = (&report.features["lora"], &report.features["pissa"]);
        assert!(lora.silhouette > pissa.silhouette, "{lora:?} {pissa:?}");
        assert_eq!(
            c.output.join("features.png").is_file(),
            cfg!(feature = "plot")
        );
        let lora = &report.results["lora"];
        assert!((lora["in-domain"].accuracy.mean - 0.82).abs() < 1e-12);
        assert!((lora["shifted"].accuracy.mean - 0.72).abs() < 1e-12);
        assert!((lora["in-domain"].accuracy.sd - 0.01).abs() < 1e-12);
        // read back: equal up to the last bit of serde_json's float parsing
        let read = ExperimentReport::read(&c.output.join("summary.json")).unwrap();
        let json = |r: &ExperimentReport| serde_json::to_value(r).unwrap();
        assert!(close(&json(&read), &json(&report)), "{read:?}\n{report:?}");
        let plotted =
            c.output.join("scores.png").is_file() && c.output.join("curves.png").is_file();
        assert_eq!(plotted, cfg!(feature = "plot"));
        let md = std::fs::read_to_string(c.output.join("summary.md")).unwrap();
        assert!(
            md.contains("| lora | 1e-3 |") && md.contains("acc 82.00 ± 1.00"),
            "{md}"
        );
        assert!(md.contains("Features of lora: silhouette"), "{md}");
        assert!(
            md.contains("Trained on 15 rows, rates chosen on 5 validation rows"),
            "{md}"
        );
        // a second pass finds every run finished and runs nothing
        let mut never = |_: &FinetuneConfig| -> Result<FinetuneReport, FinetuneError> {
            panic!("a finished run was run again")
        };
        let again = Experiment::new(&c, &mut never, &mut |_| {}).run().unwrap();
        assert_eq!(again.results, report.results);
        assert_eq!(again.chosen_lr, report.chosen_lr);
        // new rates move LoRA's choice (a tie between 1e-4 and 3e-4 goes to 3e-4): its final
        // runs, made at 1e-3, are refused rather than reused
        c.learning_rates = vec![1e-4, 3e-4];
        let e = Experiment::new(&c, &mut fake, &mut |_| {})
            .run()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runs/lora/seed-1") && e.contains("lr 0.001 → 0.0003"),
            "{e}"
        );
    }

    /// Equal JSON values, numbers to a relative 1e-12.
    fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1e-300)
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
            }
            _ => a == b,
        }
    }
}
