//! The grid's training data: the seeded changes of the noise and imbalance analyses
//! (docs/results.md) and the validation split carved from what remains. The evaluation sets are
//! never read here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::ExperimentError;
use balora_io::IoError;
use balora_train::data::{NluRecord, read_nlu};

/// Seeded changes to a classification training set before the validation split is carved, so
/// the learning rate is chosen on data as noisy or as skewed as the training data — what a user
/// with such data would have.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingData {
    /// Keep every row of the most frequent class and `1/imbalance` as many rows of each other
    /// class (`9`: a 9:1 subset). The rows kept are a seeded draw.
    pub imbalance: Option<f64>,
    /// The fraction of rows (after `imbalance`) whose label is replaced by a different label
    /// of the set, drawn uniformly: exactly `round(label_noise · rows)` rows change.
    pub label_noise: f64,
}

impl TrainingData {
    /// No change: the training file is carved as it is.
    pub fn is_identity(&self) -> bool {
        self.imbalance.is_none() && self.label_noise == 0.0
    }

    /// Refuse a ratio below 1 or a noise fraction outside [0, 1).
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = self.imbalance
            && !(r.is_finite() && r >= 1.0)
        {
            return Err(format!(
                "training_data.imbalance {r} must be a finite ratio >= 1"
            ));
        }
        if !(0.0..1.0).contains(&self.label_noise) {
            return Err(format!(
                "training_data.label_noise {} must lie in [0, 1)",
                self.label_noise
            ));
        }
        Ok(())
    }
}

/// What the grid trained on: the sizes of the two sides and what the changes did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Rows the runs train on.
    pub train_rows: usize,
    /// Rows the learning rate is chosen on.
    pub validation_rows: usize,
    /// Rows whose label `label_noise` replaced.
    pub flipped: usize,
    /// Rows per label over both sides, after the changes (empty when there were none).
    pub label_counts: BTreeMap<String, usize>,
}

/// The training and validation files of a grid, and what is in them.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedData {
    /// The training side.
    pub train: PathBuf,
    /// The validation side.
    pub validation: PathBuf,
    /// Their sizes and the changes' effect.
    pub summary: DataSummary,
}

/// Apply `changes` to the classification file `train` (seeded with `seed`), then carve
/// `fraction` of it as the validation split, everything written under `dir`. Without changes
/// the file is carved as it is, whatever its task or format.
pub fn prepare(
    train: &Path,
    changes: &TrainingData,
    fraction: f64,
    seed: u64,
    dir: &Path,
) -> Result<PreparedData, ExperimentError> {
    let mut summary = DataSummary::default();
    let source = if changes.is_identity() {
        train.to_path_buf()
    } else {
        let mut records = read_nlu(train)?;
        if let Some(ratio) = changes.imbalance {
            records = imbalanced(records, ratio, seed);
        }
        summary.flipped =
            flip_labels(&mut records, changes.label_noise, seed).map_err(|reason| {
                ExperimentError::Data {
                    path: train.to_path_buf(),
                    reason,
                }
            })?;
        for r in &records {
            *summary.label_counts.entry(r.label.clone()).or_default() += 1;
        }
        let mut out = String::new();
        for r in &records {
            let row =
                serde_json::json!({"text": r.text, "text_pair": r.text_pair, "label": r.label});
            out.push_str(&row.to_string());
            out.push('\n');
        }
        create_dir(dir)?;
        let path = dir.join("prepared.jsonl");
        balora_io::fs::atomic_write(&path, out.as_bytes())?;
        path
    };
    let carved = carve_validation(&source, fraction, seed, dir)?;
    Ok(PreparedData {
        summary: DataSummary {
            train_rows: carved.summary.train_rows,
            validation_rows: carved.summary.validation_rows,
            ..summary
        },
        ..carved
    })
}

