//! The benchmark's results: per-side summaries, the goals of the performance issue as ratios
//! from the same run, the printed table, `bench/results/<date>.json` and a PNG bar chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::job::{Outcome, median};

/// One side's figures for one training row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    /// Median seconds per step.
    pub median_s: f64,
    /// Tokens per second at the median step time.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process, MB.
    pub peak_rss_mb: f64,
    /// Model FLOP utilisation against the same side's GEMM rate.
    pub mfu: Option<f64>,
    /// Loss at the first step (the two sides must agree: same weights, same tokens).
    pub loss_first: Option<f64>,
    /// Loss at the last step.
    pub loss_last: Option<f64>,
    /// Trainable parameters.
    pub trainable: usize,
    /// Every measured step, seconds.
    pub seconds: Vec<f64>,
}

impl Side {
    /// Summarise an outcome of `tokens` tokens per step and `flops` model FLOPs per step,
    /// given the side's GEMM rate in FLOP/s.
    pub fn of(o: &Outcome, tokens: usize, flops: f64, gemm_flops: Option<f64>) -> Self {
        let median_s = median(&o.seconds);
        Self {
            median_s,
            tokens_per_s: tokens as f64 / median_s.max(1e-12),
            peak_rss_mb: o.peak_rss_mb,
            mfu: gemm_flops.map(|g| flops / median_s.max(1e-12) / g),
            loss_first: o.loss.first().copied(),
            loss_last: o.loss.last().copied(),
            trainable: o.trainable,
            seconds: o.seconds.clone(),
        }
    }
}

/// A training-step row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRow {
    pub model: String,
    pub method: String,
    pub ours: Side,
    pub reference: Option<Side>,
}

/// A PiSSA initialisation row (whole model, every linear layer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitRow {
    pub model: String,
    /// 0: full SVD.
    pub niter: usize,
    pub ours_s: f64,
    pub reference_s: Option<f64>,
}

/// A greedy-decoding row (KV cache, no stop token, the same prompts on both sides).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeRow {
    pub model: String,
    pub batch: usize,
    pub new_tokens: usize,
    /// New tokens per second over all rows, at the median repetition.
    pub ours_tokens_per_s: f64,
    pub reference_tokens_per_s: Option<f64>,
    /// Whether both sides generated the same ids.
    pub same_ids: Option<bool>,
}

/// The GEMM ceiling of both sides.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GemmRow {
    /// `[m, k, n]`.
    pub shape: [usize; 3],
    pub ours_gflops: f64,
    pub reference_gflops: Option<f64>,
}

/// A goal of the performance issue, checked on this run's ratios.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub name: String,
    /// `≥ x` or `≤ x`.
    pub target: String,
    pub value: f64,
    pub met: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub date: String,
    pub machine: String,
    /// Names the results file in place of the CPU vendor (e.g. the GPU of a `--device wgpu`
    /// run: `scripts/gpu-check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub threads: usize,
    pub settings: serde_json::Value,
    pub versions: Vec<String>,
    pub gemm: Option<GemmRow>,
    pub pissa_init: Vec<InitRow>,
    #[serde(default)]
    pub decode: Vec<DecodeRow>,
    pub train: Vec<TrainRow>,
    pub goals: Vec<Goal>,
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(1e-12)
}

impl Results {
    /// Fill `goals` from the rows (for every model that has the rows a goal needs).
    pub fn check_goals(&mut self) {
        let mut goals = Vec::new();
        let mut goal = |name: String, at_least: bool, bound: f64, value: f64| {
            goals.push(Goal {
                name,
                target: format!("{} {bound}", if at_least { "≥" } else { "≤" }),
                value,
                met: if at_least {
                    value >= bound
                } else {
                    value <= bound
                },
            });
        };
        if let Some(g) = &self.gemm
            && let Some(r) = g.reference_gflops
        {
            goal(
                "GEMM GFLOP/s vs torch".into(),
                true,
                0.95,
                ratio(g.ours_gflops, r),
            );
        }
        let mut models: Vec<&str> = self.train.iter().map(|r| r.model.as_str()).collect();
        models.dedup();
        for model in models {
            let row = |m: &str| {
                self.train
                    .iter()
                    .find(|r| r.model == model && r.method == m)
            };
            for (method, what) in [("lora", "LoRA (q,v)"), ("lora-all", "LoRA (all linear)")] {
                if let Some(l) = row(method)
                    && let Some(lr) = &l.reference
                {
                    goal(
                        format!("{model}: {what} tokens/s vs PEFT"),
                        true,
                        1.2,
                        ratio(l.ours.tokens_per_s, lr.tokens_per_s),
                    );
                }
            }
            for preset in ["balora-paper", "balora-iclr2026"] {
                let (Some(l), Some(b)) = (row("lora"), row(preset)) else {
                    continue;
                };
                goal(
                    format!("{model}: {preset} step / our LoRA step"),
                    false,
                    1.6,
                    ratio(b.ours.median_s, l.ours.median_s),
                );
                goal(
                    format!("{model}: {preset} peak memory / our LoRA"),
                    false,
                    1.1,
                    ratio(b.ours.peak_rss_mb, l.ours.peak_rss_mb),
                );
                if let Some(br) = &b.reference {
                    goal(
                        format!("{model}: {preset} tokens/s vs PEFT-based BA-LoRA"),
                        true,
                        2.0,
                        ratio(b.ours.tokens_per_s, br.tokens_per_s),
                    );
                }
            }
        }
        for init in &self.pissa_init {
            if let Some(r) = init.reference_s {
                goal(
                    format!(
                        "{}: PiSSA init (niter {}) time vs peft",
                        init.model, init.niter
                    ),
                    false,
                    0.5,
                    ratio(init.ours_s, r),
                );
            }
        }
        for d in &self.decode {
            if let Some(r) = d.reference_tokens_per_s {
                goal(
                    format!(
                        "{}: greedy decoding (batch {}) tokens/s vs transformers",
                        d.model, d.batch
                    ),
                    true,
                    if d.batch == 1 { 1.2 } else { 1.0 },
                    ratio(d.ours_tokens_per_s, r),
                );
            }
        }
        self.goals = goals;
    }

