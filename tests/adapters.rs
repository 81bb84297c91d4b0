//! `LoraLinear` on every backend: exactness of the starting point, PiSSA, merge, the teacher,
//! gradients (finite differences in f64 on flex) and wgpu agreement with flex.

use balora::adapters::{
    AdapterSlots, InitMode, LoraConfig, LoraLinear, TargetModules, inject, merge_all, teacher,
    unmerge_all,
};
use balora::burn::module::Module;
use balora::burn::tensor::{DType, Device, Tensor};
use balora_testkit::{
    assert_grad, f64_device, max_abs_diff, pseudo_random, tensor32, tensor64, values,
};

const OUT: usize = 6;
const IN: usize = 5;
const R: usize = 3;

fn weight(device: &Device, dtype: DType) -> Tensor<2> {
    let v = pseudo_random(OUT * IN, 1);
    match dtype {
        DType::F64 => tensor64(&v, [OUT, IN], device),
        _ => tensor32(&v, [OUT, IN], device),
    }
}

fn input(device: &Device, dtype: DType) -> Tensor<3> {
    let v = pseudo_random(2 * 3 * IN, 2);
    match dtype {
        DType::F64 => tensor64(&v, [2, 3, IN], device),
        _ => tensor32(&v, [2, 3, IN], device),
    }
}

fn bias(device: &Device, dtype: DType) -> Tensor<1> {
    let v = pseudo_random(OUT, 3);
    match dtype {
        DType::F64 => tensor64(&v, [OUT], device),
        _ => tensor32(&v, [OUT], device),
    }
}

fn config(init: InitMode) -> LoraConfig {
    LoraConfig::new(R, TargetModules::names(["q"]))
        .with_lora_alpha(6.0)
        .with_init(init)
        .with_seed(7)
}

fn adapted(device: &Device, dtype: DType, init: InitMode) -> LoraLinear {
    let mut layer = LoraLinear::new(weight(device, dtype), Some(bias(device, dtype)));
    layer.attach("q", &config(init)).unwrap();
    layer
}

/// Pretend training moved the factors away from their initial values.
fn perturb(layer: &mut LoraLinear) {
    let adapter = layer.adapter_mut().unwrap();
    // new leaves, as an optimizer step leaves them
    let a = adapter.lora_a().val().add_scalar(0.1);
    let b = adapter.lora_b().val().sub_scalar(0.05);
    adapter.set_factors("q", a, b).unwrap();
}

#[test]
fn gaussian_init_leaves_the_output_exactly_equal_to_the_base_layer() {
    let d = f64_device();
    let base = LoraLinear::new(weight(&d, DType::F64), Some(bias(&d, DType::F64)));
    let layer = adapted(&d, DType::F64, InitMode::Gaussian);
    let x = input(&d, DType::F64);
    assert_eq!(max_abs_diff(layer.forward(x.clone()), base.forward(x)), 0.0);
    // B = 0 and A is Kaiming-uniform within ±1/√in.
    let a = layer.adapter().unwrap();
    assert!(values(a.lora_b().val()).iter().all(|v| *v == 0.0));
    let bound = 1.0 / (IN as f64).sqrt();
    let av = values(a.lora_a().val());
    assert!(av.iter().all(|v| v.abs() <= bound) && av.iter().any(|v| *v != 0.0));
}

#[test]
fn pissa_reconstructs_the_weight_to_1e_10_in_f64() {
    let d = f64_device();
    for init in [InitMode::Pissa, InitMode::PissaFast { niter: 4 }] {
        let layer = adapted(&d, DType::F64, init);
        let a = layer.adapter().unwrap();
        let rebuilt = layer.weight.val() + a.delta_weight();
        let err = max_abs_diff(rebuilt, weight(&d, DType::F64));
        assert!(
            err < 1e-10,
            "{init:?}: W_res + s·B·A differs from W by {err:e}"
        );
        // A and B share the singular values equally: ‖row_i(A)‖ = ‖col_i(B)‖ = √(σ_i/s).
        let row_norms: Vec<f64> = values(a.lora_a().val().powi_scalar(2).sum_dim(1));
        let col_norms: Vec<f64> = values(a.lora_b().val().powi_scalar(2).sum_dim(0));
        for (r, c) in row_norms.iter().zip(&col_norms) {
            assert!((r - c).abs() < 1e-10);
        }
    }
}

