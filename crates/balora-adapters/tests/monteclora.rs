//! MonteCLoRA: the worked example of docs/methods.md, "Worked examples", in f64 (given z),
//! gradient checks through the sampled forward, and equivalence with plain LoRA at scaler 0
//! and in evaluation.

use balora_adapters::{LoraLinear, MonteClora, MonteCloraConfig, MonteCloraSample, Variant};
use balora_testkit::{assert_grad, f64_device, max_abs_diff, tensor64, values};
use burn::tensor::{Device, Tensor};

fn sample(d: &Device) -> MonteCloraSample {
    MonteCloraSample {
        z_mvn: tensor64(
            &[
                1.0, -1.0, 0.5, 0.0, -0.5, 2.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.5,
            ],
            [2, 3, 2],
            d,
        ),
        // diag of Z_W = [[2.0, 0.3], [0.3, 0.5]]
        wishart_diag: tensor64(&[2.0, 0.5], [2], d),
        z_dirichlet: tensor64(&[0.2, -0.1], [2], d),
    }
}

fn config(textbook: bool, scaler: f64) -> MonteCloraConfig {
    MonteCloraConfig::new()
        .with_num_samples(2)
        .with_sample_scaler(scaler)
        .with_kl_loss_weight(1e-5)
        .with_dirichlet_prior(1.0)
        .with_use_entropy(true)
        .with_textbook_dirichlet_kl(textbook)
}

fn monteclora(rho: Tensor<1>, eta: Tensor<1>, d: &Device, cfg: MonteCloraConfig) -> MonteClora {
    let mut mc = MonteClora::from_parameters(rho, eta, cfg).unwrap();
    mc.set_sample(Some(sample(d)));
    mc
}

#[test]
fn an_eta_of_another_length_than_n_is_refused() {
    let d = Device::flex();
    let t = |v: Vec<f64>| {
        let n = v.len();
        Tensor::<1>::from_data(burn::tensor::TensorData::new(v, [n]), &d)
    };
    let e = MonteClora::from_parameters(t(vec![0.1, 0.2]), t(vec![0.5; 3]), config(false, 1e-4))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expert_weights_prior") && e.contains("[2]") && e.contains("[3]"),
        "{e}"
    );
}

/// The example's layer: W = 0 (so the output is the LoRA delta), A, B, s = 2.
fn layer(a: Tensor<2>, b: Tensor<2>, mc: MonteClora) -> LoraLinear {
    let d = a.device();
    let mut l = LoraLinear::new(tensor64(&[0.0; 9], [3, 3], &d), None);
    l.attach_factors("l", a, b, 2.0).unwrap();
    l.adapter_mut()
        .unwrap()
        .set_variant(Some(Variant::MonteClora(mc)));
    l
}

fn inputs(d: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1>, Tensor<1>, Tensor<2>) {
    (
        tensor64(&[0.1, 0.2, 0.3, -0.1, 0.0, 0.4], [2, 3], d),
        tensor64(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [3, 2], d),
        tensor64(&[0.1, -0.2], [2], d),
        tensor64(&[0.5, -0.5], [2], d),
        tensor64(&[1.0, 2.0, 3.0], [1, 3], d),
    )
}

#[track_caller]
fn close(got: &[f64], want: &[f64], tol: f64) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
    }
}

