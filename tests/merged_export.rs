//! Merged export (`balora::io::save_merged`, `finetune --merge-to`): the written checkpoint,
//! loaded back as a plain model, gives the adapted model's logits — for a sharded Llama with a
//! PiSSA adapter, GPT-2 (whose checkpoint stores `Conv1D` weights transposed) and a bare BERT
//! encoder with a trained classification head (written under `bert.` with its `classifier`).
//! transformers loading the same exports: `scripts/peft_fixtures.py check` (see
//! `tests/peft_interop.rs`, `write_adapters_for_peft`).

mod common;

use std::path::Path;

use balora::adapters::{InitMode, LoraConfig, TargetModules, inject};
use balora::burn::tensor::{DType, Device, TensorData};
use balora::io::tensors::SafetensorsFile;
use balora::io::{MergeOptions, save_merged};
use balora_bert::BertForSequenceClassification;
use balora_gpt2::Gpt2LmHeadModel;
use balora_llama::LlamaForCausalLM;
use balora_model::{CausalLm, SequenceClassifier, TokenBatch};
use balora_testkit::{fixture, max_abs_diff};
use common::perturb_slots;

fn batch() -> TokenBatch {
    let mut b = TokenBatch::right_padded(&[vec![5, 9, 17, 33, 2, 71, 8], vec![4, 40, 100, 6]], 0);
    b.token_type_ids = None;
    b
}

fn cfg(targets: &[&str], init: InitMode) -> LoraConfig {
    LoraConfig::new(4, TargetModules::names(targets.iter().copied()))
        .with_lora_alpha(8.0)
        .with_init(init)
}

fn weight_dtypes(dir: &Path) -> Vec<DType> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            let f = SafetensorsFile::open(&p).unwrap();
            out.extend(f.names().iter().filter_map(|k| f.dtype(k)));
        }
    }
    out
}

#[test]
fn merged_llama_is_sharded_and_equals_the_adapted_model() {
    let device = Device::flex();
    let base = fixture("models/tiny-llama");
    let model = LlamaForCausalLM::from_pretrained(&base, &device, DType::F32).unwrap();
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let (mut model, _) = inject(model, &cfg(&targets, InitMode::Pissa)).unwrap();
    perturb_slots(&mut model, 0.2);
    let want = model.logits(&batch());
    let out = tempfile::tempdir().unwrap();
    let options = MergeOptions {
        max_shard_bytes: 40_000,
        ..MergeOptions::default()
    };
    let report = save_merged(&model, &base, out.path(), &options).unwrap();
    assert_eq!(report.merged, 2 * targets.len());
    assert!(report.shards.len() > 1, "{report:?}");
    assert!(out.path().join("model.safetensors.index.json").is_file());
    assert!(out.path().join("config.json").is_file());
    let merged = LlamaForCausalLM::from_pretrained(out.path(), &device, DType::F32).unwrap();
    let err = max_abs_diff(merged.logits(&batch()), want.clone());
    assert!(
        err < 1e-4,
        "merged differs from the adapted model by {err:e}"
    );
    // the merge is the fine-tuned model, not the base
    let plain = LlamaForCausalLM::from_pretrained(&base, &device, DType::F32).unwrap();
    assert!(max_abs_diff(plain.logits(&batch()), want) > 1e-3);
}

#[test]
fn merged_gpt2_transposes_conv1d_updates() {
    let device = Device::flex();
    let base = fixture("models/tiny-gpt2");
    let model = Gpt2LmHeadModel::from_pretrained(&base, &device, DType::F32).unwrap();
    let (mut model, _) = inject(
        model,
        &cfg(&["c_attn", "c_proj", "c_fc"], InitMode::Gaussian),
    )
    .unwrap();
    perturb_slots(&mut model, 0.2);
    let want = model.logits(&batch());
    let out = tempfile::tempdir().unwrap();
    let report = save_merged(&model, &base, out.path(), &MergeOptions::default()).unwrap();
    assert_eq!(report.shards.len(), 1);
    assert!(out.path().join("model.safetensors").is_file());
    let merged = Gpt2LmHeadModel::from_pretrained(out.path(), &device, DType::F32).unwrap();
    let err = max_abs_diff(merged.logits(&batch()), want);
    assert!(err < 1e-4, "merged GPT-2 differs by {err:e}");
}