#[test]
fn full_pissa_holds_the_top_singular_triplets() {
    // docs/methods.md, "Worked examples" (PiSSA, example P1): W = [[1,2],[3,4],[5,6]], r = 1.
    let d = f64_device();
    let w = tensor64(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2], &d);
    for (alpha, a_abs, b_abs) in [
        (
            1.0,
            [1.9123894, 2.4224546],
            [0.7093896, 1.6195430, 2.5296972],
        ),
        (
            2.0,
            [1.3522635, 1.7129340],
            [0.5016142, 1.1451898, 1.7887660],
        ),
    ] {
        let mut layer = LoraLinear::new(w.clone(), None);
        let cfg = LoraConfig::new(1, TargetModules::names(["l"]))
            .with_lora_alpha(alpha)
            .with_init(InitMode::Pissa);
        layer.attach("l", &cfg).unwrap();
        let ad = layer.adapter().unwrap();
        let close = |got: Vec<f64>, want: &[f64]| {
            got.iter()
                .zip(want)
                .all(|(g, w)| (g.abs() - w).abs() < 1e-6)
        };
        assert!(
            close(values(ad.lora_a().val()), &a_abs),
            "lora_A for α = {alpha}"
        );
        assert!(
            close(values(ad.lora_b().val()), &b_abs),
            "lora_B for α = {alpha}"
        );
        let res = [
            -0.3566293, 0.2815359, -0.0971968, 0.0767307, 0.1622338, -0.1280766,
        ];
        // the reference values come from peft's float32 SVD; ours is float64
        let got = values(layer.weight.val());
        assert!(
            got.iter().zip(res).all(|(g, w)| (g - w).abs() < 5e-6),
            "W_res {got:?}"
        );
    }
}

/// `I − 2·v·vᵀ/‖v‖²`: an orthogonal matrix from any vector.
fn householder(v: &[f64]) -> Vec<f64> {
    let n = v.len();
    let norm2: f64 = v.iter().map(|x| x * x).sum();
    let mut h = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            h[i * n + j] = f64::from(u8::from(i == j)) - 2.0 * v[i] * v[j] / norm2;
        }
    }
    h
}

#[test]
fn fast_pissa_spans_the_exact_top_subspace_under_a_spectral_gap() {
    // W = U·diag(9, 7, 5, 1e-3, ...)·Vᵀ: the randomized sketch must find span(U[:, :3]).
    let d = f64_device();
    let (m, n) = (12, 10);
    let u = tensor64(&householder(&pseudo_random(m, 11)), [m, m], &d);
    let v = tensor64(&householder(&pseudo_random(n, 12)), [n, n], &d);
    let mut s = vec![0.0; m * n];
    for (i, sv) in [9.0, 7.0, 5.0, 1e-3, 5e-4, 1e-4].iter().enumerate() {
        s[i * n + i] = *sv;
    }
    let w = u
        .clone()
        .matmul(tensor64(&s, [m, n], &d))
        .matmul(v.transpose());
    let top = |init| {
        let mut l = LoraLinear::new(w.clone(), None);
        let cfg = LoraConfig::new(3, TargetModules::names(["l"])).with_init(init);
        l.attach("l", &cfg).unwrap();
        l.adapter().unwrap().lora_b().val() // U_r·√S, [m, 3]
    };
    let fast = top(InitMode::PissaFast { niter: 2 });
    // Each exact top singular vector lies in the span of the fast factor's columns: the
    // least-squares residual of projecting it onto that span vanishes.
    let exact = u.narrow(1, 0, 3);
    let gram = fast.clone().transpose().matmul(fast.clone());
    let host = values(gram);
    let inv = invert3(&host);
    let proj = fast
        .clone()
        .matmul(tensor64(&inv, [3, 3], &d))
        .matmul(fast.transpose())
        .matmul(exact.clone());
    let err = values((exact - proj).abs().max()).remove(0);
    assert!(err < 1e-8, "subspace mismatch {err:e}");
}

