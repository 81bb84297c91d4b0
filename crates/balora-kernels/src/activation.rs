//! The MLP activations of the supported models as single elementwise ops with their
//! derivative: GPT-2's tanh-approximated GELU (`gelu_new`) and Llama's SiLU.
//!
//! Why: Burn composes `gelu_approximate` from seven tensor ops (a cube through `powf`, a
//! `tanh`, adds and multiplies), each a full pass with a fresh buffer and, under autodiff, its
//! own saved tensors and backward pass, all through libm calls that do not vectorise. Here the
//! forward is one vectorised pass and the backward one more, recomputing `tanh` from the saved
//! input.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::activation::{gelu_approximate, silu};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::flex::{Floats, on_flex};
use crate::simd::Real;

/// Which activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (GPT-2's `gelu_new`).
    GeluTanh,
    /// `x·σ(x)` (Llama's `silu`).
    Silu,
}

/// `f(x)` elementwise.
pub fn activation<const D: usize>(x: Tensor<D>, kind: Activation) -> Tensor<D> {
    if !on_flex(&x) || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return activation_composed(x, kind);
    }
    let dims = x.dims();
    let n: usize = dims.iter().product();
    let flat = x.reshape([n]);
    let y: Tensor<1> = Tensor::from_dispatch(<Dispatch as ActivationBackend>::activation(
        flat.into_dispatch(),
        kind,
    ));
    y.reshape(dims)
}

/// The same from Burn's activation functions (every backend; the tests' reference).
pub fn activation_composed<const D: usize>(x: Tensor<D>, kind: Activation) -> Tensor<D> {
    match kind {
        Activation::GeluTanh => gelu_approximate(x),
        Activation::Silu => silu(x),
    }
}

/// GELU in its exact form, `0.5·x·(1 + erf(x/√2))` (BERT's and DeBERTa's `gelu`), with its
/// exact derivative on every backend (docs/methods.md, "Activations").
///
/// Why not Burn's `gelu` everywhere: its forward is exact on every backend, but the backward
/// the CubeCL backends (wgpu, cuda) inherit from Burn's default is the derivative of the tanh
/// approximation, off by up to 8e-4 on `[−4, 4]` — a gradient that is not the forward's.
/// flex overrides it with the exact one in a single pass, so flex keeps Burn's op; elsewhere
/// the erf form is composed from ops whose derivatives are exact.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if on_flex(&x) {
        burn::tensor::activation::gelu(x)
    } else {
        gelu_composed(x)
    }
}

/// [`gelu`] from `erf` (every backend; what [`gelu`] runs off flex, and the tests' reference).
pub fn gelu_composed<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cdf = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * cdf
}

/// The activations as a Burn backend extension (flex only; [`activation`] routes).
#[backend_extension(Flex, Autodiff)]
pub trait ActivationBackend: Backend {
    /// `f(x)` for a contiguous 1-D `x`.
    fn activation(x: FloatTensor<Self>, kind: Activation) -> FloatTensor<Self>;
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044_715;
/// Elements per parallel task: large enough to amortise scheduling, small enough to split
/// the smallest MLP activation (4 × 128 × 1536) across two cores.
const CHUNK: usize = 1 << 14;

/// `(f(x), f'(x))` of one element.
#[inline(always)]
fn value_and_slope<E: Real>(x: E, kind: Activation) -> (E, E) {
    let one = E::ONE;
    let half = E::from_f64(0.5);
    match kind {
        Activation::GeluTanh => {
            let c = E::from_f64(SQRT_2_OVER_PI);
            let a = E::from_f64(GELU_A);
            let x2 = x * x;
            let u = c * (x + a * x2 * x);
            // tanh u = 1 − 2/(e^{2u} + 1): finite for every u with the clamped exp
            let t = one - E::from_f64(2.0) / ((u + u).exp() + one);
            let y = half * x * (one + t);
            let dy =
                half * (one + t) + half * x * (one - t * t) * c * (one + E::from_f64(3.0) * a * x2);
            (y, dy)
        }
        Activation::Silu => {
            let s = one / (one + (-x).exp());
            (x * s, s * (one + x * (one - s)))
        }
    }
}

#[inline(always)]
fn forward_chunk<E: Real>(x: &[E], y: &mut [E], kind: Activation) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = value_and_slope(x, kind).0;
    }
}

#[inline(always)]
fn backward_chunk<E: Real>(x: &[E], g: &[E], dx: &mut [E], kind: Activation) {
    for ((d, &x), &g) in dx.iter_mut().zip(x).zip(g) {
        *d = g * value_and_slope(x, kind).1;
    }
}

fn forward_typed<E: Real>(x: &[E], kind: Activation) -> FlexTensor {
    let mut y = vec![E::ZERO; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| crate::dispatch!(forward_chunk(x, y, kind)));
    let n = y.len();
    crate::flex::tensor_from(y, [n])
}

fn backward_typed<E: Real>(x: &[E], g: &[E], kind: Activation) -> FlexTensor {
    let mut dx = vec![E::ZERO; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(d, (x, g))| crate::dispatch!(backward_chunk(x, g, d, kind)));
    let n = dx.len();
    crate::flex::tensor_from(dx, [n])
}

fn forward(x: &FlexTensor, kind: Activation) -> FlexTensor {
    let x = x.to_contiguous();
    match Floats::of(&x) {
        Floats::F32(v) => forward_typed(v, kind),
        Floats::F64(v) => forward_typed(v, kind),
    }
}

impl ActivationBackend for Flex {
    fn activation(x: FlexTensor, kind: Activation) -> FlexTensor {
        forward(&x, kind)
    }
}

#[derive(Debug)]
struct ActivationBackward;

impl Backward<Flex, 1> for ActivationBackward {
    /// The input and the activation.
    type State = (FlexTensor, Activation);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node).to_contiguous();
        let Some(parent) = parent else { return };
        let (x, kind) = ops.state;
        let dx = match (Floats::of(&x), Floats::of(&g)) {
            (Floats::F32(x), Floats::F32(g)) => backward_typed(x, g, kind),
            (Floats::F64(x), Floats::F64(g)) => backward_typed(x, g, kind),
            _ => unreachable!("the gradient has the input's dtype"),
        };
        grads.register::<Flex>(parent.id, dx);
    }
}

impl<C: CheckpointStrategy> ActivationBackend for Autodiff<Flex, C> {
    fn activation(x: FloatTensor<Self>, kind: Activation) -> FloatTensor<Self> {
        let input = x.primitive().to_contiguous();
        match ActivationBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = forward(&input, kind);
                prep.finish((input, kind), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&input, kind)),
        }
    }
}
