//! `scores.png`: per evaluation set, each method's mean accuracy over seeds with its standard
//! deviation as an error bar; `curves.png`: each method's training loss per step, averaged over
//! its final runs; `features.png`: methods' pooled features in 2-D, side by side.

use std::path::Path;

use balora_train::TrainError;
use balora_train::metrics::{Line, StepMetrics, draw_legend, line_chart};
use plotters::prelude::*;

use super::{ExperimentReport, FeatureSpread};

/// Draw the report's accuracies as grouped bars with error bars.
pub(super) fn bars(report: &ExperimentReport, path: &Path) -> Result<(), TrainError> {
    let err = |e: &dyn std::fmt::Display| TrainError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let methods: Vec<&String> = report.results.keys().collect();
    let sets: Vec<&String> = report
        .results
        .values()
        .next()
        .map(|s| s.keys().collect())
        .unwrap_or_default();
    let slots = (sets.len() * (methods.len() + 1)).max(1);
    let top = report
        .results
        .values()
        .flat_map(|s| s.values())
        .map(|m| m.accuracy.mean + m.accuracy.sd)
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 100.0
        * 1.3; // room above the bars for the sets' names and the legend
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&report.name, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..slots as f64, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("accuracy (%), mean ± sd over seeds")
        .draw()
        .map_err(|e| err(&e))?;
    for (mi, method) in methods.iter().enumerate() {
        let color = Palette99::pick(mi).to_rgba();
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (si, set) in sets.iter().enumerate() {
            let Some(m) = report.results[*method].get(*set) else {
                continue;
            };
            let x = (si * (methods.len() + 1) + mi) as f64;
            let (mean, sd) = (100.0 * m.accuracy.mean, 100.0 * m.accuracy.sd);
            bars.push(Rectangle::new(
                [(x + 0.1, 0.0), (x + 0.9, mean)],
                color.filled(),
            ));
            whiskers.push(PathElement::new(
                vec![(x + 0.5, (mean - sd).max(0.0)), (x + 0.5, mean + sd)],
                BLACK.stroke_width(2),
            ));
        }
        chart
            .draw_series(bars)
            .map_err(|e| err(&e))?
            .label(method.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(whiskers).map_err(|e| err(&e))?;
    }
    // each evaluation set's name above its group of bars: axis labels at evenly spaced
    // positions get thinned by plotters, which dropped every other set's name
    let names = sets.iter().enumerate().map(|(si, set)| {
        let x = (si * (methods.len() + 1)) as f64 + 0.1;
        let highest = report
            .results
            .values()
            .filter_map(|s| s.get(*set))
            .map(|m| 100.0 * (m.accuracy.mean + m.accuracy.sd))
            .fold(0.0f64, f64::max);
        // the text hangs below its anchor: just above the group's highest whisker
        Text::new(
            set.to_string(),
            (x, highest + top * 0.08),
            ("sans-serif", 16),
        )
    });
    chart.draw_series(names).map_err(|e| err(&e))?;
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draw each method's task loss per step, the mean over its runs' `metrics.jsonl`.
pub(super) fn curves(
    name: &str,
    runs: &[(String, Vec<StepMetrics>)],
    path: &Path,
) -> Result<(), TrainError> {
    let mut by_method: std::collections::BTreeMap<&str, Vec<(f64, usize)>> = Default::default();
    for (method, metrics) in runs {
        let sums = by_method.entry(method.as_str()).or_default();
        for m in metrics {
            if sums.len() < m.step {
                sums.resize(m.step, (0.0, 0));
            }
            sums[m.step - 1].0 += m.task;
            sums[m.step - 1].1 += 1;
        }
    }
    let lines: Vec<Line> = by_method
        .into_iter()
        .enumerate()
        .map(|(i, (method, sums))| Line {
            name: method.into(),
            rgb: Palette99::pick(i).rgb(),
            points: sums
                .into_iter()
                .enumerate()
                .filter(|(_, (_, n))| *n > 0)
                .map(|(step, (sum, n))| (step + 1, sum / n as f64))
                .collect(),
        })
        .collect();
    let caption = format!("{name}: training loss");
    line_chart(path, &caption, "task loss, mean over seeds", &lines)
}

/// One method's panel of `features.png`.
pub(super) struct Panel<'a> {
    pub method: &'a str,
    /// The 2-D projection of each example, in the order of the labels.
    pub points: &'a [[f64; 2]],
    pub spread: FeatureSpread,
}

/// Draw the panels side by side, each point coloured by its gold class, the silhouette scores
/// in each panel's caption.
pub(super) fn features(
    title: &str,
    panels: &[Panel<'_>],
    labels: &[usize],
    names: &[String],
    path: &Path,
) -> Result<(), TrainError> {
    let err = |e: &dyn std::fmt::Display| TrainError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let width = 480 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(&areas) {
        let range = |axis: usize| {
            let (lo, hi) = panel
                .points
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), p| {
                    (lo.min(p[axis]), hi.max(p[axis]))
                });
            let pad = ((hi - lo) * 0.05).max(1e-6);
            (lo - pad)..(hi + pad)
        };
        let caption = format!(
            "{}: silhouette {:.3} (2-D {:.3})",
            panel.method, panel.spread.silhouette, panel.spread.silhouette_2d
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 17))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(44)
            .build_cartesian_2d(range(0), range(1))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("PC 1")
            .y_desc("PC 2")
            .draw()
            .map_err(|e| err(&e))?;
        for (class, name) in names.iter().enumerate() {
            let color = Palette99::pick(class).to_rgba();
            let points = panel
                .points
                .iter()
                .zip(labels)
                .filter(|(_, l)| **l == class)
                .map(|(p, _)| Circle::new((p[0], p[1]), 2, color.mix(0.6).filled()));
            chart
                .draw_series(points)
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::MiddleRight).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