fn invert3(a: &[f64]) -> Vec<f64> {
    let det = a[0] * (a[4] * a[8] - a[5] * a[7]) - a[1] * (a[3] * a[8] - a[5] * a[6])
        + a[2] * (a[3] * a[7] - a[4] * a[6]);
    let c = |i: usize, j: usize| a[i * 3 + j];
    let adj = [
        c(1, 1) * c(2, 2) - c(1, 2) * c(2, 1),
        c(0, 2) * c(2, 1) - c(0, 1) * c(2, 2),
        c(0, 1) * c(1, 2) - c(0, 2) * c(1, 1),
        c(1, 2) * c(2, 0) - c(1, 0) * c(2, 2),
        c(0, 0) * c(2, 2) - c(0, 2) * c(2, 0),
        c(0, 2) * c(1, 0) - c(0, 0) * c(1, 2),
        c(1, 0) * c(2, 1) - c(1, 1) * c(2, 0),
        c(0, 1) * c(2, 0) - c(0, 0) * c(2, 1),
        c(0, 0) * c(1, 1) - c(0, 1) * c(1, 0),
    ];
    adj.iter().map(|x| x / det).collect()
}

#[test]
fn merge_and_unmerge_round_trip() {
    let d = f64_device();
    for init in [InitMode::Gaussian, InitMode::Pissa] {
        let mut layer = adapted(&d, DType::F64, init);
        perturb(&mut layer);
        let x = input(&d, DType::F64);
        let before_w = layer.weight.val();
        let y = layer.forward(x.clone());
        assert!(layer.merge());
        assert!(!layer.merge(), "merge is idempotent");
        assert!(max_abs_diff(layer.forward(x.clone()), y.clone()) < 1e-12);
        assert!(layer.unmerge());
        assert!(max_abs_diff(layer.weight.val(), before_w) < 1e-12);
        assert!(max_abs_diff(layer.forward(x), y) < 1e-12);
    }
}

#[test]
fn the_teacher_is_the_pretrained_layer_whatever_training_did() {
    let d = f64_device();
    let pretrained = LoraLinear::new(weight(&d, DType::F64), Some(bias(&d, DType::F64)));
    let x = input(&d, DType::F64);
    let want = pretrained.forward(x.clone());
    for init in [
        InitMode::Gaussian,
        InitMode::Pissa,
        InitMode::PissaFast { niter: 2 },
    ] {
        let mut layer = adapted(&d, DType::F64, init);
        perturb(&mut layer);
        let got = layer.teacher().forward(x.clone());
        assert!(max_abs_diff(got.clone(), want.clone()) < 1e-12, "{init:?}");
        assert!(!got.is_require_grad(), "teacher output must not be tracked");
        // ...also when the adapter is merged into the weight.
        layer.merge();
        let got = layer.teacher().forward(x.clone());
        assert!(max_abs_diff(got, want.clone()) < 1e-12, "{init:?} merged");
        // and the adapted output did move
        layer.unmerge();
        assert!(max_abs_diff(layer.forward(x.clone()), want.clone()) > 1e-3);
        // removing the adapter gives the pretrained layer back (PiSSA: W_res + s·B₀·A₀ = W)
        layer.merge();
        assert!(layer.detach_adapter().is_some() && layer.adapter().is_none());
        assert!(
            max_abs_diff(layer.forward(x.clone()), want.clone()) < 1e-12,
            "{init:?}"
        );
    }
}

/// A scalar probe `Σ y ⊙ G` so every output element matters in the gradient.
fn probe(y: Tensor<3>) -> Tensor<1> {
    let dims = y.dims();
    let g = tensor64(&pseudo_random(dims.iter().product(), 9), dims, &y.device());
    (y * g).sum()
}

#[test]
fn gradients_match_finite_differences_for_a_b_and_x() {
    let d = f64_device();
    let w = weight(&d, DType::F64);
    let b0 = bias(&d, DType::F64);
    let x = input(&d, DType::F64);
    let a = tensor64(&pseudo_random(R * IN, 4), [R, IN], &d);
    let b = tensor64(&pseudo_random(OUT * R, 5), [OUT, R], &d);
    let layer_with = |a: Tensor<2>, b: Tensor<2>| {
        let mut l = LoraLinear::new(w.clone(), Some(b0.clone()));
        l.attach_factors("l", a, b, 2.0).unwrap();
        l
    };
    assert_grad(
        "∂/∂lora_A",
        |a| probe(layer_with(a, b.clone()).forward(x.clone())),
        a.clone(),
        1e-6,
    );
    assert_grad(
        "∂/∂lora_B",
        |b| probe(layer_with(a.clone(), b).forward(x.clone())),
        b.clone(),
        1e-6,
    );
    assert_grad(
        "∂/∂x",
        |x| probe(layer_with(a.clone(), b.clone()).forward(x)),
        x.clone(),
        1e-6,
    );
}

