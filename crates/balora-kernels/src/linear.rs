//! A frozen linear layer with an optional low-rank update, as one op:
//! `y = x·Wᵀ + b + s·(x̃·Aᵀ)·Bᵀ`.
//!
//! `W [out, in]` and `b [out]` are frozen (LoRA's base); `A [r, in]` and `B [out, r]` are the
//! adapter factors and `x̃` the adapter branch's input (`x` after dropout, or `x` itself).
//!
//! Why one op: composed from Burn ops on flex, a 3-D `linear` copies the transposed weight on
//! every call and splits the batch into single-threaded GEMMs, the adapter branch adds four
//! more ops with their own buffers, and the backward sums the two input gradients in a
//! separate pass. Here the forward is one multi-threaded GEMM into the output plus the rank-r
//! branch accumulated into the same buffer; the backward computes
//!
//! ```text
//! G_B = g·B                 [N, r]
//! ∂x  = g·W (+ s·G_B·A when x̃ is x)   one buffer, accumulated
//! ∂x̃  = s·G_B·A             (when x̃ is a separate tensor)
//! ∂A  = s·G_Bᵀ·x̃            [r, in]
//! ∂B  = s·gᵀ·h, h = x̃·Aᵀ kept from the forward   [out, r]
//! ```
//!
//! and never computes a gradient for `W` or `b`. [`matmul`] is the plain product of two
//! differentiable matrices on the same GEMM. On other backends, when `W` or `b` require
//! gradients, or for dtypes other than f32/f64, [`lora_linear`] composes the same result from
//! 2-D tensor ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Tensor};

use crate::flex::{Floats, on_flex, rows_of, tensor_from};
use crate::gemm::{Scalar, View, matmul as gemm, matmul_into};

/// The low-rank branch of [`lora_linear`].
#[derive(Debug, Clone)]
pub struct LowRank {
    /// The branch's input `x̃` (`x` after dropout), `[N, in]`.
    pub input: Tensor<2>,
    /// `A`, `[r, in]`.
    pub a: Tensor<2>,
    /// `B`, `[out, r]`.
    pub b: Tensor<2>,
    /// The branch's scale `s` (`α/r`, or `α/√r` with rsLoRA).
    pub scale: f64,
}

/// `x·Wᵀ + bias + s·(x̃·Aᵀ)·Bᵀ` for a 2-D `x`.
///
/// # Shapes
///
/// - `x`: `[N, in]`, `weight`: `[out, in]`, `bias`: `[out]`
/// - `low_rank`: `input [N, in]`, `a [r, in]`, `b [out, r]`
/// - output: `[N, out]`
///
/// # Panics
///
/// If the shapes do not fit together.
pub fn lora_linear(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    low_rank: Option<LowRank>,
) -> Tensor<2> {
    let [n, d_in] = x.dims();
    let [d_out, w_in] = weight.dims();
    assert_eq!(
        w_in, d_in,
        "lora_linear: x has {d_in} features, the weight {w_in}"
    );
    if let Some(b) = &bias {
        assert_eq!(b.dims(), [d_out], "lora_linear: bias length");
    }
    if let Some(lr) = &low_rank {
        let [r, a_in] = lr.a.dims();
        assert_eq!(
            a_in, d_in,
            "lora_linear: A is [{r}, {a_in}], x has {d_in} features"
        );
        assert_eq!(lr.b.dims(), [d_out, r], "lora_linear: B shape");
        assert_eq!(
            lr.input.dims(),
            [n, d_in],
            "lora_linear: adapter input shape"
        );
    }
    let dtype = x.dtype();
    let same = |t: &Tensor<2>| t.dtype() == dtype;
    let fused = on_flex(&x)
        && matches!(dtype, DType::F32 | DType::F64)
        && same(&weight)
        && bias.as_ref().is_none_or(|b| b.dtype() == dtype)
        && low_rank
            .as_ref()
            .is_none_or(|lr| same(&lr.a) && same(&lr.b) && same(&lr.input))
        && !weight.is_require_grad()
        && bias.as_ref().is_none_or(|b| !b.is_require_grad());
    if !fused {
        return lora_linear_composed(x, weight, bias, low_rank);
    }
    // extension ops take no optional tensors: a bias-free layer passes zeros (`out` values)
    let bias = bias
        .unwrap_or_else(|| Tensor::zeros([d_out], (&weight.device(), dtype)))
        .into_dispatch();
    let out = match low_rank {
        None => <Dispatch as LinearBackend>::frozen_linear(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias,
        ),
        Some(lr) => <Dispatch as LinearBackend>::lora_linear(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias,
            lr.input.into_dispatch(),
            lr.a.into_dispatch(),
            lr.b.into_dispatch(),
            lr.scale,
        ),
    };
    Tensor::from_dispatch(out)
}

