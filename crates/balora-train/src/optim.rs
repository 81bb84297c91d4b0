//! AdamW (Loshchilov & Hutter; PyTorch semantics: decoupled weight decay, bias-corrected
//! moments, `eps` added to `√v̂`) over the parameters that require gradients, with global-norm
//! gradient clipping (`torch.nn.utils.clip_grad_norm_`).
//!
//! The moment state is keyed by module path (`model.layers.0.self_attn.q_proj.adapter.lora_a`),
//! not by Burn's random `ParamId`s, so a rebuilt model after `--resume` finds its state again
//! and the run continues bit-identically.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

/// AdamW hyper-parameters (PyTorch/Hugging Face defaults, not Burn's).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
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
    /// m.
    pub m: Tensor<1>,
    /// v.
    pub v: Tensor<1>,
}

/// AdamW state: moments by module path and the number of updates made.
#[derive(Debug, Clone, Default)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Moments per trainable parameter path.
    pub state: BTreeMap<String, Moments>,
    /// Updates made so far (bias correction uses it).
    pub steps: u64,
}

struct Paths {
    stack: Vec<String>,
}

impl Paths {
    fn enter(&mut self, name: &str) {
        self.stack.push(name.to_string());
    }
    fn exit(&mut self) {
        self.stack.pop();
    }
    fn current(&self) -> String {
        self.stack.join(".")
    }
}

/// Collects `(path, id)` of every parameter that requires gradients.
struct Trainable {
    paths: Paths,
    found: Vec<(String, ParamId)>,
}

impl ModuleVisitor for Trainable {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.paths.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.paths.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            self.found.push((self.paths.current(), param.id));
        }
    }
}

/// Paths and ids of the trainable parameters of `module`, in module order.
pub fn trainable_params<M: Module>(module: &M) -> Vec<(String, ParamId)> {
    let mut v = Trainable {
        paths: Paths { stack: Vec::new() },
        found: Vec::new(),
    };
    module.visit(&mut v);
    v.found
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

struct Update<'a> {
    adamw: &'a mut AdamW,
    grads: &'a GradientsParams,
    lr: f64,
    grad_scale: f64,
    paths: Paths,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.paths.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.paths.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.get::<D>(param.id) else {
            return param;
        };
        let c = self.adamw.config;
        let t = self.adamw.steps as i32;
        let path = self.paths.current();
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
            let state = self.adamw.state.entry(path).or_insert_with(|| Moments {
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

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
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
            paths: Paths { stack: Vec::new() },
        };
        module.map(&mut update)
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