#[derive(Module, Debug)]
struct TinyMlp {
    up: LoraLinear,
    down: LoraLinear,
}

impl AdapterSlots for TinyMlp {
    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        f("mlp.up", &self.up);
        f("mlp.down", &self.down);
    }
    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        f("mlp.up", &mut self.up);
        f("mlp.down", &mut self.down);
    }
}

impl TinyMlp {
    fn new(device: &Device) -> Self {
        let w = |o, i, seed| tensor64(&pseudo_random(o * i, seed), [o, i], device);
        Self {
            up: LoraLinear::new(w(8, IN, 21), None),
            down: LoraLinear::new(w(IN, 8, 22), None),
        }
    }
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down.forward(self.up.forward(x).tanh())
    }
}

#[test]
fn injection_targets_by_name_and_only_adapters_receive_gradients() {
    let d = f64_device();
    let cfg = LoraConfig::new(2, TargetModules::names(["up"])).with_init(InitMode::Pissa);
    let (model, report) = inject(TinyMlp::new(&d), &cfg).unwrap();
    assert_eq!(report.adapted, vec!["mlp.up".to_string()]);
    assert_eq!(report.trainable_params, 2 * (IN + 8));
    assert!(model.down.adapter().is_none());
    let loss = probe(model.forward(input(&d, DType::F64)));
    let grads = loss.backward();
    let up = model.up.adapter().unwrap();
    assert!(up.lora_a().val().grad(&grads).is_some());
    assert!(up.lora_b().val().grad(&grads).is_some());
    assert!(model.up.weight.val().grad(&grads).is_none());
    assert!(model.down.weight.val().grad(&grads).is_none());
    let init = up.initial().unwrap();
    assert!(init.lora_a().val().grad(&grads).is_none());
}

#[test]
fn injection_reports_targets_that_match_nothing() {
    let d = f64_device();
    let cfg = LoraConfig::new(2, TargetModules::names(["q_proj"]));
    let err = inject(TinyMlp::new(&d), &cfg).unwrap_err().to_string();
    assert!(err.contains("q_proj") && err.contains("mlp.up"), "{err}");
    let cfg =
        LoraConfig::new(9, TargetModules::Regex("mlp\\..*".into())).with_init(InitMode::Pissa);
    let err = inject(TinyMlp::new(&d), &cfg).unwrap_err().to_string();
    assert!(err.contains("mlp.up") && err.contains("rank 9"), "{err}");
}

/// The model-level teacher: every slot is the pretrained layer, whatever the adapters learn
/// afterwards (an optimizer replaces the student's trained tensors, the teacher keeps its own
/// handles), and nothing in it is trainable.
#[test]
fn the_teacher_of_a_model_is_the_pretrained_model_and_stays_it() {
    let d = f64_device();
    let x = input(&d, DType::F64);
    let want = TinyMlp::new(&d).forward(x.clone());
    for init in [InitMode::Gaussian, InitMode::Pissa] {
        let cfg = LoraConfig::new(2, TargetModules::Regex(".*".into())).with_init(init);
        let (mut model, _) = inject(TinyMlp::new(&d), &cfg).unwrap();
        let frozen = teacher(&model);
        assert!(
            max_abs_diff(frozen.forward(x.clone()), want.clone()) < 1e-12,
            "{init:?}"
        );
        perturb(&mut model.up);
        perturb(&mut model.down);
        assert!(
            max_abs_diff(model.forward(x.clone()), want.clone()) > 1e-3,
            "{init:?}"
        );
        assert!(
            max_abs_diff(frozen.forward(x.clone()), want.clone()) < 1e-12,
            "{init:?}"
        );
        // taken after training, the teacher still goes back to the initial factors
        assert!(max_abs_diff(teacher(&model).forward(x.clone()), want.clone()) < 1e-12);
        let mut any_grad = false;
        frozen.visit_slots(&mut |_, slot| {
            any_grad |= slot.weight.is_require_grad();
            if let Some(a) = slot.adapter() {
                any_grad |= a.lora_a().is_require_grad() || a.lora_b().is_require_grad();
            }
        });
        assert!(!any_grad, "{init:?}: the teacher has a trainable tensor");
        match init {
            InitMode::Gaussian => {
                assert!(frozen.up.adapter().is_none() && frozen.down.adapter().is_none())
            }
            _ => assert!(frozen.up.adapter().is_some_and(|a| a.initial().is_none())),
        }
    }
}

