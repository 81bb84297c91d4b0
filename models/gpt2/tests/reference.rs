//! GPT-2 logits against transformers on a tiny random checkpoint saved by transformers
//! (`scripts/model_fixtures.py`): Conv1D transposition, fused c_attn, learned positions, tied
//! head, right padding; adapters on the fused projection.

use balora_adapters::{InitMode, LoraConfig, TargetModules, inject};
use balora_gpt2::Gpt2LmHeadModel;
use balora_io::tensors::SafetensorsFile;
use balora_model::{CausalLm, TokenBatch};
use balora_testkit::{fixture, values};
use burn::tensor::{DType, Device};

fn load() -> (Gpt2LmHeadModel, TokenBatch, Vec<f64>) {
    let dir = fixture("models/tiny-gpt2");
    let model = Gpt2LmHeadModel::from_pretrained(&dir, &Device::flex(), DType::F32).unwrap();
    let file = SafetensorsFile::open(&dir.join("reference.safetensors")).unwrap();
    let (ids, shape) = file.values::<i64>("input_ids").unwrap();
    let (mask, _) = file.values::<i64>("attention_mask").unwrap();
    let batch = TokenBatch {
        input_ids: ids.into_iter().map(|v| v as u32).collect(),
        attention_mask: mask.into_iter().map(|v| v as u8).collect(),
        token_type_ids: None,
        dims: [shape[0], shape[1]],
    };
    let (logits, _) = file.values::<f64>("logits").unwrap();
    (model, batch, logits)
}

fn max_err_real(got: &[f64], want: &[f64], batch: &TokenBatch, v: usize) -> f64 {
    let mut err = 0.0f64;
    for (p, &m) in batch.attention_mask.iter().enumerate() {
        if m == 1 {
            for j in 0..v {
                err = err.max((got[p * v + j] - want[p * v + j]).abs());
            }
        }
    }
    err
}

#[test]
fn tiny_gpt2_matches_transformers() {
    let (model, batch, want) = load();
    let got = values(model.logits(&batch));
    let err = max_err_real(&got, &want, &batch, model.vocab_size());
    assert!(err <= 1e-4, "max |Δ logits| = {err:e}");
}

#[test]
fn adapters_on_the_fused_projection_start_from_the_base() {
    let (model, batch, want) = load();
    let cfg =
        LoraConfig::new(4, TargetModules::names(["c_attn", "c_fc"])).with_init(InitMode::Pissa);
    let (model, report) = inject(model, &cfg).unwrap();
    assert_eq!(report.adapted[0], "transformer.h.0.attn.c_attn");
    let adapter = model.transformer.h[0].attn.c_attn.adapter().unwrap();
    assert_eq!(adapter.lora_b().shape().dims::<2>(), [96, 4]);
    let got = values(model.logits(&batch));
    let err = max_err_real(&got, &want, &batch, model.vocab_size());
    assert!(
        err <= 1e-4,
        "PiSSA-initialised GPT-2 differs from the base by {err:e}"
    );
}

#[test]
fn a_llama_checkpoint_is_not_a_gpt2() {
    let e = Gpt2LmHeadModel::from_pretrained(
        &fixture("models/tiny-llama"),
        &Device::flex(),
        DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model_type") || e.contains("config.json"), "{e}");
}
