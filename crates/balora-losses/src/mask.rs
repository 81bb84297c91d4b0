//! Which token positions the NLG regularisers see.

use burn::tensor::{Int, Tensor, TensorData};

use crate::{LossError, MaskMode};

/// The label value of positions that carry no target (prompt, padding), as in Hugging Face.
pub const IGNORE_INDEX: i64 = -100;

/// A token mask over `[B, T]` positions, on the device as 0/1 weights and on the host as the
/// list of selected flat row indices `b·T + t` (for gathering the masked rows).
#[derive(Debug, Clone)]
pub struct TokenMask {
    /// 0/1 weights `[B, T]` in the logits' dtype.
    pub weights: Tensor<2>,
    /// Flat indices of the selected positions, in order.
    pub rows: Vec<usize>,
    /// `[B, T]`.
    pub dims: [usize; 2],
}

impl TokenMask {
    /// Build the mask of `mode` from host labels `[B, T]` (row-major), on the device and in
    /// the dtype of `like`.
    pub fn new(
        labels: &[i64],
        dims: [usize; 2],
        mode: MaskMode,
        like: &Tensor<3>,
    ) -> Result<Self, LossError> {
        let [b, t] = dims;
        if labels.len() != b * t {
            return Err(LossError::Shape {
                what: "labels",
                expected: format!("[{b}, {t}] ({} values)", b * t),
                found: vec![labels.len()],
            });
        }
        let keep = |i: usize| match mode {
            MaskMode::None => true,
            MaskMode::ResponseUnshifted => labels[i] != IGNORE_INDEX,
            // position t predicts token t+1; the last position predicts nothing
            MaskMode::ResponseShifted => (i % t) + 1 < t && labels[i + 1] != IGNORE_INDEX,
        };
        let rows: Vec<usize> = (0..b * t).filter(|&i| keep(i)).collect();
        let mut w = vec![0.0f64; b * t];
        for &i in &rows {
            w[i] = 1.0;
        }
        let weights = Tensor::from_data(TensorData::new(w, [b, t]), (&like.device(), like.dtype()));
        Ok(Self {
            weights,
            rows,
            dims,
        })
    }

    /// Number of selected positions `N`.
    pub fn count(&self) -> usize {
        self.rows.len()
    }

    /// Whether every position is selected.
    pub fn is_full(&self) -> bool {
        self.rows.len() == self.dims[0] * self.dims[1]
    }

    /// The selected rows of `[B, T, V]` logits as an `[N, V]` matrix (differentiable gather).
    pub fn select_rows(&self, logits: Tensor<3>) -> Tensor<2> {
        let [b, t, v] = logits.dims();
        let flat = logits.reshape([b * t, v]);
        if self.is_full() {
            return flat;
        }
        let idx: Vec<i64> = self.rows.iter().map(|&i| i as i64).collect();
        let n = idx.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &flat.device());
        flat.select(0, idx)
    }
}