    /// The human-readable table (Markdown, so the README can show it as is).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("–".into(), f);
        let _ = writeln!(
            s,
            "| model | method | balora s/step | PEFT s/step | balora tok/s | PEFT tok/s | tok/s ratio | balora peak MB | PEFT peak MB | balora MFU | PEFT MFU | loss step 1 (balora / PEFT) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.train {
            let re = r.reference.as_ref();
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} / {} |",
                r.model,
                r.method,
                r.ours.median_s,
                opt(re.map(|x| x.median_s), &|v| format!("{v:.3}")),
                r.ours.tokens_per_s,
                opt(re.map(|x| x.tokens_per_s), &|v| format!("{v:.0}")),
                opt(
                    re.map(|x| ratio(r.ours.tokens_per_s, x.tokens_per_s)),
                    &|v| format!("{v:.2}×")
                ),
                r.ours.peak_rss_mb,
                opt(re.map(|x| x.peak_rss_mb), &|v| format!("{v:.0}")),
                opt(r.ours.mfu, &|v| format!("{:.0}%", 100.0 * v)),
                opt(re.and_then(|x| x.mfu), &|v| format!("{:.0}%", 100.0 * v)),
                opt(r.ours.loss_first, &|v| format!("{v:.4}")),
                opt(re.and_then(|x| x.loss_first), &|v| format!("{v:.4}")),
            );
        }
        if !self.pissa_init.is_empty() {
            let _ = writeln!(s, "\n| model | PiSSA init | balora s | peft s | ratio |");
            let _ = writeln!(s, "|---|---|---|---|---|");
            for i in &self.pissa_init {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {} | {} |",
                    i.model,
                    if i.niter == 0 {
                        "full SVD".to_string()
                    } else {
                        format!("niter {}", i.niter)
                    },
                    i.ours_s,
                    opt(i.reference_s, &|v| format!("{v:.2}")),
                    opt(i.reference_s.map(|r| ratio(i.ours_s, r)), &|v| format!(
                        "{v:.2}×"
                    )),
                );
            }
        }
        if !self.decode.is_empty() {
            let _ = writeln!(
                s,
                "\n| model | decoding | balora tok/s | transformers tok/s | ratio | same ids |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|");
            for d in &self.decode {
                let _ = writeln!(
                    s,
                    "| {} | batch {}, {} new tokens | {:.1} | {} | {} | {} |",
                    d.model,
                    d.batch,
                    d.new_tokens,
                    d.ours_tokens_per_s,
                    opt(d.reference_tokens_per_s, &|v| format!("{v:.1}")),
                    opt(
                        d.reference_tokens_per_s
                            .map(|r| ratio(d.ours_tokens_per_s, r)),
                        &|v| format!("{v:.2}×")
                    ),
                    d.same_ids.map_or("–", |e| if e { "yes" } else { "no" }),
                );
            }
        }
        if let Some(g) = &self.gemm {
            let _ = writeln!(
                s,
                "\nGEMM {}×{}×{} forward+backward: balora {:.0} GFLOP/s, torch {}",
                g.shape[0],
                g.shape[1],
                g.shape[2],
                g.ours_gflops,
                opt(g.reference_gflops, &|v| format!("{v:.0} GFLOP/s")),
            );
        }
        if !self.goals.is_empty() {
            let _ = writeln!(s, "\n| goal | target | this run | met |");
            let _ = writeln!(s, "|---|---|---|---|");
            for g in &self.goals {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {} |",
                    g.name,
                    g.target,
                    g.value,
                    if g.met { "yes" } else { "no" }
                );
            }
        }
        s
    }

    /// `<date>-<vendor>.json` and `.png` in `dir` (results are kept per CPU vendor: a ratio
    /// measured on one vendor's machines says nothing of the other's), or `<date>-<tag>.*`;
    /// the JSON's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let stem = format!(
            "{}-{}",
            self.date,
            self.tag.as_deref().unwrap_or(self.vendor())
        );
        let json = dir.join(format!("{stem}.json"));
        balora::io::fs::atomic_write(&json, serde_json::to_string_pretty(self)?.as_bytes())?;
        self.plot(&dir.join(format!("{stem}.png")))?;
        Ok(json)
    }

    /// `amd`, `intel` or `cpu`, from the machine's model name.
    fn vendor(&self) -> &'static str {
        let machine = self.machine.to_lowercase();
        if machine.contains("amd") {
            "amd"
        } else if machine.contains("intel") {
            "intel"
        } else {
            "cpu"
        }
    }

    /// Tokens/s per method, balora next to PEFT, one panel per model.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let mut models: Vec<&str> = self.train.iter().map(|r| r.model.as_str()).collect();
        models.dedup();
        if models.is_empty() {
            return Ok(());
        }
        let root = BitMapBackend::new(path, (1000, 360 * models.len() as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        for (area, model) in root.split_evenly((models.len(), 1)).iter().zip(&models) {
            let rows: Vec<&TrainRow> = self.train.iter().filter(|r| r.model == *model).collect();
            let top = rows
                .iter()
                .flat_map(|r| {
                    [
                        Some(r.ours.tokens_per_s),
                        r.reference.as_ref().map(|x| x.tokens_per_s),
                    ]
                })
                .flatten()
                .fold(1.0f64, f64::max)
                // headroom above the tallest bar for the legend
                * 1.35;
            let names: Vec<String> = rows.iter().map(|r| r.method.clone()).collect();
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{model}: training tokens/s (higher is better)"),
                    ("sans-serif", 20),
                )
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..rows.len() as f64, 0f64..top)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(rows.len() * 2 + 1)
                .x_label_formatter(&|x| {
                    let i = x.floor() as usize;
                    if (x - i as f64 - 0.5).abs() < 1e-6 {
                        names.get(i).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_desc("tokens/s")
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let bars = |side: usize, color: RGBColor| {
                rows.iter().enumerate().filter_map(move |(i, r)| {
                    let v = if side == 0 {
                        Some(r.ours.tokens_per_s)
                    } else {
                        r.reference.as_ref().map(|x| x.tokens_per_s)
                    }?;
                    let x0 = i as f64 + 0.1 + 0.4 * side as f64;
                    Some(Rectangle::new([(x0, 0.0), (x0 + 0.38, v)], color.filled()))
                })
            };
            chart
                .draw_series(bars(0, RGBColor(31, 119, 180)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label("balora")
                .legend(|(x, y)| {
                    Rectangle::new(
                        [(x, y - 5), (x + 10, y + 5)],
                        RGBColor(31, 119, 180).filled(),
                    )
                });
            chart
                .draw_series(bars(1, RGBColor(255, 127, 14)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label("PyTorch + PEFT")
                .legend(|(x, y)| {
                    Rectangle::new(
                        [(x, y - 5), (x + 10, y + 5)],
                        RGBColor(255, 127, 14).filled(),
                    )
                });
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed results file reads back as `Results` and writes back the same values,
    /// recomputing its goals from its rows gives the goals it records, and its table and chart
    /// render.
    #[test]
    fn committed_results_read_back_and_recompute_their_goals() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
        let tmp = tempfile::tempdir().unwrap();
        let (mut files, mut recomputed) = (0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let file: serde_json::Value = serde_json::from_str(&text).unwrap();
            let results: Results = serde_json::from_value(file.clone()).unwrap();
            let back = serde_json::to_value(&results).unwrap();
            for (key, value) in file.as_object().unwrap() {
                assert_eq!(back.get(key), Some(value), "{}: {key}", path.display());
            }
            // files written before the goals were last redefined record other goals
            let mut again = results.clone();
            again.check_goals();
            let names = |r: &Results| r.goals.iter().map(|g| g.name.clone()).collect::<Vec<_>>();
            if names(&again) == names(&results) {
                recomputed += 1;
                for (a, b) in again.goals.iter().zip(&results.goals) {
                    let close = (a.value - b.value).abs() <= 1e-12 * b.value.abs().max(1e-300);
                    assert!(close && a.met == b.met, "{}: {}", path.display(), b.name);
                }
            }
            assert!(results.table().contains('|'));
            results.plot(&tmp.path().join("chart.png")).unwrap();
            files += 1;
        }
        assert!(files >= 4, "{files} results files in {}", dir.display());
        assert!(recomputed >= 1, "no results file has the current goals");
    }
}
