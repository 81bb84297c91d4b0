//! Rotary position embeddings in Hugging Face's rotate-half layout, with `linear` and
//! `llama3` frequency scaling.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::config::LlamaConfig;

/// Inverse frequencies `1/θ^(2i/d)`, scaled per `rope_scaling`. Computed in f32 arithmetic,
/// as transformers does, so the angles agree with the reference to the last bit.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rope {
    /// The RoPE of `config`.
    pub fn new(config: &LlamaConfig) -> Self {
        let d = config.head_dim();
        let theta = config.theta() as f32;
        let mut inv_freq: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
            .collect();
        if let Some(s) = config.rope() {
            let factor = s.factor.unwrap_or(1.0) as f32;
            match s.rope_type.as_str() {
                "linear" => inv_freq.iter_mut().for_each(|f| *f /= factor),
                "llama3" => {
                    let low = s.low_freq_factor.unwrap_or(1.0) as f32;
                    let high = s.high_freq_factor.unwrap_or(4.0) as f32;
                    let old = s.original_max_position_embeddings.unwrap_or(8192) as f32;
                    let (low_wavelen, high_wavelen) = (old / low, old / high);
                    for f in inv_freq.iter_mut() {
                        let wavelen = 2.0 * std::f32::consts::PI / *f;
                        if wavelen > low_wavelen {
                            *f /= factor;
                        } else if wavelen >= high_wavelen {
                            let smooth = (old / wavelen - low) / (high - low);
                            *f = (1.0 - smooth) * *f / factor + smooth * *f;
                        }
                    }
                }
                _ => {}
            }
        }
        Self {
            inv_freq,
            head_dim: d,
        }
    }

    /// `(cos, sin)`, each `[B, 1, T, d]`, for positions `[B, T]` (row-major).
    pub fn tables(
        &self,
        positions: &[usize],
        dims: [usize; 2],
        device: &Device,
        dtype: DType,
    ) -> (Tensor<4>, Tensor<4>) {
        let [b, t] = dims;
        let d = self.head_dim;
        let half = d / 2;
        let mut cos = Vec::with_capacity(b * t * d);
        let mut sin = Vec::with_capacity(b * t * d);
        for &p in positions {
            // cat(freqs, freqs): the two halves share angles
            for _ in 0..2 {
                for f in &self.inv_freq[..half] {
                    let angle = (p as f32 * f) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let make =
            |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [b, 1, t, d]), (device, dtype));
        (make(cos), make(sin))
    }
}

/// `x·cos + rotate_half(x)·sin` with `rotate_half([x1, x2]) = [−x2, x1]`; `x: [B, H, T, d]`.
pub fn apply_rotary(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}
