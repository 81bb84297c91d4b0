//! MonteCLoRA (arXiv 2411.04358) as a variant of the LoRA adapter, following peft's port
//! (docs/methods.md, "MonteCLoRA").
//!
//! Training perturbs `lora_A` with a Dirichlet-weighted mixture of N Gaussian perturbations
//! whose per-rank variances carry a Wishart hyperprior:
//!
//! ```text
//! Σ_jj  = max(e^{2ρ_j}·(Z_W)_jj, 1e-3)              Z_W ~ Wishart(r, I_r) (Bartlett)
//! α     = max(e^η, 1e-6);  μ = ln α − mean(ln α)
//! d_k   = max((1/α_k)(1 − 2/N) + (1/N²)·Σ_j 1/α_j, 1e-6)   (Laplace approximation)
//! w     = softmax(√(d + 1e-6) ⊙ z_D + μ)             z_D ~ N(0, I_N)
//! A_effᵀ = Aᵀ + scaler·Σ_n w_n·z_n·diag(√Σ)          z_n ~ N(0, I), in × r
//! ```
//!
//! and adds `β·(KL_Dir + KL_Wishart + KL_Normal) + Σ w²` (mean over adapted layers) to the loss.
//! Evaluation and merging use the mean `A` (plain LoRA, zero overhead).
//!
//! **Memory.** peft pre-draws `buffer_size × N × in × r` normals per layer (315 MB per layer at
//! its defaults for in = 4096, r = 16). Here one draw per optimizer step is made on the host
//! from a seed derived from (seed, step, layer) — reproducible, resumable, and identical under
//! gradient checkpointing — so the overhead per layer is the `N × in × r` noise of the current
//! step (2 MiB for N = 8, in = 4096, r = 16 in f32), `r + N` parameters, and `N·in·r` extra
//! multiply-adds per forward.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{ChiSquared, Distribution, StandardNormal, StandardUniform};

use crate::AdapterError;
use crate::special::{digamma, lgamma};

/// MonteCLoRA's knobs (peft `MontecloraConfig` defaults).
#[derive(Config, Debug, PartialEq)]
pub struct MonteCloraConfig {
    /// Mixture components N.
    #[config(default = 8)]
    pub num_samples: usize,
    /// Scale of the perturbation of `lora_A`.
    #[config(default = 1e-4)]
    pub sample_scaler: f64,
    /// β, the weight of the three KL terms.
    #[config(default = 1e-5)]
    pub kl_loss_weight: f64,
    /// Dirichlet prior concentration α₀.
    #[config(default = 0.1)]
    pub dirichlet_prior: f64,
    /// Add the collision probability `Σ w²` (peft calls it "entropy").
    #[config(default = false)]
    pub use_entropy: bool,
    /// Use the textbook Dirichlet KL (`−` before `Σ(ln Γ(α_k) − ln Γ(α₀))`) instead of peft's
    /// `+`, which is not a KL but is what peft and the original code optimise.
    #[config(default = false)]
    pub textbook_dirichlet_kl: bool,
}

/// The random inputs of one step: `z_n` (`[N, in, r]`), `diag(Z_W)` (`[r]`) and `z_D` (`[N]`).
#[derive(Debug, Clone)]
pub struct MonteCloraSample {
    /// Standard-normal perturbation directions `[N, in, r]`.
    pub z_mvn: Tensor<3>,
    /// Diagonal of a `Wishart(r, I_r)` draw `[r]`.
    pub wishart_diag: Tensor<1>,
    /// Standard-normal Dirichlet noise `[N]`.
    pub z_dirichlet: Tensor<1>,
}

/// The per-layer MonteCLoRA parameters and the sample of the current step.
#[derive(Module, Debug)]
pub struct MonteClora {
    /// ρ `[r]`: log standard deviations of the per-rank variances.
    std_prior: Param<Tensor<1>>,
    /// η `[N]`: log Dirichlet concentrations of the mixture weights.
    expert_weights_prior: Param<Tensor<1>>,
    /// The sampler's settings (N, scaler, β, prior), fixed at initialisation.
    #[module(skip)]
    config: MonteCloraConfig,
    /// The current step's random inputs; `None` outside training.
    #[module(skip)]
    sample: Option<MonteCloraSample>,
}