/// This process's resident set in MB (Linux `VmRSS`).
#[cfg(target_os = "linux")]
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// docs/methods.md, "The teacher": the teacher is a model value that shares every frozen
/// tensor with the student, so taking it costs no weight memory. Two 64 MB f32 weights with
/// PiSSA adapters: the teacher adds well under a megabyte of resident memory, while a copy of
/// one weight (the control, proving the measure sees copies) adds its 64 MB.
#[cfg(target_os = "linux")]
#[test]
fn the_teacher_shares_the_students_frozen_weights() {
    const N: usize = 4096;
    let d = Device::flex().autodiff();
    let w = || Tensor::<2>::random([N, N], balora::burn::tensor::Distribution::Default, &d);
    let model = TinyMlp {
        up: LoraLinear::new(w(), None),
        down: LoraLinear::new(w(), None),
    };
    let cfg = LoraConfig::new(8, TargetModules::Regex(".*".into()))
        .with_init(InitMode::PissaFast { niter: 1 });
    let (model, _) = inject(model, &cfg).unwrap();
    let before = rss_mb();
    let frozen = teacher(&model);
    let taken = rss_mb() - before;
    let x = Tensor::<3>::ones([1, 2, N], &d);
    let out = frozen.forward(x.clone()).into_data();
    assert!(
        taken < 8.0,
        "taking the teacher of 2 × {} MB of weights added {taken:.1} MB",
        (N * N * 4) >> 20
    );
    let before = rss_mb();
    let copy = Tensor::<2>::from_data(model.up.weight.val().to_data(), &d);
    let copied = rss_mb() - before;
    eprintln!("resident memory: the teacher +{taken:.1} MB, a copy of one weight +{copied:.1} MB");
    assert!(
        copied > 48.0,
        "a copy of a 64 MB weight added {copied:.1} MB"
    );
    drop((copy, out));
}

#[test]
fn merge_all_and_unmerge_all_visit_every_slot() {
    let d = f64_device();
    let cfg = LoraConfig::new(2, TargetModules::Regex(".*".into())).with_init(InitMode::Pissa);
    let (mut model, _) = inject(TinyMlp::new(&d), &cfg).unwrap();
    let x = input(&d, DType::F64);
    let y = model.forward(x.clone());
    merge_all(&mut model);
    assert!(model.up.adapter().unwrap().is_merged() && model.down.adapter().unwrap().is_merged());
    assert!(max_abs_diff(model.forward(x.clone()), y.clone()) < 1e-12);
    unmerge_all(&mut model);
    assert!(max_abs_diff(model.forward(x), y) < 1e-12);
}

