//! BA-LoRA's regularisers on wgpu (Mesa lavapipe in CI) agree with flex within f32 tolerance,
//! values and gradients, for both presets and both tasks.
#![cfg(feature = "wgpu")]

use balora::burn::tensor::{Device, Tensor};
use balora::losses::task::causal_lm_loss;
use balora::losses::{BaLoraLoss, RegularizerConfig, Task};
use balora_testkit::{pseudo_random, tensor32, values};

const LABELS: [i64; 12] = [-100, -100, 3, 1, 4, -100, -100, 2, 5, 9, 7, -100];

/// Every term's value and the gradient of the total w.r.t. the student logits.
fn nlg(device: &Device, config: RegularizerConfig) -> Vec<Vec<f64>> {
    let student = tensor32(&pseudo_random(2 * 6 * 10, 1), [2, 6, 10], device)
        .mul_scalar(3.0)
        .require_grad();
    let teacher = tensor32(&pseudo_random(2 * 6 * 10, 2), [2, 6, 10], device).mul_scalar(3.0);
    let loss = BaLoraLoss::new(config, 100).unwrap();
    let task = causal_lm_loss(student.clone(), &LABELS).unwrap();
    let out = loss
        .nlg(60, task, student.clone(), &LABELS, || teacher)
        .unwrap();
    let grad = student.grad(&out.loss.clone().backward()).unwrap();
    let t = out.terms;
    let mut rows: Vec<Vec<f64>> = [t.consistency, t.diversity, t.svd]
        .into_iter()
        .map(|x| x.map(values).unwrap_or_default())
        .collect();
    rows.push(values(out.loss));
    rows.push(values(grad));
    rows
}

fn nlu(device: &Device) -> Vec<Vec<f64>> {
    let student = tensor32(&pseudo_random(5 * 3, 3), [5, 3], device).require_grad();
    let teacher = tensor32(&pseudo_random(5 * 3, 4), [5, 3], device);
    let loss = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlu), 10).unwrap();
    let zero = Tensor::<1>::zeros([1], device);
    let out = loss.nlu(0, zero, student.clone(), || teacher).unwrap();
    let grad = student.grad(&out.loss.clone().backward()).unwrap();
    vec![values(out.loss), values(grad)]
}

fn assert_close(what: &str, a: &[Vec<f64>], b: &[Vec<f64>]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}[{i}]");
        let err = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        let scale = x.iter().fold(1.0f64, |m, p| m.max(p.abs()));
        assert!(
            err <= 1e-4 * scale,
            "{what}[{i}]: wgpu differs from flex by {err:e}"
        );
    }
}

#[test]
fn regularisers_on_wgpu_match_flex() {
    let flex = Device::flex().autodiff();
    let gpu = balora::parse_device(&balora_testkit::gpu_spec(), true).unwrap();
    for (name, cfg) in [
        ("paper NLG", RegularizerConfig::paper(Task::Nlg)),
        ("iclr2026", RegularizerConfig::iclr2026().with_svd_k(3)),
    ] {
        assert_close(name, &nlg(&flex, cfg.clone()), &nlg(&gpu, cfg));
    }
    assert_close("paper NLU", &nlu(&flex), &nlu(&gpu));
}
