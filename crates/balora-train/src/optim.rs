//! AdamW with `torch.optim.AdamW`'s semantics (decoupled weight decay, bias-corrected moments,
//! `eps` added to `√v̂`) and the Hugging Face Trainer's defaults, over the parameters that
//! require gradients, with global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`);
//! docs/methods.md, "Optimizer". Named apart from Burn's `AdamW`/`AdamWConfig`, whose defaults
//! differ (ε = 1e-5, weight decay 1e-4), so neither is mistaken for the other.
//!
//! The moment state is keyed by module path (`model.layers.0.self_attn.q_proj.adapter.lora_a`),
//! not by Burn's random `ParamId`s, so a rebuilt model after `--resume` finds its state again
//! and the run continues bit-identically.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use crate::paths::{PathMapper, map_paths};

/// AdamW hyper-parameters, with the Hugging Face Trainer's defaults (β = (0.9, 0.999),
/// ε = 1e-8, no weight decay).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TorchAdamWConfig {
    /// β1, the decay of the first moment (gradient mean).
    pub beta1: f64,
    /// β2, the decay of the second moment (squared-gradient mean).
    pub beta2: f64,
    /// ε, added to `√v̂` in the update's denominator.
    pub eps: f64,
    /// Decoupled weight decay: each update first scales the weights by `1 − lr·wd`.
    pub weight_decay: f64,
}

impl Default for TorchAdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
pub struct Moments {
    /// The first moment (running mean of the gradient), flattened.
    pub m: Tensor<1>,
    /// The second moment (running mean of the squared gradient), flattened.
    pub v: Tensor<1>,
}

/// AdamW state: moments by module path and the number of updates made.
#[derive(Debug, Clone, Default)]
pub struct TorchAdamW {
    config: TorchAdamWConfig,
    /// Moments per trainable parameter path (restored from checkpoints).
    pub(crate) state: BTreeMap<String, Moments>,
    /// Updates made so far (bias correction uses it).
    pub(crate) steps: u64,
}

/// `‖g‖₂` over all gradients, and the clipping coefficient `min(1, max_norm/(‖g‖ + 1e-6))`.
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let dtype = balora_adapters::training_dtype(g.dtype());
                let sq = g.cast(dtype).powi_scalar(2).sum();
                self.sum = Some(match self.sum.take() {
                    Some(s) => s + sq,
                    None => sq,
                });
            }
        }
    }
    let mut n = Norm { grads, sum: None };
    module.visit(&mut n);
    n.sum.map_or(0.0, |s| s.into_scalar::<f64>().sqrt())
}

/// The factor `torch.nn.utils.clip_grad_norm_` multiplies every gradient by:
/// `min(1, max_norm / (‖g‖ + 1e-6))`, or 1 without clipping.
pub fn clip_coefficient(grad_norm: f64, max_norm: Option<f64>) -> f64 {
    max_norm.map_or(1.0, |max| (max / (grad_norm + 1e-6)).min(1.0))
}

struct Update<'a> {
    adamw: &'a mut TorchAdamW,
    grads: &'a GradientsParams,
    lr: f64,
    grad_scale: f64,
}

impl PathMapper for Update<'_> {
    fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.get::<D>(param.id) else {
            return param;
        };
        let c = self.adamw.config;
        let t = self.adamw.steps as i32;
        param.map(|w| {
            let shape = w.dims();
            // state and update in f32 over a half-precision parameter (docs/methods.md)
            let (dtype, state_dtype) = (w.dtype(), balora_adapters::training_dtype(w.dtype()));
            let w0 = w.detach().cast(state_dtype);
            let g: Tensor<1> = grad
                .detach()
                .cast(state_dtype)
                .mul_scalar(self.grad_scale)
                .reshape([-1]);
            let n = g.dims()[0];
            let state = self
                .adamw
                .state
                .entry(path.to_string())
                .or_insert_with(|| Moments {
                    m: Tensor::zeros([n], (&g.device(), g.dtype())),
                    v: Tensor::zeros([n], (&g.device(), g.dtype())),
                });
            let m = state.m.clone().mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
            let v =
                state.v.clone().mul_scalar(c.beta2) + g.powi_scalar(2).mul_scalar(1.0 - c.beta2);
            state.m = m.clone().detach();
            state.v = v.clone().detach();
            let m_hat = m.div_scalar(1.0 - c.beta1.powi(t));
            let v_hat = v.div_scalar(1.0 - c.beta2.powi(t));
            let step = m_hat / v_hat.sqrt().add_scalar(c.eps);
            let flat: Tensor<1> = w0.reshape([-1]).mul_scalar(1.0 - self.lr * c.weight_decay);
            let updated = flat - step.mul_scalar(self.lr);
            // a fresh leaf: the update itself is never differentiated
            updated.reshape(shape).cast(dtype).detach().require_grad()
        })
    }
}

