//! The softmax-over-the-vocabulary terms of a causal-LM step, fused into one pass per row.
//!
//! For logits `z ∈ ℝ^{N×V}` (one row per token) [`vocab_terms`] returns `[N, 4]`:
//!
//! | column | term | definition |
//! |---|---|---|
//! | 0 | cross-entropy | `log Σ exp(z) − z_y` for the row's target `y` (0 without a target) |
//! | 1 | consistency | `KL(q ‖ p̃)`, `q = softmax(t/τ)` of the detached teacher row `t`, `p̃ = softmax(z/τ)` |
//! | 2 | diversity | the entropy `−Σ p·log(p + ε)` of `p = softmax(z)`, over the whole row or over its `k` largest logits renormalised |
//! | 3 | Frobenius | `Σ z²` (the SVD term's `‖Z‖_F²`, summed over rows by the caller) |
//! | 4 … 4+T | Gram | with [`VocabTermsConfig::gram_block`] `= T`: row `i mod T` of `Z_b·Z_bᵀ`, the Gram matrix of the `T` consecutive rows of sample `b = i / T` ([`gram_matrices`]) |
//!
//! Why fused: composed from tensor ops, each term is a chain of five or six passes that each
//! write a fresh `[N, V]` tensor (max, subtract, exp, sum, log, multiply), and autodiff keeps
//! several of them for the backward — for GPT-2 at 4 × 128 tokens each is 100 MB. Here the
//! forward keeps only six numbers per row, and the backward writes `∂L/∂z` once, recomputing
//! the probabilities from the logits in the same pass. Masks and reductions stay outside:
//! callers weight the per-row columns with ordinary `[N]` tensor ops.
//!
//! The Gram matrices are here, not in a separate op, for the memory of BA-LoRA's per-sample
//! SVD term: a second op holding the logits would keep the backward from writing `∂L/∂z` over
//! them, and its own `[N, V]` gradient would then be summed with this one — two extra `[N, V]`
//! buffers (200 MB for SmolLM2 at 4 × 128 tokens). Fused, the backward adds each sample's
//! `(∂G_b + ∂G_bᵀ)·Z_b` (one `[T, V]` buffer, reused) into the same in-place gradient.
//!
//! On flex (f32, f64) this runs as a Burn backend extension with a hand-written backward; on
//! other backends, and for other dtypes, [`vocab_terms`] composes the same terms from tensor
//! ops ([`vocab_terms_composed`], also the oracle of the tests).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::flex::{Floats, exact, on_flex, rows_of, tensor_from};
use crate::gemm::{Scalar, View, matmul_into};
use crate::rows::{COLUMNS, RowSpec, RowStats, backward_row, forward_row, top_k_indices};

/// Which terms to compute and their constants.
#[derive(Debug, Clone, PartialEq)]
pub struct VocabTermsConfig {
    /// Per-row target class of the cross-entropy; a negative entry (or `None` for all rows)
    /// gives the row no cross-entropy.
    pub targets: Option<Arc<[i64]>>,
    /// Temperature τ of the consistency KL (used only with a teacher).
    pub temperature: f64,
    /// Whether to compute the entropy column.
    pub entropy: bool,
    /// `ε` inside the entropy's log (0: the exact `log p`).
    pub entropy_eps: f64,
    /// Entropy over each row's `k` largest logits (0: the whole row).
    pub entropy_top_k: usize,
    /// Whether to compute the `Σ z²` column.
    pub square_sum: bool,
    /// `T > 0`: the rows are samples of `T` consecutive rows each, and the output carries each
    /// sample's Gram matrix `Z_b·Z_bᵀ` in `T` more columns ([`gram_matrices`] reads them).
    /// 0: no Gram matrices.
    pub gram_block: usize,
}

impl Default for VocabTermsConfig {
    fn default() -> Self {
        Self {
            targets: None,
            temperature: 1.0,
            entropy: false,
            entropy_eps: 0.0,
            entropy_top_k: 0,
            square_sum: false,
            gram_block: 0,
        }
    }
}

impl VocabTermsConfig {
    fn spec(&self, vocab: usize, teacher: bool) -> RowSpec {
        RowSpec {
            inv_tau: 1.0 / self.temperature,
            teacher,
            entropy: self.entropy,
            entropy_eps: self.entropy_eps,
            top_k: if self.entropy_top_k < vocab {
                self.entropy_top_k
            } else {
                0
            },
            square_sum: self.square_sum,
        }
    }

    /// Columns of the output: the four terms, then the Gram rows.
    pub fn width(&self) -> usize {
        COLUMNS + self.gram_block
    }

    fn target(&self, row: usize) -> Option<usize> {
        let t = *self.targets.as_ref()?.get(row)?;
        usize::try_from(t).ok()
    }