/// Every row of the most frequent label (ties: the first in label order) and a seeded draw of
/// `majority / ratio` rows of each other label, in file order.
fn imbalanced(records: Vec<NluRecord>, ratio: f64, seed: u64) -> Vec<NluRecord> {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        by_label.entry(&r.label).or_default().push(i);
    }
    let majority = by_label.values().map(Vec::len).max().unwrap_or(0);
    let major_label = by_label
        .iter()
        .find(|(_, rows)| rows.len() == majority)
        .map(|(l, _)| l.to_string());
    let minority = ((majority as f64 / ratio).round() as usize).max(1);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x494d_4241_4c41_4e43);
    let mut keep = vec![false; records.len()];
    for (label, mut rows) in by_label {
        if Some(label) != major_label.as_deref() {
            rows.shuffle(&mut rng);
            rows.truncate(minority);
        }
        for i in rows {
            keep[i] = true;
        }
    }
    records
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

/// Replace the label of exactly `round(fraction · rows)` seeded rows by a different label of
/// the set, drawn uniformly; returns how many changed.
fn flip_labels(records: &mut [NluRecord], fraction: f64, seed: u64) -> Result<usize, String> {
    if fraction == 0.0 {
        return Ok(0);
    }
    let labels: Vec<String> = {
        let mut l: Vec<String> = records.iter().map(|r| r.label.clone()).collect();
        l.sort();
        l.dedup();
        l
    };
    if labels.len() < 2 {
        return Err(format!(
            "label_noise needs at least two labels, found {}",
            labels.len()
        ));
    }
    let n = (records.len() as f64 * fraction).round() as usize;
    let mut order: Vec<usize> = (0..records.len()).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4e4f_4953_594c_4142);
    order.shuffle(&mut rng);
    for &i in &order[..n] {
        let others: Vec<&String> = labels.iter().filter(|l| **l != records[i].label).collect();
        records[i].label = others[rng.random_range(0..others.len())].clone();
    }
    Ok(n)
}

fn create_dir(dir: &Path) -> Result<(), ExperimentError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        IoError::Fs {
            path: dir.to_path_buf(),
            source,
        }
        .into()
    })
}

