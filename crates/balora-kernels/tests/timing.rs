//! Timing reports of the fused kernels against their tensor-op compositions (not run by
//! default; nothing is asserted about speed):
//!
//! ```text
//! cargo test --workspace --features wgpu --test timing -- --ignored --nocapture
//! ```

use std::time::Instant;

use balora_kernels::{
    LowRank, VocabTermsConfig, lora_linear, lora_linear_composed, vocab_terms, vocab_terms_composed,
};
use burn::tensor::{Device, Distribution, Tensor};

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

#[test]
#[ignore = "timing report"]
fn lora_linear_forward_backward_time() {
    let device = Device::flex().autodiff();
    let (n, d_in, d_out, r) = (512, 768, 3072, 8);
    let x = Tensor::<2>::random([n, d_in], Distribution::Normal(0., 1.), &device).require_grad();
    let w = Tensor::<2>::random([d_out, d_in], Distribution::Normal(0., 0.02), &device);
    let a = Tensor::<2>::random([r, d_in], Distribution::Normal(0., 0.02), &device).require_grad();
    let b = Tensor::<2>::random([d_out, r], Distribution::Normal(0., 0.02), &device).require_grad();
    let run = |fused: bool| {
        let lr = LowRank {
            input: x.clone(),
            a: a.clone(),
            b: b.clone(),
            scale: 2.0,
        };
        let y = if fused {
            lora_linear(x.clone(), w.clone(), None, Some(lr))
        } else {
            lora_linear_composed(x.clone(), w.clone(), None, Some(lr))
        };
        let g = y.sum().backward();
        x.grad(&g)
            .expect("∂x")
            .slice([0..1, 0..1])
            .into_scalar::<f32>();
    };
    let fused = median_ms(|| run(true), 9);
    let composed = median_ms(|| run(false), 9);
    let gflop = 2.0 * 2.0 * (n * d_in * d_out) as f64 / 1e9;
    println!(
        "lora_linear {n}×{d_in}→{d_out} r{r} fwd+bwd: fused {fused:.1} ms ({:.0} GFLOP/s), composed {composed:.1} ms, ratio {:.2}",
        gflop / fused * 1e3,
        fused / composed
    );
}

#[test]
#[ignore = "timing report"]
fn vocab_terms_forward_backward_time() {
    let device = Device::flex().autodiff();
    let (n, v) = (512, 50_257);
    let z = Tensor::<2>::random([n, v], Distribution::Normal(0., 3.), &device).require_grad();
    let t = Tensor::<2>::random([n, v], Distribution::Normal(0., 3.), &device);
    let targets: Vec<i64> = (0..n as i64).map(|i| (i * 97) % v as i64).collect();
    for (what, config, teacher) in [
        (
            "cross-entropy",
            VocabTermsConfig {
                targets: Some(targets.clone().into()),
                ..VocabTermsConfig::default()
            },
            false,
        ),
        (
            "CE + KL + entropy (paper)",
            VocabTermsConfig {
                targets: Some(targets.clone().into()),
                entropy: true,
                entropy_eps: 1e-10,
                ..VocabTermsConfig::default()
            },
            true,
        ),
    ] {
        let run = |fused: bool| {
            let teacher = teacher.then(|| t.clone());
            let out = if fused {
                vocab_terms(z.clone(), teacher, &config)
            } else {
                vocab_terms_composed(z.clone(), teacher, &config)
            };
            let g = out.sum().backward();
            z.grad(&g)
                .expect("∂z")
                .slice([0..1, 0..1])
                .into_scalar::<f32>();
        };
        let fused = median_ms(|| run(true), 5);
        let composed = median_ms(|| run(false), 5);
        println!(
            "vocab_terms {what} [{n}, {v}] fwd+bwd: fused {fused:.1} ms, composed {composed:.1} ms, ratio {:.2}",
            fused / composed
        );
    }
}