    fn check(&self, n: usize, v: usize) {
        if let Some(t) = &self.targets {
            assert_eq!(t.len(), n, "vocab_terms: {} targets for {n} rows", t.len());
            assert!(
                t.iter().all(|&y| y < v as i64),
                "vocab_terms: a target is outside the vocabulary of {v}"
            );
        }
        assert!(
            self.temperature > 0.0,
            "vocab_terms: temperature must be > 0"
        );
        assert!(
            self.gram_block == 0 || n.is_multiple_of(self.gram_block),
            "vocab_terms: {n} rows are not whole samples of {} rows",
            self.gram_block
        );
    }
}

/// `[N, 4]`: per-row cross-entropy, `KL(teacher ‖ student)` at τ, entropy and `Σ z²` (see the module
/// docs), then the Gram rows when [`VocabTermsConfig::gram_block`] is set. Columns that are
/// not requested are 0.
///
/// # Shapes
///
/// - `logits`: `[N, V]`
/// - `teacher`: `[N, V]` (detached: no gradient flows into it)
/// - output: `[N, 4 + gram_block]`
///
/// # Panics
///
/// If the shapes differ, a target is ≥ V, there are not N targets, τ ≤ 0, or N is not a
/// multiple of `gram_block`.
pub fn vocab_terms(
    logits: Tensor<2>,
    teacher: Option<Tensor<2>>,
    config: &VocabTermsConfig,
) -> Tensor<2> {
    let [n, v] = logits.dims();
    if let Some(t) = &teacher {
        assert_eq!(
            t.dims(),
            [n, v],
            "vocab_terms: teacher and student shapes differ"
        );
    }
    config.check(n, v);
    // every term is reduced in f32 over half-precision logits (docs/methods.md)
    let dtype = crate::training_dtype(logits.dtype());
    let logits = logits.cast(dtype);
    let teacher = teacher.map(|t| t.cast(dtype));
    let fused = on_flex(&logits)
        && matches!(logits.dtype(), DType::F32 | DType::F64)
        && teacher.as_ref().is_none_or(|t| t.dtype() == logits.dtype());
    if !fused {
        return vocab_terms_composed(logits, teacher, config);
    }
    // extension ops take no optional tensors: without a teacher the logits stand in, unread
    let has_teacher = teacher.is_some();
    let teacher = teacher.unwrap_or_else(|| logits.clone()).detach();
    Tensor::from_dispatch(<Dispatch as VocabBackend>::vocab_terms(
        logits.into_dispatch(),
        teacher.into_dispatch(),
        has_teacher,
        config.clone(),
    ))
}

/// The `[B, T, T]` Gram matrices in the output of [`vocab_terms`] run with `gram_block = T`.
pub fn gram_matrices(terms: Tensor<2>, block: usize) -> Tensor<3> {
    let [n, _] = terms.dims();
    terms
        .narrow(1, COLUMNS, block)
        .reshape([n / block, block, block])
}

/// The same output as [`vocab_terms`], composed from tensor ops (every backend and dtype;
/// the reference of the fused kernel).
pub fn vocab_terms_composed(
    logits: Tensor<2>,
    teacher: Option<Tensor<2>>,
    config: &VocabTermsConfig,
) -> Tensor<2> {
    let [n, v] = logits.dims();
    config.check(n, v);
    let device = logits.device();
    let dtype = logits.dtype();
    let zeros = || Tensor::<2>::zeros([n, 1], (&device, dtype));
    let gram = (config.gram_block > 0).then(|| {
        let t = config.gram_block;
        let z = logits.clone().reshape([n / t, t, v]);
        z.clone().matmul(z.swap_dims(1, 2)).reshape([n, t])
    });
    let square_sum = if config.square_sum {
        logits.clone().powi_scalar(2).sum_dim(1)
    } else {
        zeros()
    };
    let ce = match &config.targets {
        Some(targets) => {
            let ids: Vec<i64> = targets.iter().map(|&y| y.max(0)).collect();
            let keep: Vec<f64> = targets.iter().map(|&y| f64::from(y >= 0)).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
            let keep = Tensor::<2>::from_data(TensorData::new(keep, [n, 1]), (&device, dtype));
            log_softmax(logits.clone(), 1).gather(1, ids).neg() * keep
        }
        None => zeros(),
    };
    let kl = match teacher {
        Some(t) => {
            let tau = config.temperature;
            let log_q = log_softmax(t.detach().div_scalar(tau), 1);
            let log_p = log_softmax(logits.clone().div_scalar(tau), 1);
            (log_q.clone().exp() * (log_q - log_p)).sum_dim(1)
        }
        None => zeros(),
    };
    let entropy = if config.entropy {
        let k = config.entropy_top_k;
        let z = if k > 0 && k < v {
            logits.topk(k, 1)
        } else {
            logits
        };
        let log_p = log_softmax(z, 1);
        let p = log_p.clone().exp();
        let log_term = if config.entropy_eps > 0.0 {
            p.clone().add_scalar(config.entropy_eps).log()
        } else {
            log_p
        };
        (p * log_term).sum_dim(1).neg()
    } else {
        zeros()
    };
    let mut columns = vec![ce, kl, entropy, square_sum];
    columns.extend(gram);
    Tensor::cat(columns, 1)
}

