//! The feature picture of the imbalance analysis (docs/results.md): the pooled vectors a
//! classifier's head reads, for every example of an evaluation set, projected to 2-D by PCA,
//! with a silhouette score of the gold classes beside each panel.
//!
//! PCA rather than t-SNE or UMAP: it is deterministic, has no perplexity or neighbour count to
//! tune, and its axes mean the same in every panel (the directions of largest spread), so the
//! panels of two methods compare; the silhouette is computed in the full feature space, where
//! the head separates the classes, and in the 2-D projection that is drawn.

use std::path::Path;

use serde::{Deserialize, Serialize};

use balora_io::IoError;
use balora_io::fs::{read_json, write_json};

/// The pooled features of an evaluation set and the gold classes, as a run writes them
/// (`features_to`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledFeatures {
    /// The class names, by index.
    pub label_names: Vec<String>,
    /// The gold class of each row.
    pub labels: Vec<usize>,
    /// One pooled vector per example `[N][d]`.
    pub rows: Vec<Vec<f32>>,
}

impl PooledFeatures {
    /// Read a features file.
    pub fn read(path: &Path) -> Result<Self, IoError> {
        read_json(path)
    }

    /// Write it (atomically).
    pub fn write(&self, path: &Path) -> Result<(), IoError> {
        write_json(path, self)
    }
}

/// How well the classes separate in one method's features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpread {
    /// Mean silhouette of the gold classes in the full feature space (−1 to 1; higher: tighter,
    /// better separated classes).
    pub silhouette: f64,
    /// The same in the 2-D PCA projection drawn.
    pub silhouette_2d: f64,
    /// The fraction of the features' variance the two drawn components hold.
    pub explained: f64,
}

