//! Mixed precision (`--dtype bf16`) on flex: the frozen base in bf16; adapters, the optimizer's
//! moments and every loss term in f32. A bf16-base model's f32 terms equal those of an f32
//! model holding the same (bf16-rounded) weights, up to the bf16 rounding of activations.

use std::collections::BTreeMap;
use std::path::Path;

use balora_adapters::{AdapterSlots, InitMode, LoraConfig, TargetModules, inject, teacher};
use balora_io::tensors::{SafetensorsFile, write_safetensors};
use balora_llama::LlamaForCausalLM;
use balora_losses::{BaLoraLoss, RegularizerConfig, Task};
use balora_model::{CausalLm, TokenBatch};
use balora_testkit::fixture;
use balora_train::{TorchAdamW, TorchAdamWConfig};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, TensorData};

/// The tiny Llama checkpoint with every weight stored in bf16.
fn bf16_checkpoint(dir: &Path) {
    let src = fixture("models/tiny-llama");
    let f = SafetensorsFile::open(&src.join("model.safetensors")).unwrap();
    let tensors: BTreeMap<String, TensorData> = f
        .names()
        .into_iter()
        .map(|k| {
            let data = f.data(&k).unwrap().convert_dtype(DType::BF16);
            (k, data)
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
}

fn cfg() -> LoraConfig {
    LoraConfig::new(4, TargetModules::names(["q_proj", "v_proj", "down_proj"]))
        .with_lora_alpha(8.0)
        .with_init(InitMode::Pissa)
}

#[test]
fn bf16_base_trains_adapters_moments_and_losses_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    bf16_checkpoint(dir.path());
    let device = Device::flex().autodiff();
    let load = |dtype| {
        let m = LlamaForCausalLM::from_pretrained(dir.path(), &device, dtype).unwrap();
        inject(m, &cfg()).unwrap().0
    };
    let (half, full) = (load(DType::BF16), load(DType::F32));
    half.visit_slots(&mut |path, slot| {
        assert_eq!(slot.weight.val().dtype(), DType::BF16, "{path}: base");
        if let Some(a) = slot.adapter() {
            assert_eq!(a.lora_a().val().dtype(), DType::F32, "{path}: lora_A");
            assert_eq!(a.lora_b().val().dtype(), DType::F32, "{path}: lora_B");
            let init = a.initial().expect("PiSSA keeps its initial factors");
            assert_eq!(init.lora_a().val().dtype(), DType::F32, "{path}: A0");
        }
    });
    let batch = TokenBatch::right_padded(&[vec![5, 9, 17, 33, 2, 71, 8], vec![4, 40, 100, 6]], 0);
    let labels: Vec<i64> = batch
        .input_ids
        .iter()
        .zip(&batch.attention_mask)
        .map(|(&id, &m)| if m == 1 { id as i64 } else { -100 })
        .collect();
    let loss = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg), 10).unwrap();
    // step 5 of 10: every λ is on
    let terms = |m: &LlamaForCausalLM| {
        let out = loss
            .nlg_causal_lm(5, m.logits(&batch), &labels, || teacher(m).logits(&batch))
            .unwrap();
        assert_eq!(out.loss.dtype(), DType::F32);
        let t = out.terms;
        let v = |x: Option<burn::tensor::Tensor<1>>| {
            let x = x.expect("term computed");
            assert_eq!(x.dtype(), DType::F32);
            x.into_scalar::<f64>()
        };
        [
            out.task.clone().into_scalar::<f64>(),
            v(t.consistency),
            v(t.diversity),
            v(t.svd),
            out.loss.clone().into_scalar::<f64>(),
        ]
    };
    let (h, f) = (terms(&half), terms(&full));
    for (i, name) in ["task", "consistency", "diversity", "svd", "total"]
        .iter()
        .enumerate()
    {
        let err = (h[i] - f[i]).abs();
        // bf16 keeps 8 mantissa bits: activations round by up to 2⁻⁸ relative per layer
        assert!(
            err <= 2e-2 * f[i].abs().max(1e-2),
            "{name}: bf16 base {} vs f32 {} (|Δ| = {err:e})",
            h[i],
            f[i]
        );
    }
    // one AdamW step: moments in f32, parameters stay f32, the base untouched in bf16
    let out = loss
        .nlg_causal_lm(5, half.logits(&batch), &labels, || {
            teacher(&half).logits(&batch)
        })
        .unwrap();
    let grads = GradientsParams::from_grads(out.loss.backward(), &half);
    let mut optim = TorchAdamW::new(TorchAdamWConfig::default());
    let half = optim.step(half, &grads, 1e-3, 1.0);
    let moments = optim.state_data();
    assert!(!moments.is_empty());
    for (k, d) in &moments {
        assert_eq!(d.dtype(), DType::F32, "moment {k}");
    }
    half.visit_slots(&mut |path, slot| {
        assert_eq!(
            slot.weight.val().dtype(),
            DType::BF16,
            "{path}: base after a step"
        );
        if let Some(a) = slot.adapter() {
            assert_eq!(
                a.lora_b().val().dtype(),
                DType::F32,
                "{path}: lora_B after a step"
            );
        }
    });
}
