//! `LoraLinear`: a frozen linear layer with an optional low-rank adapter.
//!
//! The base weight is kept in PyTorch's `[out, in]` layout: Hugging Face checkpoints and peft's
//! `lora_A [r, in]` / `lora_B [out, r]` then load without transposes, and `x·Wᵀ` is a strided
//! view on every backend, not a copy.

use balora_kernels::{LowRank, lora_linear};
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{DType, Device, Tensor, assert_shape};

use crate::init::{initial_factors, path_seed};
use crate::monteclora::MonteClora;
use crate::variant::{AdapterTensor, Variant};
use crate::{AdapterError, LoraConfig};

/// The frozen starting point `(A₀, B₀)` of an adapter whose `B₀ ≠ 0` (PiSSA).
#[derive(Module, Debug)]
pub struct InitialAdapter {
    lora_a: Param<Tensor<2>>,
    lora_b: Param<Tensor<2>>,
}

impl InitialAdapter {
    /// `A₀`, `[r, in]`, frozen.
    pub fn lora_a(&self) -> &Param<Tensor<2>> {
        &self.lora_a
    }

    /// `B₀`, `[out, r]`, frozen.
    pub fn lora_b(&self) -> &Param<Tensor<2>> {
        &self.lora_b
    }
}

/// The trainable low-rank update `ΔW = s·B·A` of one layer, with its frozen initial factors
/// (PiSSA) and an optional [`Variant`]. Its state is private: layers, files and the trainer go
/// through the methods, which keep the shapes consistent.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `lora_A`, `[r, in]`, trainable.
    lora_a: Param<Tensor<2>>,
    /// `lora_B`, `[out, r]`, trainable.
    lora_b: Param<Tensor<2>>,
    /// The frozen initial factors, kept only when they are not a zero update (PiSSA); for
    /// Gaussian init `B₀ = 0`, so the teacher is the base layer and nothing needs keeping.
    initial: Option<InitialAdapter>,
    /// Dropout on the adapter branch's input.
    dropout: Dropout,
    /// `s = α/r` or `α/√r`.
    scale: f64,
    /// Whether `s·B·A` is currently folded into the base weight.
    merged: bool,
    /// A variant's additions (MonteCLoRA).
    variant: Option<Variant>,
}