/// The fused kernel as a Burn backend extension (flex only; [`vocab_terms`] routes).
#[backend_extension(Flex, Autodiff)]
pub trait VocabBackend: Backend {
    /// See [`vocab_terms`].
    fn vocab_terms(
        logits: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        has_teacher: bool,
        config: VocabTermsConfig,
    ) -> FloatTensor<Self>;
}

/// The forward's output and what the backward needs.
struct Forward {
    out: FlexTensor,
    stats: Vec<RowStats>,
    top: Vec<u32>,
}

fn forward_typed<E: Scalar>(
    z: &[E],
    t: Option<&[E]>,
    n: usize,
    v: usize,
    config: &VocabTermsConfig,
) -> Forward {
    let spec = config.spec(v, t.is_some());
    let k = spec.top_k;
    let mut top = vec![0u32; if spec.entropy { n * k } else { 0 }];
    let mut out = vec![E::ZERO; n * COLUMNS];
    let mut stats = vec![RowStats::default(); n];
    let rows = (0..n)
        .into_par_iter()
        .zip(out.par_chunks_mut(COLUMNS))
        .zip(stats.par_iter_mut());
    let top_chunks: Vec<&mut [u32]> = if k > 0 && spec.entropy {
        top.chunks_mut(k).collect()
    } else {
        (0..n).map(|_| <&mut [u32]>::default()).collect()
    };
    rows.zip(top_chunks).for_each(|(((i, o), s), tk)| {
        let zi = &z[i * v..(i + 1) * v];
        let ti = t.map(|t| &t[i * v..(i + 1) * v]);
        if !tk.is_empty() {
            top_k_indices(zi, k, tk);
        }
        let (vals, st) = crate::dispatch!(forward_row(zi, ti, config.target(i), spec, tk));
        for (o, val) in o.iter_mut().zip(vals) {
            *o = E::from_f64(val);
        }
        *s = st;
    });
    let block = config.gram_block;
    let out = if block > 0 {
        with_gram(&out, z, v, block)
    } else {
        out
    };
    Forward {
        out: tensor_from(out, [n, config.width()]),
        stats,
        top,
    }
}

/// `[N, 4 + T]`: each row's four terms, then its row of its sample's Gram matrix `Z_b·Z_bᵀ`.
fn with_gram<E: Scalar>(terms: &[E], z: &[E], v: usize, block: usize) -> Vec<E> {
    let width = COLUMNS + block;
    let n = terms.len() / COLUMNS;
    let mut out = vec![E::ZERO; n * width];
    let mut gram = vec![E::ZERO; block * block];
    for (b, dst) in out.chunks_mut(block * width).enumerate() {
        let zb = View::of_slice(&z[b * block * v..(b + 1) * block * v], block, v);
        matmul_into(&mut gram, false, zb, zb.t(), 1.0);
        for (r, row) in dst.chunks_mut(width).enumerate() {
            let i = b * block + r;
            row[..COLUMNS].copy_from_slice(&terms[i * COLUMNS..(i + 1) * COLUMNS]);
            row[COLUMNS..].copy_from_slice(&gram[r * block..(r + 1) * block]);
        }
    }
    out
}

fn forward(z: &FlexTensor, t: Option<&FlexTensor>, config: &VocabTermsConfig) -> Forward {
    let (n, v) = rows_of(z);
    match (Floats::of(z), t.map(Floats::of)) {
        (Floats::F32(z), Some(Floats::F32(t))) => forward_typed(z, Some(t), n, v, config),
        (Floats::F32(z), None) => forward_typed(z, None, n, v, config),
        (Floats::F64(z), Some(Floats::F64(t))) => forward_typed(z, Some(t), n, v, config),
        (Floats::F64(z), None) => forward_typed(z, None, n, v, config),
        _ => panic!("vocab_terms: the teacher's dtype differs from the student's"),
    }
}

/// `∂L/∂z` written over the logits `z` (a copy of them when their buffer is shared).
/// The forward's per-row results the backward reads.
#[derive(Clone, Copy)]
struct Rows<'a> {
    stats: &'a [RowStats],
    top: &'a [u32],
    config: &'a VocabTermsConfig,
}