/// Split the training file's rows (its header kept on both sides for TSV/CSV) into a train
/// and a validation file under `dir`, by a shuffle seeded with `seed`; returns their paths and
/// row counts (no changes, so no flips or label counts).
/// Deterministic, so a resumed grid finds the same split.
pub fn carve_validation(
    train: &Path,
    fraction: f64,
    seed: u64,
    dir: &Path,
) -> Result<PreparedData, ExperimentError> {
    let text = String::from_utf8_lossy(&balora_io::fs::read(train)?).into_owned();
    let ext = train
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("jsonl");
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return Err(balora_train::TrainError::EmptyDataset {
            path: train.to_path_buf(),
            reason: "the file has no rows".into(),
        }
        .into());
    }
    let header = matches!(ext, "tsv" | "csv")
        .then(|| lines.remove(0))
        .map(str::to_string);
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5641_4c49_4441_5445));
    let n_valid =
        ((lines.len() as f64 * fraction).round() as usize).clamp(1, lines.len().max(2) - 1);
    let (valid, rest) = order.split_at(n_valid.min(order.len()));
    let write = |name: &str, rows: &[usize]| -> Result<PathBuf, ExperimentError> {
        let mut rows = rows.to_vec();
        rows.sort_unstable(); // file order within each side
        let mut out = header.clone().map(|h| h + "\n").unwrap_or_default();
        for i in rows {
            out.push_str(lines[i]);
            out.push('\n');
        }
        let path = dir.join(format!("{name}.{ext}"));
        balora_io::fs::atomic_write(&path, out.as_bytes())?;
        Ok(path)
    };
    create_dir(dir)?;
    Ok(PreparedData {
        train: write("train", rest)?,
        validation: write("validation", valid)?,
        summary: DataSummary {
            train_rows: rest.len(),
            validation_rows: valid.len(),
            ..DataSummary::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 60 rows, labels "0" (40) and "1" (20), in a JSONL file.
    fn file(dir: &Path) -> PathBuf {
        let rows: String = (0..60)
            .map(|i| {
                format!(
                    "{{\"text\": \"row {i}\", \"label\": {}}}\n",
                    u8::from(i % 3 == 0)
                )
            })
            .collect();
        let path = dir.join("train.jsonl");
        std::fs::write(&path, rows).unwrap();
        path
    }

    fn rows(p: &Path) -> Vec<(String, String)> {
        read_nlu(p)
            .unwrap()
            .into_iter()
            .map(|r| (r.text, r.label))
            .collect()
    }

    #[test]
    fn without_changes_the_file_is_carved_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let train = file(dir.path());
        let p = prepare(
            &train,
            &TrainingData::default(),
            0.25,
            3,
            &dir.path().join("a"),
        )
        .unwrap();
        let carved = carve_validation(&train, 0.25, 3, &dir.path().join("b")).unwrap();
        let (t, v) = (carved.train, carved.validation);
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!((read(&p.train), read(&p.validation)), (read(&t), read(&v)));
        assert!(!dir.path().join("a/prepared.jsonl").exists());
        assert_eq!((p.summary.train_rows, p.summary.validation_rows), (45, 15));
        assert_eq!(p.summary.flipped, 0);
    }

    #[test]
    fn noise_flips_exactly_the_fraction_seeded_and_changes_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let train = file(dir.path());
        let changes = TrainingData {
            imbalance: None,
            label_noise: 0.2,
        };
        let p = prepare(&train, &changes, 0.25, 3, &dir.path().join("a")).unwrap();
        let q = prepare(&train, &changes, 0.25, 3, &dir.path().join("b")).unwrap();
        let r = prepare(&train, &changes, 0.25, 4, &dir.path().join("c")).unwrap();
        let prepared = |d: &str| rows(&dir.path().join(d).join("prepared.jsonl"));
        assert_eq!(
            prepared("a"),
            prepared("b"),
            "the same seed, the same labels"
        );
        assert_ne!(
            prepared("a"),
            prepared("c"),
            "another seed flips other rows"
        );
        let clean = rows(&train);
        let noisy = prepared("a");
        assert_eq!(clean.len(), noisy.len());
        assert!(
            clean.iter().zip(&noisy).all(|(c, n)| c.0 == n.0),
            "texts kept in order"
        );
        let changed = clean.iter().zip(&noisy).filter(|(c, n)| c.1 != n.1).count();
        assert_eq!(
            (changed, p.summary.flipped, q.summary.flipped),
            (12, 12, 12)
        );
        assert_eq!(r.summary.flipped, 12);
        assert_eq!(p.summary.label_counts.values().sum::<usize>(), 60);
        assert_eq!(p.summary.train_rows + p.summary.validation_rows, 60);
    }

    #[test]
    fn imbalance_keeps_the_majority_and_a_ratio_of_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let train = file(dir.path());
        let changes = TrainingData {
            imbalance: Some(8.0),
            label_noise: 0.0,
        };
        let p = prepare(&train, &changes, 0.25, 3, &dir.path().join("a")).unwrap();
        // 40 rows of "0" whole, round(40 / 8) = 5 of "1"
        let want = BTreeMap::from([("0".to_string(), 40), ("1".to_string(), 5)]);
        assert_eq!(p.summary.label_counts, want);
        let kept = rows(&dir.path().join("a/prepared.jsonl"));
        let clean = rows(&train);
        assert!(
            kept.iter().all(|k| clean.contains(k)),
            "rows kept unchanged"
        );
        let pos = |t: &str| clean.iter().position(|c| c.0 == t).unwrap();
        assert!(
            kept.windows(2).all(|w| pos(&w[0].0) < pos(&w[1].0)),
            "file order"
        );
    }

    #[test]
    fn changes_no_data_can_take_are_refused() {
        let bad = |imbalance, label_noise| {
            TrainingData {
                imbalance,
                label_noise,
            }
            .check()
            .unwrap_err()
        };
        assert!(bad(Some(0.5), 0.0).contains("imbalance"));
        assert!(bad(Some(f64::NAN), 0.0).contains("imbalance"));
        assert!(bad(None, 1.0).contains("label_noise"));
        assert!(bad(None, -0.1).contains("label_noise"));
        let dir = tempfile::tempdir().unwrap();
        let one_label = dir.path().join("one.jsonl");
        std::fs::write(
            &one_label,
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 1}\n",
        )
        .unwrap();
        let changes = TrainingData {
            imbalance: None,
            label_noise: 0.5,
        };
        let e = prepare(&one_label, &changes, 0.5, 1, &dir.path().join("o"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one.jsonl") && e.contains("two labels"), "{e}");
    }
}
