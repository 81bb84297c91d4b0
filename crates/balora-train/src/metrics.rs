//! Training metrics: one JSON object per optimizer step in `metrics.jsonl`, wall-clock
//! timings in `timing.jsonl`, and `loss.png`.
//!
//! `metrics.jsonl` holds only what the seed determines (losses, λs, learning rate, gradient
//! norm), so two runs with the same seed write it byte for byte the same, and a resumed run
//! writes what an uninterrupted one does; speeds live in `timing.jsonl`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use balora_losses::Lambdas;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// What is logged per optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step (1-based).
    pub step: usize,
    /// Total loss (task + weighted regularisers), averaged over accumulation micro-batches.
    pub loss: f64,
    /// Task loss.
    pub task: f64,
    /// Consistency term (unweighted), when computed.
    pub consistency: Option<f64>,
    /// Diversity term (unweighted), when computed.
    pub diversity: Option<f64>,
    /// SVD term (unweighted), when computed.
    pub svd: Option<f64>,
    /// MonteCLoRA's regulariser, when used.
    pub monteclora: Option<f64>,
    /// λ1, λ2, λ3 in effect.
    pub lambdas: Lambdas,
    /// Learning rate.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// How long a step took (`timing.jsonl`): not reproducible, so kept apart from the metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Optimizer step (1-based).
    pub step: usize,
    /// Tokens in the step's micro-batches, padding included.
    pub tokens: usize,
    /// Tokens per second over this step.
    pub tokens_per_s: f64,
    /// Wall-clock seconds of this step (forward, backward, clipping and AdamW).
    pub step_s: f64,
}

/// Appends one JSON object per step to a JSONL file (`metrics.jsonl`, `timing.jsonl`),
/// flushing every line.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Open `path` for appending, first dropping every line of a step after `keep_until`
    /// (a resumed run rewrites the steps after its checkpoint, so the curve has no duplicates).
    pub fn open(path: &Path, keep_until: usize) -> Result<Self, TrainError> {
        let io = |source| balora_io::IoError::Fs {
            path: path.to_path_buf(),
            source,
        };
        let kept: Vec<String> = if path.exists() {
            BufReader::new(File::open(path).map_err(io)?)
                .lines()
                .map_while(Result::ok)
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l).is_ok_and(|m| {
                        m.get("step")
                            .and_then(serde_json::Value::as_u64)
                            .is_some_and(|s| s <= keep_until as u64)
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        balora_io::fs::atomic_write(path, text.as_bytes())?;
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Append one step.
    pub fn write<T: Serialize>(&mut self, m: &T) -> Result<(), TrainError> {
        let line = serde_json::to_string(m).map_err(|source| balora_io::IoError::Json {
            path: self.path.clone(),
            source,
        })?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|source| balora_io::IoError::Fs {
                path: self.path.clone(),
                source,
            })?;
        Ok(())
    }
}

/// Peak resident set size of this process in MB (Linux `VmHWM`, what `getrusage`'s
/// `ru_maxrss` reports too), or `None` where `/proc` does not say.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// Read back a `metrics.jsonl` (or, as `read_metrics::<StepTiming>`, a `timing.jsonl`).
pub fn read_metrics<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, TrainError> {
    let text = String::from_utf8_lossy(&balora_io::fs::read(path)?).into_owned();
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Data {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// One line of a [`line_chart`]: its legend, colour and `(step, value)` points.
#[cfg(feature = "plot")]
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The legend entry.
    pub name: String,
    /// The colour, RGB.
    pub rgb: (u8, u8, u8),
    /// `(optimizer step, value)`; non-finite values are left out.
    pub points: Vec<(usize, f64)>,
}

/// Draw `lines` against the optimizer step into a PNG (lines without a finite point are left
/// out, legend included).
#[cfg(feature = "plot")]
pub fn line_chart(
    path: &Path,
    caption: &str,
    y_desc: &str,
    lines: &[Line],
) -> Result<(), TrainError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| TrainError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let lines: Vec<(&Line, Vec<(usize, f64)>)> = lines
        .iter()
        .map(|l| {
            (
                l,
                l.points
                    .iter()
                    .copied()
                    .filter(|p| p.1.is_finite())
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let values = lines.iter().flat_map(|(_, p)| p.iter().map(|v| v.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo, hi.max(lo + 1e-6))
    } else {
        (0.0, 1.0)
    };
    let last = lines
        .iter()
        .filter_map(|(_, p)| p.iter().map(|v| v.0).max())
        .max()
        .unwrap_or(1)
        .max(1);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0usize..last, lo..hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (line, points) in lines {
        let (r, g, b) = line.rgb;
        let color = RGBColor(r, g, b);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(line.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::MiddleRight).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draw `chart`'s legend at `position` in the one legend style of balora's charts.
#[cfg(feature = "plot")]
pub fn draw_legend<'a, DB, CT>(
    chart: &mut plotters::chart::ChartContext<'a, DB, CT>,
    position: plotters::chart::SeriesLabelPosition,
) -> Result<(), String>
where
    DB: plotters::prelude::DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    use plotters::prelude::*;
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// Draw the task loss and each weighted regulariser against the step into a PNG.
#[cfg(feature = "plot")]
pub fn plot_losses(metrics: &[StepMetrics], path: &Path) -> Result<(), TrainError> {
    type Series = (&'static str, fn(&StepMetrics) -> Option<f64>, (u8, u8, u8));
    let series: [Series; 6] = [
        ("total loss", |m| Some(m.loss), (0, 0, 0)),
        ("task loss", |m| Some(m.task), (0, 0, 255)),
        (
            "λ1·consistency",
            |m| m.consistency.map(|v| v * m.lambdas.consistency),
            (255, 0, 0),
        ),
        (
            "λ2·diversity",
            |m| m.diversity.map(|v| v * m.lambdas.diversity),
            (0, 255, 0),
        ),
        (
            "λ3·svd",
            |m| m.svd.map(|v| v * m.lambdas.svd),
            (255, 0, 255),
        ),
        ("monteclora", |m| m.monteclora, (0, 255, 255)),
    ];
    let lines: Vec<Line> = series
        .into_iter()
        .map(|(name, f, rgb)| Line {
            name: name.into(),
            rgb,
            points: metrics
                .iter()
                .filter_map(|m| f(m).map(|v| (m.step, v)))
                .collect(),
        })
        .collect();
    line_chart(path, "balora training", "loss", &lines)
}