#[test]
fn merged_classifier_keeps_its_head_and_the_original_dtype() {
    let device = Device::flex();
    // a bare encoder in bf16: the export keeps bf16 and gains `bert.` and the classifier
    let bare = fixture("peft/seqcls_bare_base");
    let src = tempfile::tempdir().unwrap();
    let f = SafetensorsFile::open(&bare.join("model.safetensors")).unwrap();
    let tensors: std::collections::BTreeMap<String, TensorData> = f
        .names()
        .into_iter()
        .map(|k| {
            let d = f.data(&k).unwrap().convert_dtype(DType::BF16);
            (k, d)
        })
        .collect();
    balora::io::tensors::write_safetensors(&src.path().join("model.safetensors"), &tensors)
        .unwrap();
    std::fs::copy(bare.join("config.json"), src.path().join("config.json")).unwrap();
    let model =
        BertForSequenceClassification::from_pretrained(src.path(), Some(2), 3, &device, DType::F32)
            .unwrap();
    let (mut model, _) = inject(model, &cfg(&["query", "value"], InitMode::Gaussian)).unwrap();
    perturb_slots(&mut model, 0.2);
    let want = model.logits(&batch());
    let out = tempfile::tempdir().unwrap();
    let report = save_merged(&model, src.path(), out.path(), &MergeOptions::default()).unwrap();
    assert_eq!(report.from_model, 2);
    let file = SafetensorsFile::open(&out.path().join("model.safetensors")).unwrap();
    let names = file.names();
    assert!(
        names.contains(&"classifier.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|k| k.starts_with("bert.") || k.starts_with("classifier."))
    );
    assert_eq!(
        file.dtype("bert.encoder.layer.0.attention.self.query.weight"),
        Some(DType::BF16)
    );
    assert!(weight_dtypes(out.path()).contains(&DType::BF16));
    // another head seed: the head must come from the file
    let merged = BertForSequenceClassification::from_pretrained(
        out.path(),
        Some(2),
        77,
        &device,
        DType::F32,
    )
    .unwrap();
    // the merged weights are rounded to bf16 once
    let err = max_abs_diff(merged.logits(&batch()), want);
    assert!(err < 5e-2, "merged classifier differs by {err:e}");
}

/// A DeBERTa-v3 classifier whose checkpoint lacks the head (as pretrained DeBERTa ships):
/// the merged export carries the trained pooler and classifier, and reloads (another head
/// seed) to the adapted logits.
#[test]
fn merged_deberta_carries_its_pooler_and_classifier() {
    use balora::models::deberta::DebertaV2ForSequenceClassification;
    let device = Device::flex();
    let base = fixture("models/tiny-deberta-v3-cls");
    let src = tempfile::tempdir().unwrap();
    let f = SafetensorsFile::open(&base.join("model.safetensors")).unwrap();
    let tensors: std::collections::BTreeMap<String, TensorData> = f
        .names()
        .into_iter()
        .filter(|k| k.starts_with("deberta."))
        .map(|k| {
            let d = f.data(&k).unwrap();
            (k, d)
        })
        .collect();
    balora::io::tensors::write_safetensors(&src.path().join("model.safetensors"), &tensors)
        .unwrap();
    std::fs::copy(base.join("config.json"), src.path().join("config.json")).unwrap();
    let load = |dir: &std::path::Path, seed| {
        DebertaV2ForSequenceClassification::from_pretrained(dir, Some(3), seed, &device, DType::F32)
            .unwrap()
    };
    let targets = ["query_proj", "value_proj", "dense"];
    let (mut model, _) = inject(load(src.path(), 3), &cfg(&targets, InitMode::Pissa)).unwrap();
    perturb_slots(&mut model, 0.2);
    let want = model.logits(&batch());
    let out = tempfile::tempdir().unwrap();
    save_merged(&model, src.path(), out.path(), &MergeOptions::default()).unwrap();
    let names = SafetensorsFile::open(&out.path().join("model.safetensors"))
        .unwrap()
        .names();
    for key in ["pooler.dense.weight", "classifier.bias"] {
        assert!(names.contains(&key.to_string()), "{key}: {names:?}");
    }
    let merged = load(out.path(), 77);
    let err = max_abs_diff(merged.logits(&batch()), want);
    assert!(err < 1e-5, "merged DeBERTa differs by {err:e}");
}