/// The same as [`lora_linear`] from 2-D tensor ops (every backend; the tests' reference).
pub fn lora_linear_composed(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    low_rank: Option<LowRank>,
) -> Tensor<2> {
    let mut y = x.matmul(weight.transpose());
    if let Some(b) = bias {
        y = y + b.unsqueeze_dim(0);
    }
    if let Some(lr) = low_rank {
        // mixed precision: the branch runs in the factors' dtype (f32 over a bf16 base) and
        // its result is added in the base's
        let h = lr.input.cast(lr.a.dtype()).matmul(lr.a.transpose());
        let delta = h.matmul(lr.b.transpose()).mul_scalar(lr.scale);
        let dtype = y.dtype();
        y = y + delta.cast(dtype);
    }
    y
}

/// `a·b` for 2-D tensors, both operands differentiable: faer's GEMM on flex (the forward and
/// the two gradient products `g·bᵀ`, `aᵀ·g`, each multi-threaded), Burn's matmul elsewhere.
///
/// # Shapes
///
/// - `a`: `[m, k]`, `b`: `[k, n]`, output: `[m, n]`
///
/// # Panics
///
/// If the inner dimensions differ.
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let ([m, k], [k2, n]) = (a.dims(), b.dims());
    assert_eq!(k, k2, "matmul: [{m}, {k}]·[{k2}, {n}]");
    let fused =
        on_flex(&a) && matches!(a.dtype(), DType::F32 | DType::F64) && a.dtype() == b.dtype();
    if !fused {
        return a.matmul(b);
    }
    Tensor::from_dispatch(<Dispatch as LinearBackend>::matmul(
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// The Gram matrices `G_b = Z_b·Z_bᵀ` of a batch `z [B, n, m]`, differentiable:
/// `∂Z_b = (∂G_b + ∂G_bᵀ)·Z_b`, one product per matrix and one `[B, n, m]` gradient (two
/// matmuls through autodiff would produce and add two, one of them transposed).
///
/// # Shapes
///
/// - `z`: `[B, n, m]`, output: `[B, n, n]`
pub fn gram(z: Tensor<3>) -> Tensor<3> {
    let fused = on_flex(&z) && matches!(z.dtype(), DType::F32 | DType::F64);
    if !fused {
        return z.clone().matmul(z.swap_dims(1, 2));
    }
    Tensor::from_dispatch(<Dispatch as LinearBackend>::gram(z.into_dispatch()))
}

/// The fused linear layer as a Burn backend extension (flex only; [`lora_linear`] routes).
#[backend_extension(Flex, Autodiff)]
pub trait LinearBackend: Backend {
    /// `a·b`.
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `Z_b·Z_bᵀ` for each matrix of `z [B, n, m]`.
    fn gram(z: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x·Wᵀ + b`, with `W` and `b` frozen.
    fn frozen_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x·Wᵀ + b + s·(x̃·Aᵀ)·Bᵀ`, with `W` and `b` frozen.
    #[allow(clippy::too_many_arguments)]
    fn lora_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        input: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;
}

/// `x·Wᵀ + b` into a new `[N, out]` buffer.
fn base_typed<E: Scalar>(x: &FlexTensor, w: &FlexTensor, bias: &FlexTensor) -> Vec<E> {
    let (xv, wv) = (View::<E>::of(x), View::<E>::of(w));
    let (n, d_out) = (xv.rows, wv.rows);
    let b = bias.to_contiguous();
    let b = &b.storage::<E>()[b.layout().start_offset()..][..d_out];
    let mut y = Vec::with_capacity(n * d_out);
    for _ in 0..n {
        y.extend_from_slice(b);
    }
    matmul_into(&mut y, true, xv, wv.t(), 1.0);
    y
}

/// Forward of the adapted layer: `(y, h = x̃·Aᵀ)`.
fn lora_forward<E: Scalar>(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: &FlexTensor,
    input: &FlexTensor,
    a: &FlexTensor,
    b: &FlexTensor,
    scale: f64,
) -> (FlexTensor, FlexTensor) {
    let mut y = base_typed::<E>(x, w, bias);
    let (av, bv) = (View::<E>::of(a), View::<E>::of(b));
    let n = View::<E>::of(x).rows;
    let h = gemm(View::<E>::of(input), av.t(), 1.0);
    matmul_into(&mut y, true, View::of_slice(&h, n, av.rows), bv.t(), scale);
    (tensor_from(y, [n, bv.rows]), tensor_from(h, [n, av.rows]))
}

fn is_f64(t: &FlexTensor) -> bool {
    t.dtype() == DType::F64
}

fn frozen_forward(x: &FlexTensor, w: &FlexTensor, bias: &FlexTensor) -> FlexTensor {
    let (n, d_out) = (rows_of(x).0, rows_of(w).0);
    if is_f64(x) {
        tensor_from(base_typed::<f64>(x, w, bias), [n, d_out])
    } else {
        tensor_from(base_typed::<f32>(x, w, bias), [n, d_out])
    }
}

/// `a·b` into a new tensor.
fn product(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    fn typed<E: Scalar>(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
        let (av, bv) = (View::<E>::of(a), View::<E>::of(b));
        tensor_from(gemm(av, bv, 1.0), [av.rows, bv.cols])
    }
    if is_f64(a) {
        typed::<f64>(a, b)
    } else {
        typed::<f32>(a, b)
    }
}

/// The `[n, m]` matrix `b` of a contiguous `[B, n, m]` tensor, as a 2-D view.
fn batch_item(z: &FlexTensor, b: usize) -> FlexTensor {
    let d: &[usize] = z.layout().shape();
    z.narrow(0, b, 1).reshape([d[1], d[2]].into())
}

/// `[Z_b·Z_bᵀ]` for a contiguous `[B, n, m]` `z`.
fn gram_forward(z: &FlexTensor) -> FlexTensor {
    fn typed<E: Scalar>(z: &FlexTensor) -> FlexTensor {
        let d: &[usize] = z.layout().shape();
        let (batch, n) = (d[0], d[1]);
        let mut out = vec![E::ZERO; batch * n * n];
        for (b, dst) in out.chunks_mut(n * n).enumerate() {
            let zb = View::<E>::of(&batch_item(z, b));
            matmul_into(dst, false, zb, zb.t(), 1.0);
        }
        tensor_from(out, [batch, n, n])
    }
    if is_f64(z) {
        typed::<f64>(z)
    } else {
        typed::<f32>(z)
    }
}

/// `[(∂G_b + ∂G_bᵀ)·Z_b]`.
fn gram_backward(z: &FlexTensor, g: &FlexTensor) -> FlexTensor {
    fn typed<E: Scalar>(z: &FlexTensor, g: &FlexTensor) -> FlexTensor {
        let d: &[usize] = z.layout().shape();
        let (batch, n, m) = (d[0], d[1], d[2]);
        let mut out = vec![E::ZERO; batch * n * m];
        let gc = g.to_contiguous();
        let gv = Floats::of(&gc);
        for (b, dst) in out.chunks_mut(n * m).enumerate() {
            // ∂G + ∂Gᵀ on the small n×n side first: one n×n·n×m product instead of two
            let sym: Vec<E> = (0..n * n)
                .map(|k| {
                    let (i, j) = (k / n, k % n);
                    gv.get::<E>(b * n * n + i * n + j) + gv.get::<E>(b * n * n + j * n + i)
                })
                .collect();
            let zb = View::<E>::of(&batch_item(z, b));
            matmul_into(dst, false, View::of_slice(&sym, n, n), zb, 1.0);
        }
        tensor_from(out, [batch, n, m])
    }
    if is_f64(z) {
        typed::<f64>(z, g)
    } else {
        typed::<f32>(z, g)
    }
}

impl LinearBackend for Flex {
    fn matmul(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        product(&a, &b)
    }

    fn gram(z: FlexTensor) -> FlexTensor {
        gram_forward(&z.to_contiguous())
    }

    fn frozen_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        frozen_forward(&x, &weight, &bias)
    }

    fn lora_linear(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        input: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        scale: f64,
    ) -> FlexTensor {
        if is_f64(&x) {
            lora_forward::<f64>(&x, &weight, &bias, &input, &a, &b, scale).0
        } else {
            lora_forward::<f32>(&x, &weight, &bias, &input, &a, &b, scale).0
        }
    }
}

/// `g` contiguous, `[N, out]`.
fn contiguous(g: FlexTensor) -> FlexTensor {
    if g.is_contiguous() && g.layout().start_offset() == 0 {
        g
    } else {
        g.to_contiguous()
    }
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Flex, 2> for MatmulBackward {
    /// `(a, b)`, each kept only when the other operand needs a gradient: `∂a = g·bᵀ` reads `b`,
    /// `∂b = aᵀ·g` reads `a`. Why: with a constant `a` (the randomized SVD's detached vectors
    /// times the logits) keeping `b` would hold the logits until the backward, and the fused
    /// vocabulary op could then no longer write its gradient over them.
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pa, pb] = ops.parents;
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let (a, b) = ops.state;
        if let (Some(p), Some(b)) = (pa, b) {
            grads.register::<Flex>(p.id, product(&g, &b.transpose(0, 1)));
        }
        if let (Some(p), Some(a)) = (pb, a) {
            grads.register::<Flex>(p.id, product(&a.transpose(0, 1), &g));
        }
    }
}

#[derive(Debug)]
struct GramBackward;

impl Backward<Flex, 1> for GramBackward {
    /// `z`, contiguous.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        if let Some(p) = parent {
            grads.register::<Flex>(p.id, gram_backward(&ops.state, &g));
        }
    }
}