impl LoraAdapter {
    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.shape().dims::<2>()[0]
    }

    /// `lora_A`, `[r, in]`.
    pub fn lora_a(&self) -> &Param<Tensor<2>> {
        &self.lora_a
    }

    /// `lora_B`, `[out, r]`.
    pub fn lora_b(&self) -> &Param<Tensor<2>> {
        &self.lora_b
    }

    /// The frozen initial factors (PiSSA), if kept.
    pub fn initial(&self) -> Option<&InitialAdapter> {
        self.initial.as_ref()
    }

    /// The scale `s` of `B·A`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Whether `s·B·A` is folded into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// The variant, if any.
    pub fn variant(&self) -> Option<&Variant> {
        self.variant.as_ref()
    }

    /// The variant, mutably (drawing its per-step inputs).
    pub fn variant_mut(&mut self) -> Option<&mut Variant> {
        self.variant.as_mut()
    }

    /// Replace the trainable factors (a loaded adapter, a test's stand-in for training) with
    /// new trainable leaves of the same shapes; `layer` names the layer in the error.
    pub fn set_factors(
        &mut self,
        layer: &str,
        lora_a: Tensor<2>,
        lora_b: Tensor<2>,
    ) -> Result<(), AdapterError> {
        for (what, want, got) in [
            ("lora_A", self.lora_a.shape().dims::<2>(), lora_a.dims()),
            ("lora_B", self.lora_b.shape().dims::<2>(), lora_b.dims()),
        ] {
            if want != got {
                return Err(AdapterError::Shape {
                    layer: layer.to_string(),
                    what,
                    expected: want.to_vec(),
                    found: got.to_vec(),
                });
            }
        }
        // fresh trainable leaves (tracked where the device records gradients)
        self.lora_a = Param::from_tensor(lora_a.detach());
        self.lora_b = Param::from_tensor(lora_b.detach());
        Ok(())
    }

    /// Plug a variant in (or take it out with `None`), e.g. a MonteCLoRA state built
    /// elsewhere.
    pub fn set_variant(&mut self, variant: Option<Variant>) {
        self.variant = variant;
    }

    /// The same update as plain LoRA on the *pretrained* weight (docs/methods.md, "PiSSA
    /// conversion on save"): with initial factors, `A' = [A; A₀]` (`[2r, in]`) and
    /// `B' = [B | −B₀]` (`[out, 2r]`), so `s·B'·A' = s·(B·A − B₀·A₀)`; otherwise `(A, B)`.
    /// Both detached: the result is for writing files, not for training.
    pub fn to_plain_lora(&self) -> (Tensor<2>, Tensor<2>) {
        let (a, b) = (self.lora_a.val().detach(), self.lora_b.val().detach());
        match &self.initial {
            Some(init) => (
                Tensor::cat(vec![a, init.lora_a.val()], 0),
                Tensor::cat(vec![b, init.lora_b.val().neg()], 1),
            ),
            None => (a, b),
        }
    }

    /// The tensors of this adapter's file entry, under peft's names relative to the layer:
    /// `lora_A.weight`, `lora_B.weight` and the variant's. With `plain`, the factors of
    /// [`Self::to_plain_lora`] and no variant tensors (plain LoRA has none; evaluation uses the
    /// mean adapter). Detached.
    pub fn saved_tensors(&self, plain: bool) -> Vec<(String, AdapterTensor)> {
        let (a, b) = if plain {
            self.to_plain_lora()
        } else {
            (self.lora_a.val().detach(), self.lora_b.val().detach())
        };
        let mut out = vec![
            ("lora_A.weight".to_string(), AdapterTensor::Matrix(a)),
            ("lora_B.weight".to_string(), AdapterTensor::Matrix(b)),
        ];
        if !plain && let Some(v) = &self.variant {
            out.extend(v.saved_tensors());
        }
        out
    }

    /// Number of trainable parameters: `r·(in + out)` plus the variant's.
    pub fn num_trainable(&self) -> usize {
        self.lora_a.shape().num_elements()
            + self.lora_b.shape().num_elements()
            + self.variant.as_ref().map_or(0, Variant::num_trainable)
    }

    /// The low-rank branch `s·(dropout(x)·Aᵀ)·Bᵀ` for a 2-D `x`, applied on the activation
    /// side, so the dense `out×in` ΔW is never formed in the training forward (it would cost a
    /// weight-sized tensor per layer, kept alive for the backward).
    ///
    /// With a variant's drawn perturbation (MonteCLoRA), training (an autodiff input) uses the
    /// perturbed `A + ΔA`; evaluation always uses the mean `A`.
    fn low_rank(&self, x: Tensor<2>) -> LowRank {
        let mut a = self.lora_a.val();
        if x.device().is_autodiff()
            && let Some(perturbation) = self.variant.as_ref().and_then(Variant::perturbation)
        {
            a = a + perturbation;
        }
        LowRank {
            input: self.dropout.forward(x),
            a,
            b: self.lora_b.val(),
            scale: self.scale,
        }
    }

    /// The dense update `s·B·A`, `[out, in]` (merging, conversion, tests).
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scale)
    }
}

/// Run a 2-D row map `[N, in] → [N, out]` on `x [..., in]`, giving `[..., out]`: the fused
/// linear kernels work on matrices, and flattening the leading axes also turns a batched
/// product into one large GEMM.
fn on_rows<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Tensor<D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    let y = f(x.reshape([rows, d_in]));
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// `x·Wᵀ` with a frozen `weight [out, in]` (a tied LM head, a frozen projection), on
/// `x [..., in]`: the fused kernel on flex, which never computes a gradient for `W`.
pub fn frozen_linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    on_rows(x, |x| lora_linear(x, weight, None, None))
}

/// A linear layer `y = x·Wᵀ + b` with a frozen base and an optional LoRA adapter:
/// `y = x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ`.
///
/// Models build every projection as a `LoraLinear` with no adapter; injection
/// ([`crate::inject`]) attaches adapters to the targeted ones. Without an adapter the layer is
/// exactly a linear layer with PyTorch's weight layout.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// Base weight `[out, in]`, frozen. After PiSSA initialisation: the residual `W − s·B₀·A₀`.
    pub weight: Param<Tensor<2>>,
    /// Base bias `[out]`, frozen.
    pub bias: Option<Param<Tensor<1>>>,
    /// The adapter, when this layer is targeted.
    adapter: Option<LoraAdapter>,
}

