//! Finite-difference gradient checks (f64, flex) of every term w.r.t. the student logits, and
//! the degenerate inputs of docs/methods.md, "BA-LoRA regularisers" (no NaN, a reported skip).

use balora_losses::{
    BaLoraLoss, KlReduction, MaskMode, RegularizerConfig, SvdObjective, Task, TokenMask, nlg, nlu,
    task,
};
use balora_testkit::{assert_grad, f64_device, pseudo_random, tensor64, values};
use burn::tensor::{DType, Tensor};

const TOL: f64 = 1e-6;

#[test]
fn nlu_terms_have_exact_gradients() {
    let d = f64_device();
    let f = tensor64(&pseudo_random(4 * 3, 1), [4, 3], &d);
    let p = tensor64(&pseudo_random(4 * 3, 2), [4, 3], &d);
    assert_grad(
        "NLU consistency",
        |f| nlu::consistency(f, p.clone()).unwrap(),
        f.clone(),
        TOL,
    );
    assert_grad(
        "NLU diversity",
        |f| nlu::diversity(f).unwrap().unwrap(),
        f.clone(),
        TOL,
    );
    for obj in [
        SvdObjective::TopKSum,
        SvdObjective::RatioToSum,
        SvdObjective::RatioToFrobenius,
    ] {
        assert_grad(
            "NLU svd",
            |f| nlu::svd(f, 1, obj, 1e-10).unwrap(),
            f.clone(),
            TOL,
        );
    }
}

fn logits(seed: u64) -> Tensor<3> {
    tensor64(&pseudo_random(2 * 4 * 6, seed), [2, 4, 6], &f64_device()).mul_scalar(2.0)
}

const LABELS: [i64; 8] = [-100, -100, 3, 1, -100, 2, 5, -100];

#[test]
fn nlg_terms_have_exact_gradients() {
    let (f, p) = (logits(3), logits(4));
    let full = TokenMask::new(&LABELS, [2, 4], MaskMode::None, &f).unwrap();
    let resp = TokenMask::new(&LABELS, [2, 4], MaskMode::ResponseUnshifted, &f).unwrap();
    assert_grad(
        "KL batch-sum",
        |f| {
            nlg::consistency(f, p.clone(), &full, KlReduction::BatchSum, 1.0)
                .unwrap()
                .unwrap()
        },
        f.clone(),
        TOL,
    );
    assert_grad(
        "KL token-mean τ=2",
        |f| {
            nlg::consistency(f, p.clone(), &resp, KlReduction::TokenMean, 2.0)
                .unwrap()
                .unwrap()
        },
        f.clone(),
        TOL,
    );
    assert_grad(
        "entropy ε",
        |f| nlg::diversity(f, &full, 0, 1e-10).unwrap().unwrap(),
        f.clone(),
        TOL,
    );
    assert_grad(
        "top-3 entropy",
        |f| nlg::diversity(f, &resp, 3, 0.0).unwrap().unwrap(),
        f.clone(),
        TOL,
    );
    let paper = RegularizerConfig::paper(Task::Nlg).with_svd_k(2);
    assert_grad(
        "per-sample svd",
        |f| nlg::svd(f, &full, &paper).unwrap().unwrap(),
        f.clone(),
        TOL,
    );
    let iclr = RegularizerConfig::iclr2026().with_svd_k(2);
    assert_grad(
        "token-matrix svd",
        |f| nlg::svd(f, &resp, &iclr).unwrap().unwrap(),
        f.clone(),
        TOL,
    );
    assert_grad(
        "causal LM CE",
        |f| task::causal_lm_loss(f, &[0, 1, 2, 3, -100, 5, 1, 2]).unwrap(),
        f,
        TOL,
    );
}

#[test]
fn randomized_token_matrix_svd_has_exact_gradients_at_low_rank() {
    // 8 tokens × V = 40 of rank 3, threshold 16 ⇒ randomized path with q = k + 5 ≥ rank.
    let d = f64_device();
    let a = tensor64(&pseudo_random(8 * 3, 5), [8, 3], &d);
    let b = tensor64(&pseudo_random(3 * 40, 6), [3, 40], &d);
    let z: Tensor<3> = a.matmul(b).reshape([2, 4, 40]);
    let mask = TokenMask::new(&[1; 8], [2, 4], MaskMode::ResponseUnshifted, &z).unwrap();
    let c = RegularizerConfig::iclr2026()
        .with_svd_k(2)
        .with_randomized_svd_threshold(Some(16));
    let exact = RegularizerConfig::iclr2026()
        .with_svd_k(2)
        .with_randomized_svd_threshold(None);
    let fast_v = values(nlg::svd(z.clone(), &mask, &c).unwrap().unwrap())[0];
    let exact_v = values(nlg::svd(z.clone(), &mask, &exact).unwrap().unwrap())[0];
    assert!((fast_v - exact_v).abs() < 1e-10, "{fast_v} vs {exact_v}");
    assert_grad(
        "randomized svd",
        |z| nlg::svd(z, &mask, &c).unwrap().unwrap(),
        z,
        TOL,
    );
}

