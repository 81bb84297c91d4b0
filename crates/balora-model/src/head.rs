//! Layers of classification heads: trained in full beside the adapters (peft's
//! `modules_to_save`), in f32 over a half-precision encoder, and drawn from the run's seed when
//! the checkpoint has none (docs/methods.md, "Classification heads").

use balora_adapters::{SavedParam, SavedParamMut};
use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use crate::ModelError;

/// A dense layer of a classification head, `x·Wᵀ + b`, trained fully (not through an adapter).
#[derive(Module, Debug)]
pub struct Dense {
    /// `[out, in]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Dense {
    /// `x·Wᵀ + b`.
    ///
    /// # Shapes
    ///
    /// - x: `[B, in]`
    /// - output: `[B, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        burn::tensor::module::linear(x, self.weight.val().transpose(), Some(self.bias.val()))
    }

    /// Visit the weight and bias as `{name}.weight` and `{name}.bias`
    /// ([`AdapterSlots::visit_saved_modules`](balora_adapters::AdapterSlots::visit_saved_modules)).
    pub fn visit(&self, name: &str, f: &mut dyn FnMut(&str, SavedParam<'_>)) {
        f(&format!("{name}.weight"), SavedParam::Matrix(&self.weight));
        f(&format!("{name}.bias"), SavedParam::Vector(&self.bias));
    }

    /// [`Self::visit`], mutably (loading an adapter replaces the tensors).
    pub fn visit_mut(&mut self, name: &str, f: &mut dyn FnMut(&str, SavedParamMut<'_>)) {
        f(
            &format!("{name}.weight"),
            SavedParamMut::Matrix(&mut self.weight),
        );
        f(
            &format!("{name}.bias"),
            SavedParamMut::Vector(&mut self.bias),
        );
    }

    /// Number of outputs.
    pub fn outputs(&self) -> usize {
        self.bias.shape().dims::<1>()[0]
    }

    /// The layer in `dtype`, as fresh leaves that stay trainable if they were (a head read
    /// from a half-precision checkpoint trains in f32, like a fresh one).
    pub fn cast(self, dtype: DType) -> Self {
        if self.weight.val().dtype() == dtype {
            return self;
        }
        fn leaf<const D: usize>(p: Param<Tensor<D>>, dtype: DType) -> Param<Tensor<D>> {
            let trainable = p.is_require_grad();
            let t = p.val().detach().cast(dtype);
            Param::from_tensor(if trainable { t.require_grad() } else { t })
        }
        Self {
            weight: leaf(self.weight, dtype),
            bias: leaf(self.bias, dtype),
        }
    }
}

/// The number of labels a classifier is built with: `requested`, else the checkpoint's
/// `id2label` count, else 2 (transformers' default); zero is refused.
pub fn label_count(
    requested: Option<usize>,
    id2label: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<usize, ModelError> {
    match requested.or(id2label.map(|m| m.len())).unwrap_or(2) {
        0 => Err(ModelError::UnsupportedConfig {
            key: "num_labels",
            value: "0".into(),
            expected: "at least one label (a non-empty id2label)",
        }),
        n => Ok(n),
    }
}

/// Fresh head layers as transformers initialises a `Linear` — N(0, `initializer_range`)
/// weights, zero biases — from a host RNG seeded by the run's seed: the same head on every
/// backend and in every process (the device RNG is process-wide and differs between
/// backends), in the training dtype of the encoder's `dtype`.
pub struct HeadInit {
    rng: StdRng,
    normal: Normal<f32>,
    device: Device,
    dtype: DType,
}

impl HeadInit {
    /// Draws with standard deviation `initializer_range` from `seed`.
    pub fn new(
        initializer_range: f64,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let normal = Normal::new(0.0f32, initializer_range as f32)
            .ok()
            .filter(|_| initializer_range.is_finite() && initializer_range >= 0.0)
            .ok_or_else(|| ModelError::UnsupportedConfig {
                key: "initializer_range",
                value: initializer_range.to_string(),
                expected: "a finite non-negative standard deviation",
            })?;
        Ok(Self {
            rng: StdRng::seed_from_u64(seed),
            normal,
            device: device.clone(),
            dtype: balora_adapters::training_dtype(dtype),
        })
    }

    /// The next layer `[out, inp]`, its weights drawn after the previous layer's.
    pub fn dense(&mut self, out: usize, inp: usize) -> Dense {
        let w: Vec<f32> = (0..out * inp)
            .map(|_| self.normal.sample(&mut self.rng))
            .collect();
        let (device, dtype) = (&self.device, self.dtype);
        Dense {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(w, [out, inp]).convert_dtype(dtype),
                device,
            )),
            bias: Param::from_tensor(Tensor::zeros([out], (device, dtype))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_head_is_its_seed_and_trains_in_f32() {
        let device = Device::flex();
        let draw = |seed| {
            let mut init = HeadInit::new(0.02, seed, &device, DType::F16).unwrap();
            (init.dense(3, 4), init.dense(2, 3))
        };
        let ((a1, a2), (b1, _), (c1, _)) = (draw(7), draw(7), draw(8));
        let vals = |d: &Dense| d.weight.val().into_data().iter::<f32>().collect::<Vec<_>>();
        assert_eq!(a1.weight.val().dtype(), DType::F32);
        assert_eq!(vals(&a1), vals(&b1));
        assert_ne!(vals(&a1), vals(&c1));
        assert_ne!(vals(&a1)[..6], vals(&a2)[..6]);
        assert_eq!(a2.outputs(), 2);
        let x = Tensor::<2>::ones([5, 4], &device);
        let y = a1.forward(x).into_data().iter::<f32>().collect::<Vec<_>>();
        let w = vals(&a1);
        for (i, got) in y.iter().take(3).enumerate() {
            let want: f32 = w[i * 4..i * 4 + 4].iter().sum();
            assert!((got - want).abs() < 1e-6);
        }
        let e = HeadInit::new(f64::NAN, 0, &device, DType::F32)
            .err()
            .unwrap();
        assert!(e.to_string().contains("initializer_range"), "{e}");
    }
}
