//! The fused kernels against their tensor-op compositions (values and gradients, f64 on flex)
//! and against finite differences; f32 against f64.

use std::sync::Arc;

use balora_kernels::{
    LowRank, VocabTermsConfig, lora_linear, lora_linear_composed, vocab_terms, vocab_terms_composed,
};
use balora_testkit::{
    assert_grad, f64_device, max_abs_diff, pseudo_random, tensor32, tensor64, values,
};
use burn::tensor::{Device, Tensor};

const N: usize = 6;
const V: usize = 37;

fn logits(seed: u64, scale: f64, device: &Device) -> Tensor<2> {
    let v: Vec<f64> = pseudo_random(N * V, seed)
        .iter()
        .map(|x| scale * x)
        .collect();
    tensor64(&v, [N, V], device)
}

/// A fixed random weighting of the `[N, 4 (+ T)]` output, so every column and row reaches the
/// loss.
fn weigh(out: Tensor<2>) -> Tensor<1> {
    let [n, width] = out.dims();
    let w = pseudo_random(n * width, 99);
    (out * tensor64(&w, [n, width], &f64_device())).sum()
}

fn configs() -> Vec<(&'static str, VocabTermsConfig, bool)> {
    let targets: Arc<[i64]> = Arc::from(vec![3, -100, 0, 36, 12, -1]);
    let ce = VocabTermsConfig {
        targets: Some(targets.clone()),
        ..VocabTermsConfig::default()
    };
    vec![
        ("cross-entropy, ignored rows", ce.clone(), false),
        (
            "paper: CE + KL τ=1 + entropy ε=1e-10",
            VocabTermsConfig {
                entropy: true,
                entropy_eps: 1e-10,
                ..ce.clone()
            },
            true,
        ),
        (
            "iclr2026: KL τ=2 + top-5 entropy",
            VocabTermsConfig {
                temperature: 2.0,
                entropy: true,
                entropy_top_k: 5,
                ..ce.clone()
            },
            true,
        ),
        (
            "entropy ε=0 alone",
            VocabTermsConfig {
                entropy: true,
                ..VocabTermsConfig::default()
            },
            false,
        ),
        (
            "KL τ=0.5 alone",
            VocabTermsConfig {
                temperature: 0.5,
                ..VocabTermsConfig::default()
            },
            true,
        ),
        (
            "entropy ε=1e-3, top-k ≥ V (full row)",
            VocabTermsConfig {
                entropy: true,
                entropy_eps: 1e-3,
                entropy_top_k: 100,
                ..ce.clone()
            },
            true,
        ),
        (
            "paper with the SVD term: CE + KL + entropy + Σz² + Gram of 2 samples of 3 rows",
            VocabTermsConfig {
                entropy: true,
                entropy_eps: 1e-10,
                square_sum: true,
                gram_block: 3,
                ..ce
            },
            true,
        ),
        (
            "Gram matrices alone, 3 samples of 2 rows",
            VocabTermsConfig {
                gram_block: 2,
                ..VocabTermsConfig::default()
            },
            false,
        ),
    ]
}

#[test]
fn fused_vocab_terms_equal_the_composition_in_value_and_gradient() {
    let device = f64_device();
    for (what, config, with_teacher) in configs() {
        let z = logits(1, 3.0, &device).require_grad();
        let t = with_teacher.then(|| logits(2, 3.0, &device));
        let fused = vocab_terms(z.clone(), t.clone(), &config);
        let composed = vocab_terms_composed(z.clone(), t, &config);
        let dv = max_abs_diff(fused.clone(), composed.clone());
        assert!(dv < 1e-12, "{what}: values differ by {dv:e}");
        let g1 = z.grad(&weigh(fused).backward()).expect("fused gradient");
        let g2 = z
            .grad(&weigh(composed).backward())
            .expect("composed gradient");
        let dg = max_abs_diff(g1, g2);
        assert!(dg < 1e-12, "{what}: gradients differ by {dg:e}");
    }
}

#[test]
fn fused_vocab_terms_pass_finite_difference_checks() {
    let device = f64_device();
    for (what, config, with_teacher) in configs() {
        let t = with_teacher.then(|| logits(2, 3.0, &device));
        assert_grad(
            what,
            |z| weigh(vocab_terms(z, t.clone(), &config)),
            logits(1, 3.0, &device),
            1e-6,
        );
    }
}

