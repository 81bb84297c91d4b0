//! BERT-family encoders against transformers: tiny random BERT and RoBERTa classifiers, and
//! the real all-MiniLM-L6-v2 (pooled embeddings, tokenizer ids without its fixed padding).

use balora_adapters::teacher;
use balora_bert::{BertForSequenceClassification, Pooling};
use balora_io::load_tokenizer;
use balora_io::tensors::SafetensorsFile;
use balora_model::{SequenceClassifier, TokenBatch};
use balora_testkit::{asset, fixture, values};
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

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

fn check_classifier(case: &str, with_types: bool) {
    let dir = fixture(&format!("models/{case}"));
    let model =
        BertForSequenceClassification::from_pretrained(&dir, None, 0, &Device::flex(), DType::F32)
            .unwrap();
    let file = SafetensorsFile::open(&dir.join("reference.safetensors")).unwrap();
    let batch = batch_from(&file, with_types);
    let got = values(model.logits(&batch));
    let want = file.values::<f64>("logits").unwrap().0;
    let err = max_abs(&got, &want);
    assert!(err <= 1e-4, "{case}: max |Δ logits| = {err:e}");
    // the teacher keeps the starting head and encoder
    let teacher = values(teacher(&model).logits(&batch));
    assert!(max_abs(&teacher, &want) <= 1e-4);
}

#[test]
fn tiny_bert_classifier_matches_transformers() {
    check_classifier("tiny-bert-cls", true);
}

#[test]
fn tiny_roberta_classifier_matches_transformers() {
    check_classifier("tiny-roberta-cls", false);
}

#[test]
fn minilm_pooled_embeddings_match_transformers() {
    let dir = asset("models/all-MiniLM-L6-v2");
    let model = BertForSequenceClassification::from_pretrained(
        &dir,
        Some(2),
        0,
        &Device::flex(),
        DType::F32,
    )
    .unwrap();
    let file = SafetensorsFile::open(&fixture("models/minilm/reference.safetensors")).unwrap();
    let batch = batch_from(&file, true);
    // tokenizer ids equal Python's once the shipped fixed padding (to 128) is switched off
    let tokenizer = load_tokenizer(&dir).unwrap();
    let sentences: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("models/minilm/sentences.json")).unwrap())
            .unwrap();
    let t = batch.dims[1];
    for (i, s) in sentences["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let enc = tokenizer.encode(s.as_str().unwrap(), true).unwrap();
        let n = enc.get_ids().len();
        assert_eq!(
            enc.get_ids(),
            &batch.input_ids[i * t..i * t + n],
            "sentence {i}"
        );
        assert!(
            batch.attention_mask[i * t + n..(i + 1) * t]
                .iter()
                .all(|&m| m == 0)
        );
    }
    let h = model.hidden_states(&batch);
    for (pooling, key) in [
        (Pooling::Cls, "cls"),
        (Pooling::Mean, "mean_pooled"),
        (Pooling::Pooler, "pooler_output"),
    ] {
        let got = values(model.pool(h.clone(), &batch, pooling));
        let want = file.values::<f64>(key).unwrap().0;
        let err = max_abs(&got, &want);
        assert!(err <= 1e-4, "{key}: max |Δ| = {err:e}");
    }
}