/// The rows projected on their two principal components (centred), and the fraction of the
/// variance those hold. Subspace iteration on the `d × d` covariance from a fixed start, so the
/// projection is the same on every run; each component's sign is fixed so that its largest
/// coordinate is positive.
pub fn pca_2d(rows: &[Vec<f32>]) -> (Vec<[f64; 2]>, f64) {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    if n == 0 || d == 0 {
        return (vec![[0.0; 2]; n], 0.0);
    }
    let mut mean = vec![0.0f64; d];
    for r in rows {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64 / n as f64;
        }
    }
    let centred: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect())
        .collect();
    let mut cov = vec![0.0f64; d * d];
    for r in &centred {
        for i in 0..d {
            let ri = r[i];
            for (c, &rj) in cov[i * d..(i + 1) * d].iter_mut().zip(r) {
                *c += ri * rj;
            }
        }
    }
    let total: f64 = (0..d).map(|i| cov[i * d + i]).sum();
    let apply = |v: &[f64]| -> Vec<f64> {
        (0..d)
            .map(|i| {
                cov[i * d..(i + 1) * d]
                    .iter()
                    .zip(v)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect()
    };
    // two start vectors that are neither orthogonal to nor equal along any axis
    let mut basis: [Vec<f64>; 2] = [
        (0..d).map(|i| 1.0 + (i as f64 * 0.37).sin()).collect(),
        (0..d).map(|i| (i as f64 * 1.31).cos()).collect(),
    ];
    orthonormalise(&mut basis);
    for _ in 0..500 {
        let mut next = [apply(&basis[0]), apply(&basis[1])];
        orthonormalise(&mut next);
        let change: f64 = next
            .iter()
            .zip(&basis)
            .map(|(a, b)| 1.0 - dot(a, b).abs())
            .sum();
        basis = next;
        if change < 1e-13 {
            break;
        }
    }
    for b in &mut basis {
        let (i, _) = b
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .expect("d > 0");
        if b[i] < 0.0 {
            b.iter_mut().for_each(|v| *v = -*v);
        }
    }
    let explained = if total > 0.0 {
        basis.iter().map(|b| dot(b, &apply(b))).sum::<f64>() / total
    } else {
        0.0
    };
    let points = centred
        .iter()
        .map(|r| [dot(r, &basis[0]), dot(r, &basis[1])])
        .collect();
    (points, explained)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Gram–Schmidt on two vectors (a zero vector stays zero).
fn orthonormalise(v: &mut [Vec<f64>; 2]) {
    let unit = |x: &mut Vec<f64>| {
        let norm = dot(x, x).sqrt();
        if norm > 0.0 {
            x.iter_mut().for_each(|e| *e /= norm);
        }
    };
    unit(&mut v[0]);
    let p = dot(&v[1], &v[0]);
    let first = v[0].clone();
    v[1].iter_mut().zip(&first).for_each(|(e, f)| *e -= p * f);
    unit(&mut v[1]);
}

/// The mean silhouette of `labels` over `points` (Euclidean): for each point, `(b − a) /
/// max(a, b)` with `a` its mean distance to the rest of its class and `b` the smallest mean
/// distance to another class; a point alone in its class scores 0 (Rousseeuw's convention,
/// scikit-learn's `silhouette_score`). `None` with fewer than two classes, or with labels that
/// do not match the points (another count, or a class index beyond the number of points: the
/// per-class sums are sized by the largest index, which a damaged file must not set).
pub fn silhouette<P: AsRef<[f64]>>(points: &[P], labels: &[usize]) -> Option<f64> {
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    if labels.len() != points.len() || classes > points.len() {
        return None;
    }
    let mut sizes = vec![0usize; classes];
    for &l in labels {
        sizes[l] += 1;
    }
    if sizes.iter().filter(|&&s| s > 0).count() < 2 {
        return None;
    }
    let mut total = 0.0;
    for (i, p) in points.iter().enumerate() {
        let mut sums = vec![0.0f64; classes];
        for (j, q) in points.iter().enumerate() {
            if i != j {
                let d2: f64 = p
                    .as_ref()
                    .iter()
                    .zip(q.as_ref())
                    .map(|(x, y)| (x - y).powi(2))
                    .sum();
                sums[labels[j]] += d2.sqrt();
            }
        }
        let own = labels[i];
        if sizes[own] < 2 {
            continue;
        }
        let a = sums[own] / (sizes[own] - 1) as f64;
        let b = (0..classes)
            .filter(|&c| c != own && sizes[c] > 0)
            .map(|c| sums[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        let m = a.max(b);
        if m > 0.0 {
            total += (b - a) / m;
        }
    }
    Some(total / points.len() as f64)
}

impl PooledFeatures {
    /// The 2-D projection drawn and the separation scores; `None` unless the rows all have
    /// one length, one gold class each, and two classes or more.
    pub fn spread(&self) -> Option<(Vec<[f64; 2]>, FeatureSpread)> {
        let d = self.rows.first().map_or(0, Vec::len);
        if self.rows.iter().any(|r| r.len() != d) {
            return None;
        }
        let (points, explained) = pca_2d(&self.rows);
        let full: Vec<Vec<f64>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|&v| v as f64).collect())
            .collect();
        let spread = FeatureSpread {
            silhouette: silhouette(&full, &self.labels)?,
            silhouette_2d: silhouette(&points, &self.labels)?,
            explained,
        };
        Some((points, spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_silhouette_of_a_fixed_input() {
        // class 0 at 0 and 1, class 1 at 4 and 6 (on a line):
        // point 0: a = 1, b = (4 + 6) / 2 = 5 → 4/5; point 1: a = 1, b = 4 → 3/4;
        // point 4: a = 2, b = 3.5 → 1.5/3.5; point 6: a = 2, b = 5.5 → 3.5/5.5
        let points = [[0.0], [1.0], [4.0], [6.0]];
        let want = (0.8 + 0.75 + 1.5 / 3.5 + 3.5 / 5.5) / 4.0;
        let got = silhouette(&points, &[0, 0, 1, 1]).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // a singleton class scores 0 and still counts in the mean
        let got = silhouette(&[[0.0], [1.0], [5.0]], &[0, 0, 1]).unwrap();
        let want = ((5.0 - 1.0) / 5.0 + (4.0 - 1.0) / 4.0) / 3.0;
        assert!((got - want).abs() < 1e-12);
        assert!(silhouette(&points, &[1, 1, 1, 1]).is_none());
        // labels that do not fit the points are refused, never sized into an allocation
        assert!(silhouette(&points, &[0, 0, 1]).is_none());
        assert!(silhouette(&points, &[0, 0, 1, usize::MAX - 1]).is_none());
    }

    #[test]
    fn pca_finds_the_axes_of_largest_spread() {
        // uncorrelated spread along (1, 1, 0)/√2 (variance 5) and (0, 0, 1) (variance 1), none
        // along (1, −1, 0)/√2
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let rows: Vec<Vec<f32>> = [(-3.0, 1.0), (3.0, 1.0), (-1.0, -1.0), (1.0, -1.0)]
            .iter()
            .map(|&(u, w)| vec![u * s + 2.0, u * s + 2.0, w - 1.0])
            .collect();
        let (points, explained) = pca_2d(&rows);
        assert!(
            (explained - 1.0).abs() < 1e-9,
            "all variance in two axes: {explained}"
        );
        let want = [[-3.0, 1.0], [3.0, 1.0], [-1.0, -1.0], [1.0, -1.0]];
        for (p, w) in points.iter().zip(want) {
            // the second axis is (0, 0, 1) up to the sign rule (largest coordinate positive)
            assert!(
                (p[0] - w[0]).abs() < 1e-5 && (p[1] - w[1]).abs() < 1e-5,
                "{p:?} {w:?}"
            );
        }
    }

    #[test]
    fn a_features_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = PooledFeatures {
            label_names: vec!["neg".into(), "pos".into()],
            labels: vec![0, 1, 1],
            rows: vec![vec![0.1, -2.5], vec![3.25, 1e-7], vec![-0.0, 7.0]],
        };
        let path = dir.path().join("features.json");
        f.write(&path).unwrap();
        assert_eq!(PooledFeatures::read(&path).unwrap(), f);
        let (points, spread) = f.spread().unwrap();
        assert_eq!(points.len(), 3);
        assert!(spread.silhouette.is_finite() && spread.explained > 0.99);
        let ragged = PooledFeatures {
            rows: vec![vec![0.1, -2.5], vec![3.25], vec![-0.0, 7.0]],
            ..f
        };
        assert!(ragged.spread().is_none());
    }
}