#[test]
fn degenerate_inputs_skip_instead_of_nan() {
    let d = f64_device();
    // NLU with B = 1: diversity skipped and reported
    let one = tensor64(&[1.0, 2.0, 3.0], [1, 3], &d);
    let loss = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlu), 10).unwrap();
    let zero = || Tensor::<1>::zeros([1], (&d, DType::F64));
    let out = loss.nlu(0, zero(), one.clone(), || one.clone()).unwrap();
    assert!(out.terms.diversity.is_none());
    assert!(out.terms.skipped[0].contains("B ≥ 2"));
    assert!(values(out.loss)[0].is_finite());
    // NLG, all positions masked: every iclr term skipped, loss finite, gradient finite
    let f = logits(7).require_grad();
    let loss = BaLoraLoss::new(RegularizerConfig::iclr2026(), 10).unwrap();
    let out = loss
        .nlg(5, zero(), f.clone(), &[-100; 8], || logits(8))
        .unwrap();
    assert!(
        out.terms.consistency.is_none() && out.terms.diversity.is_none() && out.terms.svd.is_none()
    );
    assert_eq!(out.terms.skipped.len(), 3, "{:?}", out.terms.skipped);
    // N = 1 masked token: svd skipped, others finite
    let mut labels = [-100; 8];
    labels[2] = 4;
    let out = loss
        .nlg(500, zero(), f.clone(), &labels, || logits(8))
        .unwrap();
    assert!(out.terms.svd.is_none() && out.terms.consistency.is_some());
    let total = values(out.loss.clone())[0];
    assert!(total.is_finite());
    // k ≥ rank: the ratio saturates at −1 without NaN, gradients finite
    let paper = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg).with_svd_k(50), 10).unwrap();
    let out = paper
        .nlg(0, zero(), f.clone(), &[0; 8], || logits(8))
        .unwrap();
    let g = f.grad(&out.loss.backward()).unwrap();
    assert!(values(g).iter().all(|v| v.is_finite()));
    // the causal LM loss of an all-ignored batch is 0, not NaN
    let ce = task::causal_lm_loss(logits(9), &[-100; 8]).unwrap();
    assert_eq!(values(ce)[0], 0.0);
}

#[test]
fn terms_are_not_computed_when_their_lambda_is_zero() {
    let d = f64_device();
    let loss = BaLoraLoss::new(RegularizerConfig::iclr2026(), 1000).unwrap();
    let zero = Tensor::<1>::zeros([1], (&d, DType::F64));
    // step 0 of the two-phase schedule: λ2 = λ3 = 0
    let out = loss.nlg(0, zero, logits(1), &LABELS, || logits(2)).unwrap();
    assert!(out.terms.consistency.is_some());
    assert!(out.terms.diversity.is_none() && out.terms.svd.is_none());
    assert!(out.terms.skipped.is_empty());
    // λ1 = 0: the teacher is never asked for
    let c = RegularizerConfig {
        lambda_consistency: 0.0,
        ..RegularizerConfig::paper(Task::Nlg)
    };
    let loss = BaLoraLoss::new(c, 10).unwrap();
    let zero = Tensor::<1>::zeros([1], (&d, DType::F64));
    let out = loss
        .nlg(0, zero, logits(1), &LABELS, || {
            panic!("teacher must not run")
        })
        .unwrap();
    assert!(out.terms.consistency.is_none());
}

/// The whole BA-LoRA NLG loss as the trainer calls it: CE, KL, entropy and the per-sample SVD
/// term in one fused pass (the SVD term's Gram matrices come out of it), λ's raised so every
/// term shapes the gradient.
#[test]
fn fused_nlg_causal_lm_loss_has_exact_gradients() {
    let labels = [0, 1, 2, 3, -100, 5, 1, 2];
    for (what, config) in [
        ("paper", RegularizerConfig::paper(Task::Nlg).with_svd_k(2)),
        ("iclr2026", RegularizerConfig::iclr2026().with_svd_k(2)),
    ] {
        let c = RegularizerConfig {
            lambda_consistency: 0.3,
            lambda_diversity: 0.2,
            lambda_svd: 0.5,
            ..config
        };
        let loss = BaLoraLoss::new(c, 10).unwrap();
        assert_grad(
            what,
            |f| {
                let out = loss.nlg_causal_lm(9, f, &labels, || logits(2)).unwrap();
                assert!(out.terms.svd.is_some() && out.terms.skipped.is_empty());
                out.loss
            },
            logits(1),
            TOL,
        );
    }
}
