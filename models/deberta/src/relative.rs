//! DeBERTa's relative positions: the distance `i − j` from query `i` to key `j`, log-bucketed
//! beyond half the bucket count, and the row of the relative embeddings each pair reads
//! (docs/methods.md, "DeBERTa's disentangled attention").

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::DebertaV2Config;

/// transformers' `make_log_bucket_position`: distances within `±mid` (`mid = buckets / 2`)
/// stay exact; longer ones map logarithmically onto `mid..buckets`, up to `max_position`.
/// Computed in f32 as transformers computes it, so a distance on a bucket boundary rounds the
/// same way.
pub fn log_bucket(relative: i64, buckets: usize, max_position: usize) -> i64 {
    let mid = (buckets / 2) as i64;
    if relative.abs() <= mid {
        return relative;
    }
    let abs = relative.abs() as f32;
    let mid_f = mid as f32;
    let span = ((max_position - 1) as f32 / mid_f).ln();
    let log_pos = ((abs / mid_f).ln() / span * (mid_f - 1.0)).ceil() + mid_f;
    relative.signum() * log_pos as i64
}

/// The relative distance `i − j`, bucketed when the config buckets it.
pub fn relative_position(config: &DebertaV2Config, i: usize, j: usize) -> i64 {
    let relative = i as i64 - j as i64;
    match config.buckets() {
        Some(b) => log_bucket(relative, b, config.max_relative()),
        None => relative,
    }
}

/// Which relative embeddings a sequence of length `t` reads, and where.
///
/// Pair `(i, j)` reads row `clamp(δ(i − j) + S, 0, 2S − 1)` of the `2S` relative embeddings
/// in both disentangled terms (δ is odd, so transformers' position-to-content index
/// `−δ(j − i) + S` is the same row). The rows a sequence reaches are contiguous: only those,
/// `first..first + rows`, are projected, and `index` holds each pair's row minus `first`.
#[derive(Debug, Clone)]
pub struct RelativeRows {
    /// First relative-embedding row used.
    pub first: usize,
    /// Number of rows used.
    pub rows: usize,
    /// `[1, 1, T, T]`: pair `(i, j)`'s row, relative to `first`.
    pub index: Tensor<4, Int>,
}

impl RelativeRows {
    /// The rows a sequence of length `t` reads.
    pub fn new(config: &DebertaV2Config, t: usize, device: &Device) -> Self {
        let span = config.attention_span() as i64;
        let row = |i, j| (relative_position(config, i, j) + span).clamp(0, 2 * span - 1);
        let (lo, hi) = (row(0, t - 1), row(t - 1, 0));
        let index: Vec<i64> = (0..t)
            .flat_map(|i| (0..t).map(move |j| (i, j)))
            .map(|(i, j)| row(i, j) - lo)
            .collect();
        Self {
            first: lo as usize,
            rows: (hi - lo + 1) as usize,
            index: Tensor::from_data(TensorData::new(index, [1, 1, t, t]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buckets_equal_transformers() {
        // torch: make_log_bucket_position(torch.arange(-20, 21), 8, 64)
        let want = [
            -6, -6, -6, -6, -6, -6, -6, -6, -6, -6, -5, -5, -5, -5, -5, -5, -4, -3, -2, -1, 0, 1,
            2, 3, 4, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,
        ];
        let got: Vec<i64> = (-20..=20).map(|r| log_bucket(r, 8, 64)).collect();
        assert_eq!(got, want);
        // v3: 256 buckets over 512 positions keep every distance up to 128 exact
        let got: Vec<i64> = [128, -511, 129, 200]
            .map(|r| log_bucket(r, 256, 512))
            .to_vec();
        assert_eq!(got, [128, -255, 129, 169]);
    }
}