#[test]
fn fused_vocab_terms_in_f32_match_f64() {
    let device = f64_device();
    for (what, config, with_teacher) in configs() {
        let z64 = logits(3, 8.0, &device);
        let t64 = with_teacher.then(|| logits(4, 8.0, &device));
        let z32 = tensor32(&values(z64.clone()), [N, V], &device).require_grad();
        let t32 = t64.clone().map(|t| tensor32(&values(t), [N, V], &device));
        let exact = values(vocab_terms(z64, t64, &config));
        let out = vocab_terms(z32.clone(), t32, &config);
        let got = values(out.clone());
        for (a, b) in got.iter().zip(&exact) {
            assert!(
                (a - b).abs() < 2e-5 * b.abs().max(1.0),
                "{what}: {a} vs {b}"
            );
        }
        let g = values(z32.grad(&out.sum().backward()).expect("gradient"));
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{what}: non-finite gradient"
        );
    }
}

#[test]
fn cross_entropy_of_a_large_vocabulary_is_exact_in_f32() {
    // 50k logits: the lane-accumulated sums and the polynomial exp stay at f32 precision
    let device = Device::flex().autodiff();
    let (n, v) = (3, 50_257);
    let raw: Vec<f64> = pseudo_random(n * v, 7).iter().map(|x| 10.0 * x).collect();
    let targets: Arc<[i64]> = Arc::from(vec![0, 25_000, 50_256]);
    let config = VocabTermsConfig {
        targets: Some(targets),
        entropy: true,
        ..VocabTermsConfig::default()
    };
    let got = values(vocab_terms(tensor32(&raw, [n, v], &device), None, &config));
    let exact = values(vocab_terms_composed(
        tensor64(&raw, [n, v], &device),
        None,
        &config,
    ));
    for (a, b) in got.iter().zip(&exact) {
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
}

const IN: usize = 7;
const OUT: usize = 5;
const R: usize = 3;
const ROWS: usize = 4;

fn t64<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<D> {
    let n = shape.iter().product();
    tensor64(&pseudo_random(n, seed), shape, &f64_device())
}

#[test]
fn fused_lora_linear_equals_the_composition_for_every_input() {
    for (what, with_bias, separate_input) in [
        ("no bias, shared input", false, false),
        ("bias, shared input", true, false),
        ("bias, dropout input", true, true),
    ] {
        let x = t64([ROWS, IN], 1).require_grad();
        let w = t64([OUT, IN], 2);
        let bias = with_bias.then(|| t64([OUT], 3));
        let a = t64([R, IN], 4).require_grad();
        let b = t64([OUT, R], 5).require_grad();
        // each graph gets its own dropout-like op: a backward consumes its tape
        let lr = || LowRank {
            input: if separate_input {
                x.clone().mul_scalar(1.7)
            } else {
                x.clone()
            },
            a: a.clone(),
            b: b.clone(),
            scale: 0.75,
        };
        let weigh = |y: Tensor<2>| (y * t64([ROWS, OUT], 9)).sum();
        let fused = lora_linear(x.clone(), w.clone(), bias.clone(), Some(lr()));
        let composed = lora_linear_composed(x.clone(), w, bias, Some(lr()));
        assert!(
            max_abs_diff(fused.clone(), composed.clone()) < 1e-13,
            "{what}: values"
        );
        let gf = weigh(fused).backward();
        let gc = weigh(composed).backward();
        for (name, p) in [("x", &x), ("A", &a), ("B", &b)] {
            let d = max_abs_diff(p.grad(&gf).expect("fused"), p.grad(&gc).expect("composed"));
            assert!(d < 1e-12, "{what}: ∂{name} differs by {d:e}");
        }
    }
}

#[test]
fn fused_lora_linear_passes_finite_difference_checks() {
    let w = t64([OUT, IN], 2);
    let bias = Some(t64([OUT], 3));
    let a = t64([R, IN], 4);
    let b = t64([OUT, R], 5);
    let x = t64([ROWS, IN], 1);
    let weigh = |y: Tensor<2>| (y.clone() * y * t64([ROWS, OUT], 9)).sum();
    let lr = |x: Tensor<2>, a: Tensor<2>, b: Tensor<2>| LowRank {
        input: x.clone().mul_scalar(0.5),
        a,
        b,
        scale: 1.5,
    };
    assert_grad(
        "∂x",
        |x| {
            weigh(lora_linear(
                x.clone(),
                w.clone(),
                bias.clone(),
                Some(lr(x, a.clone(), b.clone())),
            ))
        },
        x.clone(),
        1e-7,
    );
    assert_grad(
        "∂A",
        |a| {
            weigh(lora_linear(
                x.clone(),
                w.clone(),
                bias.clone(),
                Some(lr(x.clone(), a, b.clone())),
            ))
        },
        a.clone(),
        1e-7,
    );
    assert_grad(
        "∂B",
        |b| {
            weigh(lora_linear(
                x.clone(),
                w.clone(),
                bias.clone(),
                Some(lr(x.clone(), a.clone(), b)),
            ))
        },
        b.clone(),
        1e-7,
    );
    assert_grad(
        "∂x, frozen layer",
        |x| weigh(lora_linear(x, w.clone(), bias.clone(), None)),
        x.clone(),
        1e-7,
    );
}

#[test]
fn frozen_linear_reads_a_transposed_weight_view_without_a_copy_and_in_f32() {
    let device = f64_device();
    // a weight given as the transpose of an [in, out] tensor: strided, as models hold tied heads
    let w_t = t64([IN, OUT], 2);
    let x = t64([ROWS, IN], 1);
    let fused = lora_linear(x.clone(), w_t.clone().transpose(), None, None);
    let composed = lora_linear_composed(x.clone(), w_t.clone().transpose(), None, None);
    assert!(max_abs_diff(fused, composed.clone()) < 1e-13);
    let x32 = tensor32(&values(x), [ROWS, IN], &device);
    let w32 = tensor32(&values(w_t), [IN, OUT], &device).transpose();
    let got = values(lora_linear(x32, w32, None, None));
    for (a, b) in got.iter().zip(values(composed)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn fused_matmul_matches_burn_and_finite_differences() {
    let a = t64([ROWS, IN], 1);
    let b = t64([IN, OUT], 2);
    let weigh = |y: Tensor<2>| (y.clone() * y * t64([ROWS, OUT], 9)).sum();
    let fused = balora_kernels::matmul(a.clone(), b.clone());
    assert!(max_abs_diff(fused, a.clone().matmul(b.clone())) < 1e-13);
    assert_grad(
        "∂a",
        |a| weigh(balora_kernels::matmul(a, b.clone())),
        a.clone(),
        1e-7,
    );
    assert_grad(
        "∂b",
        |b| weigh(balora_kernels::matmul(a.clone(), b)),
        b.clone(),
        1e-7,
    );
    // a transposed (strided) operand
    let bt = t64([OUT, IN], 3);
    let fused = balora_kernels::matmul(a.clone(), bt.clone().transpose());
    assert!(max_abs_diff(fused, a.matmul(bt.transpose())) < 1e-13);
}

#[test]
fn fused_activations_equal_burn_in_value_and_gradient() {
    use balora_kernels::{Activation, activation, activation_composed};
    for kind in [Activation::GeluTanh, Activation::Silu] {
        // a wide range, including the saturated tails of tanh and the sigmoid
        let raw: Vec<f64> = pseudo_random(3 * 41, 5).iter().map(|v| 12.0 * v).collect();
        let x = tensor64(&raw, [3, 41], &f64_device()).require_grad();
        let weigh = |y: Tensor<2>| (y * t64([3, 41], 8)).sum();
        let fused = activation(x.clone(), kind);
        let composed = activation_composed(x.clone(), kind);
        assert!(
            max_abs_diff(fused.clone(), composed.clone()) < 1e-12,
            "{kind:?}: values"
        );
        let gf = x.grad(&weigh(fused).backward()).expect("fused");
        let gc = x.grad(&weigh(composed).backward()).expect("composed");
        assert!(max_abs_diff(gf, gc) < 1e-12, "{kind:?}: gradients");
        let small = tensor64(&pseudo_random(12, 6), [3, 4], &f64_device());
        assert_grad(
            &format!("{kind:?}"),
            |x| (activation(x, kind) * t64([3, 4], 7)).sum(),
            small,
            1e-7,
        );
        let x32 = tensor32(&raw, [3, 41], &f64_device());
        let got = values(activation(x32, kind));
        for (a, b) in got.iter().zip(values(activation_composed(
            tensor64(&raw, [3, 41], &f64_device()),
            kind,
        ))) {
            assert!(
                (a - b).abs() < 1e-5 * b.abs().max(1.0),
                "{kind:?}: f32 {a} vs {b}"
            );
        }
    }
}

/// The exact GELU: flex's op equals the erf composition in value and gradient (f64), both
/// pass a finite-difference check, and its derivative is the exact one, not the tanh
/// approximation's (which differs by up to 8e-4 on `[−4, 4]`).
#[test]
fn exact_gelu_has_the_exact_derivative() {
    use balora_kernels::{gelu, gelu_composed};
    let raw: Vec<f64> = pseudo_random(3 * 41, 5).iter().map(|v| 8.0 * v).collect();
    let x = tensor64(&raw, [3, 41], &f64_device()).require_grad();
    let weigh = |y: Tensor<2>| (y * t64([3, 41], 8)).sum();
    let (flex, composed) = (gelu(x.clone()), gelu_composed(x.clone()));
    let v = max_abs_diff(flex.clone(), composed.clone());
    assert!(v < 1e-12, "flex vs composed value: {v:e}");
    let gf = x.grad(&weigh(flex).backward()).expect("flex");
    let gc = x.grad(&weigh(composed).backward()).expect("composed");
    let d = max_abs_diff(gf.clone(), gc);
    // (flex's erf is a rational approximation good to ~1e-9 in f64: 2.9e-9 here)
    assert!(d < 1e-8, "flex vs composed gradient: {d:e}");
    // d/dx = Φ(x) + x·φ(x), by hand
    let w = values(t64([3, 41], 8));
    for ((x, g), w) in raw.iter().zip(values(gf)).zip(w) {
        let phi = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let cdf = 0.5
            * (1.0
                + values(tensor64(&[x / std::f64::consts::SQRT_2], [1], &f64_device()).erf())[0]);
        assert!((g - w * (cdf + x * phi)).abs() < 1e-8, "x = {x}: {g}");
    }
    let small = tensor64(&pseudo_random(12, 6), [3, 4], &f64_device());
    for (name, f) in [
        ("gelu", gelu::<2> as fn(_) -> _),
        ("gelu_composed", gelu_composed::<2>),
    ] {
        assert_grad(name, |x| (f(x) * t64([3, 4], 7)).sum(), small.clone(), 1e-7);
    }
}

#[test]
fn fused_gram_matches_the_composition_and_finite_differences() {
    let z = tensor64(&pseudo_random(2 * 3 * 5, 11), [2, 3, 5], &f64_device());
    let w = tensor64(&pseudo_random(2 * 3 * 3, 12), [2, 3, 3], &f64_device());
    let fused = balora_kernels::gram(z.clone());
    let composed = z.clone().matmul(z.clone().swap_dims(1, 2));
    assert!(max_abs_diff(fused, composed) < 1e-13);
    assert_grad(
        "∂Z of Σ W⊙ZZᵀ",
        |z| (balora_kernels::gram(z) * w.clone()).sum(),
        z,
        1e-7,
    );
}

#[test]
fn one_row_products_take_the_dot_path_and_agree() {
    // decoding: x [rows, in] · Wᵀ with W [out, in] row-major, in f64 and f32, with accumulation;
    // a batch of 16 sequences is still the dot path, and 300 outputs span two column chunks
    for (rows, out) in [(1, 19), (3, 19), (16, 300)] {
        let x = t64([rows, 37], 21);
        let w = t64([out, 37], 22);
        let fused = lora_linear(x.clone(), w.clone(), Some(t64([out], 23)), None);
        let composed = lora_linear_composed(x.clone(), w.clone(), Some(t64([out], 23)), None);
        assert!(max_abs_diff(fused, composed.clone()) < 1e-13);
        let x32 = tensor32(&values(x), [rows, 37], &f64_device());
        let w32 = tensor32(&values(w), [out, 37], &f64_device());
        let b32 = tensor32(&values(t64([out], 23)), [out], &f64_device());
        for (a, b) in values(lora_linear(x32, w32, Some(b32), None))
            .iter()
            .zip(values(composed))
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