impl TorchAdamW {
    /// A fresh optimizer.
    pub fn new(config: TorchAdamWConfig) -> Self {
        Self {
            config,
            state: BTreeMap::new(),
            steps: 0,
        }
    }

    /// One update of every parameter of `module` that has a gradient, at learning rate `lr`,
    /// with gradients multiplied by `grad_scale` first (global-norm clipping).
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &GradientsParams,
        lr: f64,
        grad_scale: f64,
    ) -> M {
        self.steps += 1;
        let mut update = Update {
            adamw: self,
            grads,
            lr,
            grad_scale,
        };
        map_paths(module, &mut update)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> TorchAdamWConfig {
        self.config
    }

    /// Updates made so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The moments as host data, for checkpoints: `{path}.m`, `{path}.v`.
    pub fn state_data(&self) -> BTreeMap<String, TensorData> {
        let mut out = BTreeMap::new();
        for (path, s) in &self.state {
            out.insert(format!("{path}.m"), s.m.to_data());
            out.insert(format!("{path}.v"), s.v.to_data());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balora_testkit::{f64_device, fixture, tensor32, tensor64, values};
    use burn::tensor::Device;
    use serde_json::Value;

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array()
            .expect("an array")
            .iter()
            .map(|x| x.as_f64().expect("a number"))
            .collect()
    }

    /// Six steps of `torch.optim.AdamW` (with and without weight decay, with
    /// `clip_grad_norm_`) recorded by `scripts/optim_fixtures.py`: every parameter after every
    /// step to 1e-12 in f64, and to 1e-6 in f32, the training dtype.
    #[test]
    fn adamw_matches_torch_step_by_step() {
        adamw_against_torch(tensor64, tensor64, 1e-12);
        adamw_against_torch(tensor32, tensor32, 1e-6);
    }

    type Make<const D: usize> = fn(&[f64], [usize; D], &Device) -> Tensor<D>;

    fn adamw_against_torch(matrix: Make<2>, vector: Make<1>, tol: f64) {
        let path = fixture("optim/adamw.json");
        let text = std::fs::read_to_string(&path).expect("committed fixture");
        let root: Value = serde_json::from_str(&text).unwrap();
        let device = f64_device();
        for case in root["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let betas = floats(&case["betas"]);
            let config = TorchAdamWConfig {
                beta1: betas[0],
                beta2: betas[1],
                eps: case["eps"].as_f64().unwrap(),
                weight_decay: case["weight_decay"].as_f64().unwrap(),
            };
            let max_norm = case["max_norm"].as_f64();
            let mut model = Two {
                a: Param::from_tensor(matrix(&floats(&case["init"]["a"]), [3, 2], &device)),
                b: Param::from_tensor(vector(&floats(&case["init"]["b"]), [4], &device)),
            };
            let mut optim = TorchAdamW::new(config);
            for (t, step) in case["steps"].as_array().unwrap().iter().enumerate() {
                let mut grads = GradientsParams::new();
                let (ga, gb) = (&step["grads"]["a"], &step["grads"]["b"]);
                grads.register(model.a.id, matrix(&floats(ga), [3, 2], &device));
                grads.register(model.b.id, vector(&floats(gb), [4], &device));
                let norm = global_grad_norm(&model, &grads);
                if let Some(want) = step["grad_norm"].as_f64() {
                    let err = (norm - want).abs();
                    assert!(err < tol * 10.0, "{name} step {t}: ‖g‖ {norm} vs {want}");
                }
                let lr = step["lr"].as_f64().unwrap();
                model = optim.step(model, &grads, lr, clip_coefficient(norm, max_norm));
                for (key, got) in [("a", values(model.a.val())), ("b", values(model.b.val()))] {
                    let want = floats(&step["after"][key]);
                    let err = got
                        .iter()
                        .zip(&want)
                        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
                    assert!(err < tol, "{name} step {t} {key}: {err:e} from torch");
                }
            }
            assert_eq!(optim.steps(), 6);
        }
    }
}