#[derive(Debug)]
struct FrozenBackward;

impl Backward<Flex, 1> for FrozenBackward {
    /// The weight (`∂x = g·W`).
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let Some(parent) = parent else { return };
        let w = ops.state;
        let dx = if is_f64(&g) {
            input_grad::<f64>(&g, &w)
        } else {
            input_grad::<f32>(&g, &w)
        };
        grads.register::<Flex>(parent.id, dx);
    }
}

/// `g·W`, `[N, in]`.
fn input_grad<E: Scalar>(g: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let (gv, wv) = (View::<E>::of(g), View::<E>::of(w));
    tensor_from(gemm(gv, wv, 1.0), [gv.rows, wv.cols])
}

/// What the adapted layer's backward needs.
#[derive(Debug, Clone)]
struct LoraState {
    weight: FlexTensor,
    input: FlexTensor,
    a: FlexTensor,
    b: FlexTensor,
    h: FlexTensor,
    scale: f64,
    /// `x̃` is `x` (no dropout): both gradients go into one buffer.
    shared_input: bool,
}

#[derive(Debug)]
struct LoraBackward;

impl Backward<Flex, 4> for LoraBackward {
    type State = LoraState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pin, pa, pb] = ops.parents;
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let out = if is_f64(&g) {
            lora_grads::<f64>(&g, &s, [&px, &pin, &pa, &pb].map(Option::is_some))
        } else {
            lora_grads::<f32>(&g, &s, [&px, &pin, &pa, &pb].map(Option::is_some))
        };
        for (parent, grad) in [px, pin, pa, pb].into_iter().zip(out) {
            if let (Some(p), Some(g)) = (parent, grad) {
                grads.register::<Flex>(p.id, g);
            }
        }
    }
}

