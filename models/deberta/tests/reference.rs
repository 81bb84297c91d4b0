//! DeBERTa-v2/v3 classifiers against transformers: tiny random checkpoints written by
//! `scripts/model_fixtures.py` (a right-padded batch, logits), a checkpoint without the head
//! pretrained DeBERTa checkpoints lack, and a bare unprefixed encoder.

use std::collections::BTreeMap;

use balora_adapters::teacher;
use balora_deberta::DebertaV2ForSequenceClassification;
use balora_io::tensors::{SafetensorsFile, write_safetensors};
use balora_model::{SequenceClassifier, TokenBatch};
use balora_testkit::{fixture, max_abs_diff, values};
use burn::tensor::{DType, Device};

fn batch_from(file: &SafetensorsFile, with_types: bool) -> TokenBatch {
    let ints = |k: &str| -> Vec<u32> {
        file.values::<i64>(k)
            .unwrap()
            .0
            .into_iter()
            .map(|v| v as u32)
            .collect()
    };
    let shape = file.shape("input_ids").unwrap();
    TokenBatch {
        input_ids: ints("input_ids"),
        attention_mask: ints("attention_mask")
            .into_iter()
            .map(|v| v as u8)
            .collect(),
        token_type_ids: with_types.then(|| ints("token_type_ids")),
        dims: [shape[0], shape[1]],
    }
}

fn load(
    dir: &std::path::Path,
    labels: Option<usize>,
    seed: u64,
) -> DebertaV2ForSequenceClassification {
    DebertaV2ForSequenceClassification::from_pretrained(
        dir,
        labels,
        seed,
        &Device::flex(),
        DType::F32,
    )
    .unwrap()
}

fn check_classifier(case: &str, with_types: bool) {
    let dir = fixture(&format!("models/{case}"));
    let model = load(&dir, None, 0);
    let file = SafetensorsFile::open(&dir.join("reference.safetensors")).unwrap();
    let batch = batch_from(&file, with_types);
    let got = values(model.logits(&batch));
    let want = file.values::<f64>("logits").unwrap().0;
    let err = got
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert_eq!(got.len(), want.len());
    eprintln!("{case}: max |Δ logits| = {err:.2e}");
    assert!(err <= 1e-4, "{case}: max |Δ logits| = {err:e}");
    // the teacher keeps the starting head and encoder
    assert_eq!(
        max_abs_diff(teacher(&model).logits(&batch), model.logits(&batch)),
        0.0
    );
}

#[test]
fn tiny_deberta_v3_classifier_matches_transformers() {
    check_classifier("tiny-deberta-v3-cls", false);
}

#[test]
fn tiny_deberta_v2_classifier_matches_transformers() {
    check_classifier("tiny-deberta-v2-cls", true);
}

/// Copy `case` to a folder whose weights keep only the keys `keep` accepts, renamed by it.
fn rewritten(case: &str, keep: impl Fn(&str) -> Option<String>) -> tempfile::TempDir {
    let src = fixture(&format!("models/{case}"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let file = SafetensorsFile::open(&src.join("model.safetensors")).unwrap();
    let tensors: BTreeMap<_, _> = file
        .names()
        .into_iter()
        .filter_map(|k| Some((keep(&k)?, file.data(&k).unwrap())))
        .collect();
    write_safetensors(&tmp.path().join("model.safetensors"), &tensors).unwrap();
    tmp
}

#[test]
fn a_checkpoint_without_a_head_gets_one_from_the_seed() {
    let case = "tiny-deberta-v3-cls";
    let file =
        SafetensorsFile::open(&fixture(&format!("models/{case}/reference.safetensors"))).unwrap();
    let batch = batch_from(&file, false);
    let full = load(&fixture(&format!("models/{case}")), None, 0);
    // pretrained DeBERTa checkpoints: the encoder only, under `deberta.`
    let encoder = rewritten(case, |k| k.starts_with("deberta.").then(|| k.to_string()));
    let (a, b, c) = (
        load(encoder.path(), Some(4), 7),
        load(encoder.path(), Some(4), 7),
        load(encoder.path(), Some(4), 8),
    );
    assert_eq!(a.num_labels(), 4);
    assert_eq!(max_abs_diff(a.logits(&batch), b.logits(&batch)), 0.0);
    assert!(max_abs_diff(a.logits(&batch), c.logits(&batch)) > 1e-6);
    assert!(max_abs_diff(a.hidden_states(&batch), full.hidden_states(&batch)) < 1e-6);
    // a bare `DebertaV2Model` save: no `deberta.` prefix
    let bare = rewritten(case, |k| k.strip_prefix("deberta.").map(str::to_string));
    let bare = load(bare.path(), Some(4), 7);
    assert_eq!(max_abs_diff(bare.logits(&batch), a.logits(&batch)), 0.0);
}

/// The disentangled terms' gradient (both gathers, the relative embeddings' LayerNorm, the
/// position projections and the biased attention) against central differences in f64: the
/// gradient of a weighted sum of the logits with respect to the relative embeddings.
#[test]
fn disentangled_attention_gradients_match_finite_differences() {
    let device = balora_testkit::f64_device();
    for (case, with_types) in [
        ("tiny-deberta-v3-cls", false),
        ("tiny-deberta-v2-cls", true),
    ] {
        let dir = fixture(&format!("models/{case}"));
        let model =
            DebertaV2ForSequenceClassification::from_pretrained(&dir, None, 0, &device, DType::F64)
                .unwrap();
        let file = SafetensorsFile::open(&dir.join("reference.safetensors")).unwrap();
        let batch = batch_from(&file, with_types);
        let table = model.deberta.encoder.rel_embeddings.as_ref().unwrap();
        let x = table.weight.val();
        let labels = model.num_labels();
        let w = balora_testkit::tensor64(
            &balora_testkit::pseudo_random(2 * labels, 5),
            [2, labels],
            &device,
        );
        let f = |x: burn::tensor::Tensor<2>| {
            let mut m = model.clone();
            m.deberta.encoder.rel_embeddings.as_mut().unwrap().weight =
                burn::module::Param::from_tensor(x);
            (m.logits(&batch) * w.clone()).sum()
        };
        balora_testkit::assert_grad(case, f, x, 1e-6);
    }
}
