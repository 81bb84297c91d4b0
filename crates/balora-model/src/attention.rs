//! Scaled dot-product attention with the masks decoder and encoder models need.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData};

/// Additive score bias of masked positions. Large and finite rather than −∞: a query row
/// whose keys are all masked (a padding query) then gets uniform weights, like transformers'
/// `finfo.min`, instead of NaN that would leak into later layers through its keys and values.
const MASKED: f64 = -1e9;

/// Which key positions each query position may attend to.
#[derive(Debug, Clone, Copy)]
pub struct AttentionMask<'a> {
    /// 1 for real keys, 0 for padding keys, `[B, T_k]` row-major; `None`: no padding.
    pub key_padding: Option<&'a [u8]>,
    /// Decoder: key j is visible from query i only if j ≤ i (absolute positions).
    pub causal: bool,
    /// Sliding window (Mistral): key j is visible from query i only if i − j < window.
    pub window: Option<usize>,
    /// Absolute position of the first query (the KV-cache length when decoding).
    pub query_offset: usize,
}

impl AttentionMask<'_> {
    /// The bias `[B, 1, T_q, T_k]` (0 or [`MASKED`]), or `None` when the plain causal flag of
    /// the attention kernel expresses the mask exactly (no padding, no window, square scores).
    fn bias(&self, b: usize, tq: usize, tk: usize, like: &Tensor<4>) -> Option<Tensor<4>> {
        let plain_causal = self.causal && self.query_offset == 0 && tq == tk;
        if self.key_padding.is_none() && self.window.is_none() && (plain_causal || !self.causal) {
            return None;
        }
        let mut bias = vec![0.0f64; b * tq * tk];
        for bi in 0..b {
            for i in 0..tq {
                let qpos = i + self.query_offset;
                for j in 0..tk {
                    let hidden_pad = self.key_padding.is_some_and(|m| m[bi * tk + j] == 0);
                    let future = self.causal && j > qpos;
                    let outside = self.window.is_some_and(|w| qpos >= j + w);
                    if hidden_pad || future || outside {
                        bias[(bi * tq + i) * tk + j] = MASKED;
                    }
                }
            }
        }
        Some(Tensor::from_data(
            TensorData::new(bias, [b, 1, tq, tk]),
            (&like.device(), like.dtype()),
        ))
    }
}

/// `softmax(q·kᵀ/√d + bias)·v` for `q [B, H, T_q, d]`, `k, v [B, H, T_k, d]`.
pub fn scaled_dot_product(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: AttentionMask<'_>,
) -> Tensor<4> {
    masked_attention(q, k, v, mask, None, None)
}

/// `softmax(q·kᵀ·scale + scores + mask)·v`: attention with a score term of the model's own
/// (DeBERTa's disentangled position scores, `scores [B, H, T_q, T_k]`) and its own scale.
pub fn biased_dot_product(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: AttentionMask<'_>,
    scale: f64,
    scores: Tensor<4>,
) -> Tensor<4> {
    masked_attention(q, k, v, mask, Some(scale), Some(scores))
}

fn masked_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: AttentionMask<'_>,
    scale: Option<f64>,
    scores: Option<Tensor<4>>,
) -> Tensor<4> {
    let [b, h, tq, _] = q.dims();
    let tk = k.dims()[2];
    let masked = mask.bias(b, tq, tk, &q).map(|m| m.expand([b, h, tq, tk]));
    let is_causal = mask.causal && masked.is_none();
    let bias = match (scores, masked) {
        (Some(s), Some(m)) => Some(s + m),
        (s, m) => s.or(m),
    };
    let options = AttentionModuleOptions {
        scale,
        softcap: None,
        is_causal,
    };
    attention(q, k, v, None, bias, options)
}

/// Repeat each of `kv_heads` key/value heads `n_rep` times (grouped-query attention):
/// `[B, kv_heads, T, d]` → `[B, kv_heads·n_rep, T, d]`, head `i` serving query heads
/// `i·n_rep .. (i+1)·n_rep`.
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kvh, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kvh, n_rep, t, d])
        .reshape([b, kvh * n_rep, t, d])
}