/// `[∂x, ∂x̃, ∂A, ∂B]` for the parents that need one (see the module docs).
fn lora_grads<E: Scalar>(
    g: &FlexTensor,
    s: &LoraState,
    need: [bool; 4],
) -> [Option<FlexTensor>; 4] {
    let gv = View::<E>::of(g);
    let (wv, av, bv) = (
        View::<E>::of(&s.weight),
        View::<E>::of(&s.a),
        View::<E>::of(&s.b),
    );
    let iv = View::<E>::of(&s.input);
    let (n, r, d_in) = (gv.rows, av.rows, av.cols);
    let [need_x, mut need_in, need_a, need_b] = need;
    if s.shared_input {
        // one parent: the input gradient holds both paths
        need_in = false;
    }
    let gb = gemm(gv, bv, 1.0);
    let gbv = View::of_slice(&gb, n, r);
    let dx = need_x.then(|| {
        let mut dx = gemm(gv, wv, 1.0);
        if s.shared_input {
            matmul_into(&mut dx, true, gbv, av, s.scale);
        }
        tensor_from(dx, [n, d_in])
    });
    let din = need_in.then(|| tensor_from(gemm(gbv, av, s.scale), [n, d_in]));
    let da = need_a.then(|| tensor_from(gemm(gbv.t(), iv, s.scale), [r, d_in]));
    let db = need_b.then(|| {
        let hv = View::<E>::of(&s.h);
        tensor_from(gemm(gv.t(), hv, s.scale), [bv.rows, r])
    });
    [dx, din, da, db]
}