impl LoraLinear {
    /// A frozen layer of zeros `[out, in]` (with a zero bias `[out]` if `bias`): the shape a
    /// model declares before its checkpoint's tensors are loaded over it.
    pub fn zeros(out: usize, inp: usize, bias: bool, device: &Device, dtype: DType) -> Self {
        Self::new(
            Tensor::zeros([out, inp], (device, dtype)),
            bias.then(|| Tensor::zeros([out], (device, dtype))),
        )
    }

    /// A frozen layer from a weight `[out, in]` and an optional bias `[out]`.
    ///
    /// # Panics
    ///
    /// If the bias length differs from `out`.
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        let [out, _] = weight.dims();
        if let Some(b) = &bias {
            assert_shape!(b, [out]);
        }
        Self {
            weight: Param::from_tensor(weight).set_require_grad(false),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            adapter: None,
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.shape().dims()
    }

    /// The adapter, when this layer is targeted.
    pub fn adapter(&self) -> Option<&LoraAdapter> {
        self.adapter.as_ref()
    }

    /// The adapter, mutably.
    pub fn adapter_mut(&mut self) -> Option<&mut LoraAdapter> {
        self.adapter.as_mut()
    }

    /// `x·Wᵀ + b`, plus the adapter's `s·(dropout(x)·Aᵀ)·Bᵀ` when one is attached and not
    /// merged.
    ///
    /// # Shapes
    ///
    /// - input: `[..., in]`
    /// - output: `[..., out]`
    ///
    /// # Panics
    ///
    /// If the last axis of `x` is not `in`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let [_, d_in] = self.dims();
        assert_shape!(x, [.., d_in]);
        let bias = self.bias.as_ref().map(|b| b.val());
        on_rows(x, |x| {
            let weight = self.weight.val();
            match &self.adapter {
                Some(adapter) if !adapter.merged => {
                    let low_rank = adapter.low_rank(x.clone());
                    lora_linear(x, weight, bias, Some(low_rank))
                }
                _ => lora_linear(x, weight, bias, None),
            }
        })
    }

    /// This layer as BA-LoRA's teacher computes it (docs/methods.md, "The teacher"): the
    /// frozen base plus the adapter's *initial* factors — under PiSSA `W_res + s·B₀·A₀ = W`,
    /// the pretrained layer up to rounding; under Gaussian init (`B₀ = 0`) the base layer, so
    /// the adapter is dropped. The base weight and bias are the same tensor handles as this
    /// layer's (no copy), except after [`merge`](Self::merge), where the merged `s·B·A` is
    /// subtracted into a new weight. Nothing in the result requires gradients.
    pub fn teacher(&self) -> LoraLinear {
        let mut weight = self.weight.clone();
        let adapter = self.adapter.as_ref().and_then(|adapter| {
            if adapter.merged {
                let delta = adapter.delta_weight().detach();
                weight = weight
                    .clone()
                    .map(|w| (w.clone() - delta.cast(w.dtype())).detach());
            }
            adapter.initial.as_ref().map(|init| LoraAdapter {
                lora_a: init.lora_a.clone(),
                lora_b: init.lora_b.clone(),
                initial: None,
                dropout: DropoutConfig::new(0.0).init(),
                scale: adapter.scale,
                merged: false,
                variant: None,
            })
        });
        LoraLinear {
            weight,
            bias: self.bias.clone(),
            adapter,
        }
        .no_grad()
    }

    /// Attach a freshly initialised adapter per `config` (PiSSA rewrites the base weight into
    /// the residual), with the rank and α its patterns give `path`. `path` names the layer in
    /// errors and seeds its random stream.
    pub fn attach(&mut self, path: &str, config: &LoraConfig) -> Result<(), AdapterError> {
        if self.adapter.is_some() {
            return Err(AdapterError::AlreadyAdapted {
                layer: path.to_string(),
            });
        }
        config.validate()?;
        // the layer's own rank and α (rank_pattern / alpha_pattern)
        let config = &config.for_layer(path);
        let weight = self.weight.val().detach();
        let init = initial_factors(&weight, config, path)?;
        if let Some(residual) = init.residual {
            self.weight = self
                .weight
                .clone()
                .map(|_| residual)
                .set_require_grad(false);
        }
        let initial = config.init.is_pissa().then(|| InitialAdapter {
            lora_a: Param::from_tensor(init.lora_a.clone()).set_require_grad(false),
            lora_b: Param::from_tensor(init.lora_b.clone()).set_require_grad(false),
        });
        let variant = config.monteclora.as_ref().map(|mc| {
            Variant::MonteClora(MonteClora::init(
                mc,
                config.r,
                path_seed(config.seed ^ 0x4d43, path),
                &init.lora_a,
            ))
        });
        self.adapter = Some(LoraAdapter {
            lora_a: Param::from_tensor(init.lora_a),
            lora_b: Param::from_tensor(init.lora_b),
            initial,
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            scale: config.scale(),
            merged: false,
            variant,
        });
        Ok(())
    }

    /// Attach an adapter with given trainable factors (loading a saved LoRA adapter). The
    /// teacher stays the base layer, i.e. the pretrained model the adapter was trained from.
    pub fn attach_factors(
        &mut self,
        path: &str,
        lora_a: Tensor<2>,
        lora_b: Tensor<2>,
        scale: f64,
    ) -> Result<(), AdapterError> {
        if self.adapter.is_some() {
            return Err(AdapterError::AlreadyAdapted {
                layer: path.to_string(),
            });
        }
        let [out, inp] = self.dims();
        let [r, a_in] = lora_a.dims();
        let [b_out, b_r] = lora_b.dims();
        if a_in != inp || r == 0 {
            return Err(AdapterError::Shape {
                layer: path.to_string(),
                what: "lora_A",
                expected: vec![r.max(1), inp],
                found: vec![r, a_in],
            });
        }
        if b_out != out || b_r != r {
            return Err(AdapterError::Shape {
                layer: path.to_string(),
                what: "lora_B",
                expected: vec![out, r],
                found: vec![b_out, b_r],
            });
        }
        self.adapter = Some(LoraAdapter {
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            initial: None,
            dropout: DropoutConfig::new(0.0).init(),
            scale,
            merged: false,
            variant: None,
        });
        Ok(())
    }

    /// Fold `s·B·A` into the base weight (inference without the extra matmuls). Idempotent;
    /// returns whether anything changed.
    pub fn merge(&mut self) -> bool {
        self.fold(true)
    }

    /// Undo [`merge`](Self::merge). Idempotent; returns whether anything changed.
    pub fn unmerge(&mut self) -> bool {
        self.fold(false)
    }

    fn fold(&mut self, merge: bool) -> bool {
        let Some(adapter) = &mut self.adapter else {
            return false;
        };
        if adapter.merged == merge {
            return false;
        }
        let delta = adapter.delta_weight().detach();
        self.weight = self.weight.clone().map(|w| {
            let delta = delta.cast(w.dtype());
            let w = if merge { w + delta } else { w - delta };
            w.set_require_grad(false)
        });
        adapter.merged = merge;
        true
    }

    /// The update this layer's adapter makes to the *pretrained* weight `W`, `[out, in]`:
    /// `s·B·A`, minus `s·B₀·A₀` under PiSSA (whose base in memory is the residual
    /// `W − s·B₀·A₀`). `W + ΔW` is the fine-tuned layer; a merged export adds it to the
    /// checkpoint's weight. `None` without an adapter. Detached; MonteCLoRA contributes its mean.
    pub fn delta_from_pretrained(&self) -> Option<Tensor<2>> {
        let adapter = self.adapter.as_ref()?;
        let delta = adapter.delta_weight();
        let delta = match &adapter.initial {
            Some(init) => {
                let w0 = init.lora_b.val().matmul(init.lora_a.val());
                delta - w0.mul_scalar(adapter.scale)
            }
            None => delta,
        };
        Some(delta.detach())
    }

    /// Remove the adapter and return the plain base layer's weight to `W` as it was before
    /// attaching (for PiSSA: `W_res + s·B₀·A₀`). Returns the removed adapter.
    pub fn detach_adapter(&mut self) -> Option<LoraAdapter> {
        self.unmerge();
        let adapter = self.adapter.take()?;
        if let Some(init) = &adapter.initial {
            let w0 = init
                .lora_b
                .val()
                .matmul(init.lora_a.val())
                .mul_scalar(adapter.scale);
            self.weight = self
                .weight
                .clone()
                .map(|w| (w.clone() + w0.cast(w.dtype())).set_require_grad(false));
        }
        Some(adapter)
    }
}