fn backward_typed<E: Scalar>(
    mut z: FlexTensor,
    t: Option<&[E]>,
    g: &[f64],
    state: Rows<'_>,
) -> FlexTensor {
    let (_, v) = rows_of(&z);
    let config = state.config;
    let (spec, width, block) = (
        config.spec(v, t.is_some()),
        config.width(),
        config.gram_block,
    );
    let k = spec.top_k;
    let row_grad = |i: usize, row: &mut [E]| {
        let gi: [f64; COLUMNS] = std::array::from_fn(|c| g[width * i + c]);
        let ti = t.map(|t| &t[i * v..(i + 1) * v]);
        let tk = if k > 0 && spec.entropy {
            &state.top[i * k..(i + 1) * k]
        } else {
            &[]
        };
        crate::dispatch!(backward_row(
            row,
            ti,
            config.target(i),
            spec,
            &state.stats[i],
            tk,
            gi
        ));
    };
    // copy-on-write: in place when autodiff held the only reference to the logits
    let dz = z.storage_mut::<E>();
    if block == 0 {
        dz.par_chunks_mut(v)
            .enumerate()
            .for_each(|(i, row)| row_grad(i, row));
        return z;
    }
    // a sample's Gram gradient (∂G_b + ∂G_bᵀ)·Z_b reads all its logits: form it before the
    // sample's rows are overwritten, one sample at a time into one reused buffer
    let mut gram_grad = vec![E::ZERO; block * v];
    for (b, zb) in dz.chunks_mut(block * v).enumerate() {
        let dg = |r: usize, s: usize| g[(b * block + r) * width + COLUMNS + s];
        let sym: Vec<E> = (0..block * block)
            .map(|x| {
                let (r, s) = (x / block, x % block);
                E::from_f64(dg(r, s) + dg(s, r))
            })
            .collect();
        matmul_into(
            &mut gram_grad,
            false,
            View::of_slice(&sym, block, block),
            View::of_slice(zb, block, v),
            1.0,
        );
        zb.par_chunks_mut(v)
            .zip(gram_grad.par_chunks(v))
            .enumerate()
            .for_each(|(r, (row, extra))| {
                row_grad(b * block + r, row);
                for (d, &x) in row.iter_mut().zip(extra) {
                    *d += x;
                }
            });
    }
    z
}

/// What the backward keeps: the logits (already held by autodiff for the producing op, so no
/// extra memory), the teacher and six numbers per row.
#[derive(Debug, Clone)]
struct VocabState {
    logits: FlexTensor,
    teacher: Option<FlexTensor>,
    stats: Arc<Vec<RowStats>>,
    top: Arc<Vec<u32>>,
    config: VocabTermsConfig,
}

#[derive(Debug)]
struct VocabBackward;

impl Backward<Flex, 1> for VocabBackward {
    type State = VocabState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let VocabState {
            logits,
            teacher,
            stats,
            top,
            config,
        } = ops.state;
        let g = Floats::of(&g.to_contiguous()).to_f64();
        let rows = Rows {
            stats: &stats,
            top: &top,
            config: &config,
        };
        // the logits buffer becomes the gradient
        let dz = match (logits.dtype(), teacher.as_ref().map(Floats::of)) {
            (DType::F32, Some(Floats::F32(t))) => backward_typed::<f32>(logits, Some(t), &g, rows),
            (DType::F32, None) => backward_typed::<f32>(logits, None, &g, rows),
            (DType::F64, Some(Floats::F64(t))) => backward_typed::<f64>(logits, Some(t), &g, rows),
            (DType::F64, None) => backward_typed::<f64>(logits, None, &g, rows),
            _ => unreachable!("dtypes were checked in the forward"),
        };
        grads.register::<Flex>(parent.id, dz);
    }
}

impl VocabBackend for Flex {
    fn vocab_terms(
        logits: FlexTensor,
        teacher: FlexTensor,
        has_teacher: bool,
        config: VocabTermsConfig,
    ) -> FlexTensor {
        let t = has_teacher.then(|| teacher.to_contiguous());
        forward(&logits.to_contiguous(), t.as_ref(), &config).out
    }
}

impl<C: CheckpointStrategy> VocabBackend for Autodiff<Flex, C> {
    fn vocab_terms(
        logits: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        has_teacher: bool,
        config: VocabTermsConfig,
    ) -> FloatTensor<Self> {
        let teacher = has_teacher.then(|| teacher.primitive().to_contiguous());
        match VocabBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let z = exact(logits.primitive());
                let f = forward(&z, teacher.as_ref(), &config);
                let state = VocabState {
                    logits: z,
                    teacher,
                    stats: Arc::new(f.stats),
                    top: Arc::new(f.top),
                    config,
                };
                prep.finish(state, f.out)
            }
            OpsKind::UnTracked(prep) => {
                let z = logits.primitive().to_contiguous();
                prep.finish(forward(&z, teacher.as_ref(), &config).out)
            }
        }
    }
}