/// The same forward and backward on wgpu (lavapipe in CI) agree with flex within f32 tolerance.
#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;

    fn run(device: &Device) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut layer = adapted(device, DType::F32, InitMode::Pissa);
        perturb(&mut layer);
        let x = input(device, DType::F32).require_grad();
        let y = layer.forward(x.clone());
        let t = layer.teacher().forward(x.clone().detach());
        let dims = y.dims();
        let g = tensor32(&pseudo_random(dims.iter().product(), 9), dims, device);
        let grads = (y.clone() * g).sum().backward();
        let ad = layer.adapter().unwrap();
        let ga = ad.lora_a().val().grad(&grads).unwrap();
        let gx = x.grad(&grads).unwrap();
        (values(y), values(t), values(ga), values(gx))
    }

    #[test]
    fn wgpu_matches_flex_forward_teacher_and_gradients() {
        let flex = run(&Device::flex().autodiff());
        let gpu = run(&balora::parse_device(&balora_testkit::gpu_spec(), true).unwrap());
        for (name, a, b) in [
            ("forward", &flex.0, &gpu.0),
            ("teacher", &flex.1, &gpu.1),
            ("∂/∂lora_A", &flex.2, &gpu.2),
            ("∂/∂x", &flex.3, &gpu.3),
        ] {
            let err = a
                .iter()
                .zip(b)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(err < 1e-4, "{name}: wgpu differs from flex by {err:e}");
        }
    }

    /// The exact GELU's gradient on wgpu equals flex's (Burn's default backward, which the
    /// CubeCL backends inherit, is the tanh approximation's derivative and differs by 8e-4).
    #[test]
    fn wgpu_matches_flex_on_the_exact_gelu() {
        let run = |d: &Device| {
            let raw: Vec<f64> = (0..256).map(|i| -4.0 + i as f64 / 32.0).collect();
            let x = tensor32(&raw, [16, 16], d).require_grad();
            let y = balora::kernels::gelu(x.clone());
            let g = tensor32(&pseudo_random(256, 3), [16, 16], d);
            let grads = (y.clone() * g).sum().backward();
            (values(y), values(x.grad(&grads).unwrap()))
        };
        let flex = run(&Device::flex().autodiff());
        let gpu = run(&balora::parse_device(&balora_testkit::gpu_spec(), true).unwrap());
        assert!(max_abs(&flex.0, &gpu.0) < 1e-6, "values");
        let err = max_abs(&flex.1, &gpu.1);
        assert!(err < 1e-6, "gradient: wgpu differs by {err:e}");
    }

    /// DeBERTa's disentangled attention (expanded gather indices, the score bias, the
    /// relative embeddings' LayerNorm): logits and their gradient with respect to the
    /// relative embeddings.
    fn deberta(device: &Device) -> (Vec<f64>, Vec<f64>) {
        use balora::models::deberta::DebertaV2ForSequenceClassification;
        let dir = balora_testkit::fixture("models/tiny-deberta-v3-cls");
        let mut model =
            DebertaV2ForSequenceClassification::from_pretrained(&dir, None, 0, device, DType::F32)
                .unwrap();
        let table = model.deberta.encoder.rel_embeddings.as_mut().unwrap();
        let x = table.weight.val().require_grad();
        table.weight = balora::burn::module::Param::from_tensor(x.clone());
        let batch = balora::model::TokenBatch::right_padded(
            &[vec![5, 9, 17, 33, 2, 71, 8], vec![4, 40, 100]],
            0,
        );
        use balora::model::SequenceClassifier;
        let logits = model.logits(&batch);
        let g = tensor32(
            &pseudo_random(logits.dims().iter().product(), 4),
            logits.dims(),
            device,
        );
        let grads = (logits.clone() * g).sum().backward();
        (values(logits), values(x.grad(&grads).unwrap()))
    }

    #[test]
    fn wgpu_matches_flex_on_deberta_logits() {
        let flex = deberta(&Device::flex().autodiff());
        let gpu = deberta(&balora::parse_device(&balora_testkit::gpu_spec(), true).unwrap());
        let err = max_abs(&flex.0, &gpu.0);
        assert!(
            err < 1e-4,
            "DeBERTa logits: wgpu differs from flex by {err:e}"
        );
    }

    /// The gradient through DeBERTa's disentangled attention and its exact GELU. (Burn's own
    /// `gelu` backward on CubeCL is the tanh approximation's derivative: this differed by
    /// 1.4e-3 of 0.66 before `balora_kernels::gelu`.)
    #[test]
    fn wgpu_matches_flex_on_deberta_gradients() {
        let flex = deberta(&Device::flex().autodiff());
        let gpu = deberta(&balora::parse_device(&balora_testkit::gpu_spec(), true).unwrap());
        let err = max_abs(&flex.1, &gpu.1);
        assert!(
            err < 1e-5,
            "DeBERTa ∂/∂rel_embeddings: wgpu differs by {err:e}"
        );
    }

    fn max_abs(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
    }
}

/// PiSSA initialisation time of one 4096 × 4096 layer (reported, not asserted).
#[test]
#[ignore = "timing report: cargo test --test adapters -- --ignored --nocapture pissa_init_time_4096"]
fn pissa_init_time_4096() {
    let d = Device::flex();
    let n = 4096;
    let w = Tensor::<2>::random(
        [n, n],
        balora::burn::tensor::Distribution::Normal(0.0, 0.02),
        &d,
    );
    for init in [InitMode::PissaFast { niter: 4 }, InitMode::Pissa] {
        let mut l = LoraLinear::new(w.clone(), None);
        let cfg = LoraConfig::new(16, TargetModules::names(["l"])).with_init(init);
        let t = std::time::Instant::now();
        l.attach("l", &cfg).unwrap();
        let _ = values(l.weight.val().narrow(0, 0, 1));
        println!(
            "PiSSA {init:?} on {n}×{n}, r = 16: {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
}