#[test]
fn monteclora_worked_example() {
    let d = f64_device();
    let (a, b, rho, eta, x) = inputs(&d);
    let mc = monteclora(rho.clone(), eta.clone(), &d, config(false, 0.01));
    let perturbation = mc.perturbation().unwrap();
    let a_eff = values(a.clone() + perturbation);
    close(
        &a_eff,
        &[
            0.11208140,
            0.20958878,
            0.29041122,
            -0.10316082,
            0.00131424,
            0.40960724,
        ],
        1e-8,
    );
    let terms = mc.kl_terms().unwrap();
    close(&values(terms.dirichlet), &[0.9691003773866798], 1e-9);
    // peft's values are KL_W = 0.09172280682068656 and KL_N = 0.9779655476008098: 2.6e-9 and
    // 8.3e-9 off the exact float64 closed forms r/2·Σ(e^{2ρ} − 2ρ − 1) and
    // N/2·(tr Σ − Σ ln Σ_jj − r) with Σ = diag(2e^{0.2}, 0.5e^{−0.4}), because peft runs the
    // Wishart sample and the Cholesky in float32. The float64 values are checked here; the
    // total R (which weighs both by β = 1e-5) matches peft's to 1e-9 (docs/methods.md,
    // "Worked examples").
    close(&values(terms.wishart), &[0.09172280419580914], 1e-12);
    let sigma: [f64; 2] = [2.0 * 0.2f64.exp(), 0.5 * (-0.4f64).exp()];
    let kl_n = sigma.iter().map(|s| s - s.ln()).sum::<f64>() - 2.0;
    let normal = values(terms.normal);
    close(&normal, &[kl_n], 1e-12);
    close(&normal, &[0.9779655476008098], 1e-8);
    close(&values(terms.entropy), &[0.6490452789187935], 1e-9);
    close(
        &values(mc.regularizer().unwrap()),
        &[0.6490656668061116],
        1e-9,
    );
    let textbook = monteclora(rho, eta, &d, config(true, 0.01));
    close(
        &values(textbook.kl_terms().unwrap().dirichlet),
        &[0.40349106342743113],
        1e-9,
    );
    // the layer: training perturbs A, evaluation (no autodiff) uses the mean
    let l = layer(a, b, mc);
    close(
        &values(l.forward(x.clone())),
        &[2.80498526, 2.25657877, 5.06156403],
        1e-8,
    );
    close(&values(l.forward(x.inner())), &[2.8, 2.2, 5.0], 1e-12);
}

#[test]
fn gradients_through_the_sampled_forward_match_finite_differences() {
    let d = f64_device();
    // Fresh tensors per evaluation: the probed argument is the only autodiff leaf reused.
    let objective = |rho: Option<Tensor<1>>,
                     eta: Option<Tensor<1>>,
                     a: Option<Tensor<2>>,
                     b: Option<Tensor<2>>| {
        let (a0, b0, rho0, eta0, x) = inputs(&d);
        let mc = monteclora(
            rho.unwrap_or(rho0),
            eta.unwrap_or(eta0),
            &d,
            config(false, 0.3),
        );
        let reg = mc.regularizer().unwrap();
        let y = layer(a.unwrap_or(a0), b.unwrap_or(b0), mc).forward(x);
        (y * tensor64(&[0.7, -1.3, 0.4], [1, 3], &d)).sum() + reg
    };
    let (a, b, rho, eta, _) = inputs(&d);
    assert_grad(
        "∂/∂std_prior",
        |p| objective(Some(p), None, None, None),
        rho,
        1e-6,
    );
    assert_grad(
        "∂/∂expert_weights_prior",
        |p| objective(None, Some(p), None, None),
        eta,
        1e-6,
    );
    assert_grad(
        "∂/∂lora_A",
        |p| objective(None, None, Some(p), None),
        a,
        1e-6,
    );
    assert_grad(
        "∂/∂lora_B",
        |p| objective(None, None, None, Some(p)),
        b,
        1e-6,
    );
}

#[test]
fn scaler_zero_is_plain_lora_exactly() {
    let d = f64_device();
    let (a, b, rho, eta, x) = inputs(&d);
    let mc = layer(
        a.clone(),
        b.clone(),
        monteclora(rho, eta, &d, config(false, 0.0)),
    );
    let mut plain = LoraLinear::new(tensor64(&[0.0; 9], [3, 3], &d), None);
    plain.attach_factors("l", a, b, 2.0).unwrap();
    assert_eq!(max_abs_diff(mc.forward(x.clone()), plain.forward(x)), 0.0);
}

#[test]
fn drawn_samples_are_reproducible_and_differ_by_seed() {
    let d = f64_device();
    let (_, _, rho, _, _) = inputs(&d);
    // η needs N = 4 entries
    let eta = Tensor::<1>::from_data(
        burn::tensor::TensorData::new(vec![0.1, 0.2, 0.3, 0.4], [4]),
        &d,
    );
    let draw = |seed| {
        let mut mc = monteclora(
            rho.clone(),
            eta.clone(),
            &d,
            MonteCloraConfig::new().with_num_samples(4),
        );
        mc.draw(5, seed);
        let s = mc.sample().unwrap().clone();
        (
            values(s.z_mvn),
            values(s.wishart_diag),
            values(s.z_dirichlet),
        )
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3).0, draw(4).0);
    let (z, w, zd) = draw(3);
    assert_eq!((z.len(), w.len(), zd.len()), (4 * 5 * 2, 2, 4));
    assert!(w.iter().all(|v| *v > 0.0), "Wishart diagonals are positive");
}