impl<C: CheckpointStrategy> LinearBackend for Autodiff<Flex, C> {
    fn gram(z: FloatTensor<Self>) -> FloatTensor<Self> {
        let zp = z.primitive().to_contiguous();
        match GramBackward
            .prepare::<C>([z.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = gram_forward(&zp);
                prep.finish(zp, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(gram_forward(&zp)),
        }
    }

    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let (ap, bp) = (a.primitive().clone(), b.primitive().clone());
        let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
        match MatmulBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = product(&ap, &bp);
                prep.finish((b_tracked.then_some(ap), a_tracked.then_some(bp)), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(product(&ap, &bp)),
        }
    }

    fn frozen_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let w = weight.primitive().clone();
        let b = bias.primitive().clone();
        match FrozenBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = frozen_forward(x.primitive(), &w, &b);
                prep.finish(w, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(frozen_forward(x.primitive(), &w, &b)),
        }
    }

    fn lora_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        input: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let w = weight.primitive().clone();
        let bias = bias.primitive().clone();
        let shared_input = x.id() == input.id();
        let run = |with_h: bool| {
            let (xp, ip, ap, bp) = (
                x.primitive(),
                input.primitive(),
                a.primitive(),
                b.primitive(),
            );
            let (y, h) = if is_f64(xp) {
                lora_forward::<f64>(xp, &w, &bias, ip, ap, bp, scale)
            } else {
                lora_forward::<f32>(xp, &w, &bias, ip, ap, bp, scale)
            };
            (y, with_h.then_some(h))
        };
        match LoraBackward
            .prepare::<C>([x.node(), input.node(), a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, h) = run(true);
                let state = LoraState {
                    weight: w.clone(),
                    input: input.primitive().clone(),
                    a: a.primitive().clone(),
                    b: b.primitive().clone(),
                    h: h.expect("h was requested"),
                    scale,
                    shared_input,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(run(false).0),
        }
    }
}