impl MonteClora {
    /// Fresh parameters `ρ, η ~ U(0, 1)` (as peft's `torch.rand`), from a host seed, on the
    /// device and in the dtype of `like` (`lora_A`).
    pub fn init(config: &MonteCloraConfig, rank: usize, seed: u64, like: &Tensor<2>) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut uniform = |n: usize| {
            let v: Vec<f64> = (0..n).map(|_| StandardUniform.sample(&mut rng)).collect();
            Tensor::<1>::from_data(TensorData::new(v, [n]), (&like.device(), like.dtype()))
        };
        let std_prior = uniform(rank);
        let eta = uniform(config.num_samples);
        Self::from_parameters(std_prior, eta, config.clone()).expect("η drawn with N entries")
    }

    /// The variant from given parameters ρ `[r]` and η `[N]` (`N = config.num_samples`), with
    /// no sample drawn yet. An η of another length is refused: every forward mixes exactly N
    /// perturbations, one weight each.
    pub fn from_parameters(
        std_prior: Tensor<1>,
        expert_weights_prior: Tensor<1>,
        config: MonteCloraConfig,
    ) -> Result<Self, AdapterError> {
        let [n] = expert_weights_prior.dims();
        if n != config.num_samples {
            return Err(AdapterError::Shape {
                layer: "MonteClora::from_parameters".into(),
                what: "expert_weights_prior (η)",
                expected: vec![config.num_samples],
                found: vec![n],
            });
        }
        Ok(Self {
            std_prior: Param::from_tensor(std_prior),
            expert_weights_prior: Param::from_tensor(expert_weights_prior),
            config,
            sample: None,
        })
    }

    /// ρ `[r]`, the trainable log standard deviations.
    pub fn std_prior(&self) -> Tensor<1> {
        self.std_prior.val()
    }

    /// η `[N]`, the trainable log Dirichlet concentrations.
    pub fn expert_weights_prior(&self) -> Tensor<1> {
        self.expert_weights_prior.val()
    }

    /// The configuration.
    pub fn config(&self) -> &MonteCloraConfig {
        &self.config
    }

    /// This step's random inputs, if drawn.
    pub fn sample(&self) -> Option<&MonteCloraSample> {
        self.sample.as_ref()
    }

    /// Use given random inputs instead of a draw (worked examples and tests fix `z`);
    /// `None` forgets the sample, so forwards use the mean adapter.
    pub fn set_sample(&mut self, sample: Option<MonteCloraSample>) {
        self.sample = sample;
    }

    /// Number of trainable parameters (`r + N`).
    pub fn num_trainable(&self) -> usize {
        self.std_prior.shape().num_elements() + self.expert_weights_prior.shape().num_elements()
    }

    /// Draw this step's random inputs for a layer with `inp` input features, from `seed`
    /// (derive it from the run seed, the step and the layer so every step differs and a
    /// resumed run draws the same noise).
    pub fn draw(&mut self, inp: usize, seed: u64) {
        let r = self.std_prior.shape().dims::<1>()[0];
        let n = self.config.num_samples;
        let like = self.std_prior.val();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut normals = |count: usize| -> Vec<f64> {
            (0..count)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect()
        };
        let z_mvn = normals(n * inp * r);
        let z_dirichlet = normals(n);
        // Bartlett: Z_W = L·Lᵀ, L_jj² ~ χ²(r − j), L_ij ~ N(0, 1) below the diagonal, so
        // (Z_W)_jj = L_jj² + Σ_{k<j} L_jk².
        let below = normals(r * r);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
        let wishart_diag: Vec<f64> = (0..r)
            .map(|j| {
                let chi = ChiSquared::new((r - j) as f64)
                    .map(|c| c.sample(&mut rng))
                    .unwrap_or(1.0);
                chi + (0..j).map(|k| below[j * r + k].powi(2)).sum::<f64>()
            })
            .collect();
        let opts = (&like.device(), like.dtype());
        self.sample = Some(MonteCloraSample {
            z_mvn: Tensor::from_data(TensorData::new(z_mvn, [n, inp, r]), opts),
            wishart_diag: Tensor::from_data(TensorData::new(wishart_diag, [r]), opts),
            z_dirichlet: Tensor::from_data(TensorData::new(z_dirichlet, [n]), opts),
        });
    }

    /// `Σ_jj = max(e^{2ρ_j}·(Z_W)_jj, 1e-3)`, `[r]`.
    fn variances(&self, sample: &MonteCloraSample) -> Tensor<1> {
        (self.std_prior.val().mul_scalar(2.0).exp() * sample.wishart_diag.clone()).clamp_min(1e-3)
    }

    fn concentrations(&self) -> Tensor<1> {
        self.expert_weights_prior.val().exp().clamp_min(1e-6)
    }

    /// Mixture weights `w` `[N]` (Laplace-approximated Dirichlet in the softmax basis).
    fn weights(&self, sample: &MonteCloraSample) -> Tensor<1> {
        let n = self.config.num_samples as f64;
        let alpha = self.concentrations();
        let log_alpha = alpha.clone().log();
        let mu = log_alpha.clone() - log_alpha.mean();
        let inv = alpha.recip();
        let d =
            (inv.clone().mul_scalar(1.0 - 2.0 / n) + inv.sum().div_scalar(n * n)).clamp_min(1e-6);
        softmax(
            d.add_scalar(1e-6).sqrt() * sample.z_dirichlet.clone() + mu,
            0,
        )
    }

    /// The perturbation of `lora_A` for this step, `[r, in]`; `None` without a sample.
    pub fn perturbation(&self) -> Option<Tensor<2>> {
        let sample = self.sample.as_ref()?;
        let [n, inp, r] = sample.z_mvn.dims();
        let w = self.weights(sample).reshape([n, 1, 1]);
        let mixed: Tensor<2> = (sample.z_mvn.clone() * w).sum_dim(0).reshape([inp, r]);
        let scale = self.variances(sample).sqrt().reshape([1, r]);
        Some(
            (mixed * scale)
                .mul_scalar(self.config.sample_scaler)
                .transpose(),
        )
    }

    /// The covariance of the last sample as peft stores it (`gaussian_var_prior`, `[r, r]`,
    /// diagonal), or the identity before any sample.
    pub fn last_covariance(&self) -> Tensor<2> {
        let r = self.std_prior.shape().dims::<1>()[0];
        let like = self.std_prior.val();
        let diag = match &self.sample {
            Some(s) => self.variances(s).detach(),
            None => Tensor::ones([r], (&like.device(), like.dtype())),
        };
        let eye = Tensor::<2>::eye(r, &like.device()).cast(like.dtype());
        eye * diag.reshape([1, r])
    }

    /// The mixture weights of the last sample (`expert_weights`, `[N]`), uniform before any.
    pub fn last_weights(&self) -> Tensor<1> {
        let n = self.config.num_samples;
        let like = self.std_prior.val();
        match &self.sample {
            Some(s) => self.weights(s).detach(),
            None => Tensor::ones([n], (&like.device(), like.dtype())).div_scalar(n as f64),
        }
    }

    /// This layer's regulariser `β·(KL_Dir + KL_W + KL_N) + [Σ w²]`; `None` without a sample.
    pub fn regularizer(&self) -> Option<Tensor<1>> {
        let parts = self.kl_terms()?;
        let mut total =
            (parts.dirichlet + parts.wishart + parts.normal).mul_scalar(self.config.kl_loss_weight);
        if self.config.use_entropy {
            total = total + parts.entropy;
        }
        Some(total)
    }

    /// The individual terms (for logging and tests).
    pub fn kl_terms(&self) -> Option<MonteCloraTerms> {
        let sample = self.sample.as_ref()?;
        let c = &self.config;
        let n = c.num_samples as f64;
        let r = self.std_prior.shape().dims::<1>()[0] as f64;
        let alpha = self.concentrations();
        let a0 = c.dirichlet_prior;
        let sum_alpha = alpha.clone().sum();
        let lg_a0 = lgamma(Tensor::<1>::from_data(
            [a0],
            (&alpha.device(), alpha.dtype()),
        ));
        let lg_sum_a0 = lgamma(Tensor::<1>::from_data(
            [n * a0],
            (&alpha.device(), alpha.dtype()),
        ));
        let middle = (lgamma(alpha.clone()) - lg_a0).sum();
        let middle = if c.textbook_dirichlet_kl {
            middle.neg()
        } else {
            middle
        };
        let dirichlet = lgamma(sum_alpha.clone()) - lg_sum_a0
            + middle
            + (alpha.clone().sub_scalar(a0) * (digamma(alpha) - digamma(sum_alpha))).sum();
        let rho = self.std_prior.val();
        let v = rho.clone().mul_scalar(2.0).exp();
        let wishart = (v - rho.mul_scalar(2.0))
            .sub_scalar(1.0)
            .sum()
            .mul_scalar(r / 2.0);
        let sigma = self.variances(sample).clamp_min(1e-6);
        let normal = (sigma.clone().sum() - sigma.log().sum())
            .sub_scalar(r)
            .mul_scalar(n / 2.0);
        let entropy = self.weights(sample).powi_scalar(2).sum();
        Some(MonteCloraTerms {
            dirichlet,
            wishart,
            normal,
            entropy,
        })
    }
}

/// MonteCLoRA's loss terms for one layer.
#[derive(Debug, Clone)]
pub struct MonteCloraTerms {
    /// Dirichlet KL (peft's formula unless `textbook_dirichlet_kl`).
    pub dirichlet: Tensor<1>,
    /// Wishart KL on `diag(e^ρ)`.
    pub wishart: Tensor<1>,
    /// Normal KL on the sampled covariance.
    pub normal: Tensor<1>,
    /// `Σ w²`.
    pub entropy: Tensor<1>,
}
