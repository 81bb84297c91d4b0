//! Adapter files in Hugging Face PEFT's format, both directions.
//!
//! Fixtures under `tests/fixtures/peft/` come from `scripts/peft_fixtures.py make` (peft 0.21.2):
//! a tiny MLP's base weights, an input and peft's adapted outputs, and peft's own adapter
//! directories. The reverse direction (peft loading what balora saves) is checked by
//! `cargo test --test peft_interop -- --ignored write_adapters_for_peft` followed by
//! `scripts/peft_fixtures.py check target/peft-interop`.

mod common;

use std::path::{Path, PathBuf};

use balora::adapters::{
    AdapterSlots, InitMode, LoraConfig, LoraLinear, MonteCloraConfig, SavedParamMut, TargetModules,
    inject,
};
use balora::auto::AutoSequenceClassifier;
use balora::burn::module::Module;
use balora::burn::tensor::{DType, Device, Tensor, TensorData};
use balora::io::tensors::{SafetensorsFile, write_safetensors};
use balora::io::{
    InitLoraWeights, MergeOptions, SaveOptions, TaskType, load_adapter, read_config, save_adapter,
    save_merged,
};
use balora_llama::LlamaForCausalLM;
use balora_model::{CausalLm, SequenceClassifier, TokenBatch};
use balora_testkit::{fixture, max_abs_diff, pseudo_random};
use common::perturb_slots;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

#[derive(Module, Debug)]
struct Block {
    q_proj: LoraLinear,
    v_proj: LoraLinear,
}

/// Rust twin of `Tiny` in scripts/peft_fixtures.py.
#[derive(Module, Debug)]
struct TinyMlp {
    layers: Vec<Block>,
}

impl AdapterSlots for TinyMlp {
    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        for (i, b) in self.layers.iter().enumerate() {
            f(&format!("layers.{i}.q_proj"), &b.q_proj);
            f(&format!("layers.{i}.v_proj"), &b.v_proj);
        }
    }
    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        for (i, b) in self.layers.iter_mut().enumerate() {
            f(&format!("layers.{i}.q_proj"), &mut b.q_proj);
            f(&format!("layers.{i}.v_proj"), &mut b.v_proj);
        }
    }
}

impl TinyMlp {
    fn load(dir: &Path, device: &Device) -> Self {
        let file = SafetensorsFile::open(&dir.join("base.safetensors")).unwrap();
        let linear = |name: &str, out, inp| {
            let w = file
                .tensor(&format!("{name}.weight"), [out, inp], device, DType::F32)
                .unwrap();
            let b = file
                .tensor(&format!("{name}.bias"), [out], device, DType::F32)
                .unwrap();
            LoraLinear::new(w, Some(b))
        };
        let layers = (0..2)
            .map(|i| Block {
                q_proj: linear(&format!("layers.{i}.q_proj"), 12, 8),
                v_proj: linear(&format!("layers.{i}.v_proj"), 8, 12),
            })
            .collect();
        Self { layers }
    }

    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for b in &self.layers {
            x = b.v_proj.forward(b.q_proj.forward(x).tanh());
        }
        x
    }
}

fn outputs() -> SafetensorsFile {
    SafetensorsFile::open(&fixtures().join("outputs.safetensors")).unwrap()
}

fn load_output(name: &str, device: &Device) -> Tensor<2> {
    outputs().tensor(name, [3, 8], device, DType::F32).unwrap()
}

#[test]
fn adapters_saved_by_peft_reproduce_peft_outputs() {
    let device = Device::flex();
    let x = outputs().tensor("x", [3, 8], &device, DType::F32).unwrap();
    let base = TinyMlp::load(&fixtures(), &device);
    let err = max_abs_diff(base.forward(x.clone()), load_output("y_base", &device));
    assert!(err < 1e-6, "base model differs from torch by {err:e}");
    for (dir, expected) in [
        ("lora", "y_lora"),
        ("rslora_patterns", "y_rslora_patterns"),
        ("pissa_converted", "y_pissa"),
        ("pissa_raw", "y_pissa"),
    ] {
        let mut model = TinyMlp::load(&fixtures(), &device);
        let loaded = load_adapter(&mut model, &fixtures().join(dir)).unwrap();
        assert_eq!(loaded.adapted.len(), 4, "{dir}");
        let err = max_abs_diff(model.forward(x.clone()), load_output(expected, &device));
        assert!(err < 1e-5, "{dir}: balora differs from peft by {err:e}");
    }
}

#[test]
fn pissa_is_converted_to_plain_lora_on_save() {
    let device = Device::flex().autodiff();
    let cfg = LoraConfig::new(3, TargetModules::names(["q_proj", "v_proj"]))
        .with_lora_alpha(6.0)
        .with_init(InitMode::Pissa);
    let (mut model, _) = inject(TinyMlp::load(&fixtures(), &device), &cfg).unwrap();
    perturb(&mut model);
    let x = Tensor::<2>::from_data(TensorData::new(pseudo_random(24, 3), [3, 8]), &device);
    let want = model.forward(x.clone());
    let dir = tempfile::tempdir().unwrap();
    let written = save_adapter(&model, &cfg, dir.path(), &SaveOptions::default()).unwrap();
    assert_eq!((written.r, written.lora_alpha), (6, 12.0));
    assert_eq!(written.init_lora_weights, InitLoraWeights::Bool(true));
    // The converted adapter applies to the ORIGINAL base weights.
    let mut fresh = TinyMlp::load(&fixtures(), &device);
    load_adapter(&mut fresh, dir.path()).unwrap();
    assert!(max_abs_diff(fresh.forward(x.clone()), want.clone()) < 1e-5);
    // Unconverted: saved as-is with init "pissa"; loading re-runs the SVD on the original base.
    let raw = tempfile::tempdir().unwrap();
    let options = SaveOptions {
        convert_pissa_to_lora: false,
        ..SaveOptions::default()
    };
    let written = save_adapter(&model, &cfg, raw.path(), &options).unwrap();
    assert_eq!(
        written.init_lora_weights,
        InitLoraWeights::Name("pissa".into())
    );
    let mut fresh = TinyMlp::load(&fixtures(), &device);
    load_adapter(&mut fresh, raw.path()).unwrap();
    assert!(max_abs_diff(fresh.forward(x), want) < 1e-5);
}

/// `rank_pattern` / `alpha_pattern` of a `LoraConfig` shape each layer's adapter, are written
/// to `adapter_config.json` (doubled by the PiSSA conversion, as every rank and α is) and
/// reproduce the trained outputs when read back.
#[test]
fn rank_and_alpha_patterns_shape_the_layers_and_round_trip() {
    let device = Device::flex().autodiff();
    for init in [InitMode::Gaussian, InitMode::Pissa] {
        let mut cfg = LoraConfig::new(3, TargetModules::names(["q_proj", "v_proj"]))
            .with_lora_alpha(6.0)
            .with_init(init);
        cfg.rank_pattern.insert("v_proj".into(), 2);
        cfg.alpha_pattern.insert("v_proj".into(), 8.0);
        let (mut model, _) = inject(TinyMlp::load(&fixtures(), &device), &cfg).unwrap();
        model.visit_slots(&mut |path, slot| {
            if let Some(a) = slot.adapter() {
                let (r, s) = if path.ends_with("v_proj") {
                    (2, 4.0)
                } else {
                    (3, 2.0)
                };
                assert_eq!((a.rank(), a.scale()), (r, s), "{path}");
            }
        });
        perturb(&mut model);
        let x = Tensor::<2>::from_data(TensorData::new(pseudo_random(24, 5), [3, 8]), &device);
        let want = model.forward(x.clone());
        let dir = tempfile::tempdir().unwrap();
        let written = save_adapter(&model, &cfg, dir.path(), &SaveOptions::default()).unwrap();
        let k = if init.is_pissa() { 2 } else { 1 };
        assert_eq!(
            written.rank_pattern.get("v_proj"),
            Some(&(2 * k)),
            "{init:?}"
        );
        assert_eq!(written.alpha_pattern.get("v_proj"), Some(&(8.0 * k as f64)));
        let mut fresh = TinyMlp::load(&fixtures(), &device);
        load_adapter(&mut fresh, dir.path()).unwrap();
        let err = max_abs_diff(fresh.forward(x), want);
        assert!(err < 1e-5, "{init:?}: {err:e}");
    }
}

fn perturb(model: &mut TinyMlp) {
    let mut seed = 40;
    model.visit_slots_mut(&mut |_, slot| {
        if let Some(ad) = slot.adapter_mut() {
            seed += 1;
            let noise = |t: Tensor<2>, s| {
                let dims = t.dims();
                let n = Tensor::<2>::from_data(
                    TensorData::new(pseudo_random(dims[0] * dims[1], s), dims),
                    &t.device(),
                );
                (t + n.mul_scalar(0.05)).detach().require_grad()
            };
            let a = noise(ad.lora_a().val(), seed);
            let b = noise(ad.lora_b().val(), seed + 100);
            ad.set_factors("perturbed", a, b).unwrap();
        }
    });
}

#[test]
fn adapter_config_is_written_like_peft() {
    let device = Device::flex().autodiff();
    let cfg = LoraConfig::new(2, TargetModules::names(["q_proj"])).with_lora_alpha(4.0);
    let (model, _) = inject(TinyMlp::load(&fixtures(), &device), &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &cfg, dir.path(), &SaveOptions::default()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["r"], 2);
    assert_eq!(json["target_modules"], serde_json::json!(["q_proj"]));
    assert_eq!(json["init_lora_weights"], true);
    // keys sorted, two-space indent, as json.dumps(indent=2, sort_keys=True)
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(text.starts_with("{\n  \""));
    let weights = SafetensorsFile::open(&dir.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        weights.names(),
        vec![
            "base_model.model.layers.0.q_proj.lora_A.weight",
            "base_model.model.layers.0.q_proj.lora_B.weight",
            "base_model.model.layers.1.q_proj.lora_A.weight",
            "base_model.model.layers.1.q_proj.lora_B.weight",
        ]
    );
    assert_eq!(
        weights.shape("base_model.model.layers.0.q_proj.lora_A.weight"),
        Some(vec![2, 8])
    );
    assert_eq!(read_config(dir.path()).unwrap().r, 2);
}

#[test]
fn bad_adapter_files_name_the_file_key_and_shapes() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    // copy the peft LoRA adapter, then break it in several ways
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixtures().join("lora").join(f), d.join(f)).unwrap();
        }
        d
    };
    let load = |d: &Path| {
        let mut m = TinyMlp::load(&fixtures(), &device);
        load_adapter(&mut m, d).unwrap_err().to_string()
    };

    // wrong shape
    let d = copy("shape");
    let key = "base_model.model.layers.0.q_proj.lora_A.weight";
    let mut tensors = std::collections::BTreeMap::new();
    let f = SafetensorsFile::open(&d.join("adapter_model.safetensors")).unwrap();
    for name in f.names() {
        let shape = f.shape(&name).unwrap();
        let shape = if name == key { vec![4, 7] } else { shape };
        let n: usize = shape.iter().product();
        tensors.insert(name, TensorData::new(vec![0.0f32; n], shape));
    }
    write_safetensors(&d.join("adapter_model.safetensors"), &tensors).unwrap();
    let e = load(&d);
    assert!(
        e.contains("adapter_model.safetensors") && e.contains(key),
        "{e}"
    );
    assert!(e.contains("[4, 7]") && e.contains("[4, 8]"), "{e}");

    // unknown key
    let d = copy("unknown");
    let mut tensors = std::collections::BTreeMap::new();
    tensors.insert(
        "base_model.model.layers.7.q_proj.lora_A.weight".to_string(),
        TensorData::new(vec![0.0f32; 8], [1, 8]),
    );
    write_safetensors(&d.join("adapter_model.safetensors"), &tensors).unwrap();
    let e = load(&d);
    assert!(
        e.contains("layers.7.q_proj") && e.contains("matches no adaptable layer"),
        "{e}"
    );

    // truncated weights
    let d = copy("truncated");
    let p = d.join("adapter_model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load(&d);
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    // missing config, malformed config, unsupported config
    let d = copy("noconfig");
    std::fs::remove_file(d.join("adapter_config.json")).unwrap();
    assert!(load(&d).contains("adapter_config.json"));
    let d = copy("badjson");
    std::fs::write(d.join("adapter_config.json"), "{\"r\": 4,").unwrap();
    let e = load(&d);
    assert!(
        e.contains("adapter_config.json") && e.contains("invalid JSON"),
        "{e}"
    );
    let d = copy("dora");
    let text = std::fs::read_to_string(d.join("adapter_config.json")).unwrap();
    let text = text.replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(d.join("adapter_config.json"), text).unwrap();
    assert!(load(&d).contains("use_dora"));
}

/// The SEQ_CLS cases of `scripts/peft_fixtures.py`: adapter name, base checkpoint, labels,
/// layers peft adapted.
fn seqcls_cases() -> [(&'static str, PathBuf, usize, usize); 5] {
    [
        ("seqcls_bert", fixture("models/tiny-bert-cls"), 3, 4),
        ("seqcls_roberta", fixture("models/tiny-roberta-cls"), 2, 4),
        // a bare encoder checkpoint (keys without `bert.`), as all-MiniLM-L6-v2 ships
        ("seqcls_bare", fixtures().join("seqcls_bare_base"), 2, 4),
        // every projection of two layers but the pooler's; pooler and classifier saved
        (
            "seqcls_deberta",
            fixture("models/tiny-deberta-v3-cls"),
            3,
            12,
        ),
        // v2's separate position projections too
        (
            "seqcls_deberta_v2",
            fixture("models/tiny-deberta-v2-cls"),
            2,
            16,
        ),
    ]
}

fn classifier(base: &Path, labels: usize, seed: u64, device: &Device) -> AutoSequenceClassifier {
    AutoSequenceClassifier::from_pretrained(base, Some(labels), seed, device, DType::F32).unwrap()
}

/// The batch peft's logits of case `name` were computed on.
fn seqcls_batch(name: &str) -> TokenBatch {
    let file = SafetensorsFile::open(&fixtures().join("seqcls_outputs.safetensors")).unwrap();
    let ints = |k: &str| -> Option<Vec<u32>> {
        let (v, _) = file.values::<i64>(&format!("{name}.{k}")).ok()?;
        Some(v.into_iter().map(|x| x as u32).collect())
    };
    let shape = file.shape(&format!("{name}.input_ids")).unwrap();
    TokenBatch {
        input_ids: ints("input_ids").unwrap(),
        attention_mask: ints("attention_mask")
            .unwrap()
            .into_iter()
            .map(|v| v as u8)
            .collect(),
        token_type_ids: ints("token_type_ids"),
        dims: [shape[0], shape[1]],
    }
}

fn seqcls_logits(name: &str, device: &Device) -> Tensor<2> {
    let file = SafetensorsFile::open(&fixtures().join("seqcls_outputs.safetensors")).unwrap();
    let key = format!("{name}.logits");
    let shape = file.shape(&key).unwrap();
    file.tensor(&key, [shape[0], shape[1]], device, DType::F32)
        .unwrap()
}

#[test]
fn seq_cls_adapters_saved_by_peft_reproduce_peft_logits() {
    let device = Device::flex();
    for (name, base, labels, adapted) in seqcls_cases() {
        let mut model = classifier(&base, labels, 0, &device);
        let loaded = load_adapter(&mut model, &fixtures().join(name)).unwrap();
        assert_eq!(
            loaded.adapted.len(),
            adapted,
            "{name}: the layers peft adapted"
        );
        let batch = seqcls_batch(name);
        let got = model.logits(&batch);
        let err = max_abs_diff(got, seqcls_logits(name, &device));
        assert!(err < 1e-5, "{name}: balora differs from peft by {err:e}");
    }
}

/// Move the adapters and the trainable head away from their initial values (a stand-in for
/// training), each tensor by its own seeded noise.
fn perturb_classifier(model: &mut impl AdapterSlots) {
    perturb_slots(model, 0.1);
    let mut seed = 70;
    model.visit_saved_modules_mut(&mut |_, param| {
        seed += 1;
        let s = seed;
        match param {
            SavedParamMut::Matrix(p) => {
                *p = p.clone().map(|w| {
                    let dims = w.dims();
                    let n = Tensor::<2>::from_data(
                        TensorData::new(pseudo_random(dims[0] * dims[1], s), dims),
                        &w.device(),
                    );
                    (w + n.mul_scalar(0.3)).detach().require_grad()
                })
            }
            SavedParamMut::Vector(p) => {
                *p = p.clone().map(|b| {
                    let [n] = b.dims();
                    let noise = Tensor::<1>::from_data(
                        TensorData::new(pseudo_random(n, s), [n]),
                        &b.device(),
                    );
                    (b + noise.mul_scalar(0.3)).detach().require_grad()
                })
            }
        }
    });
}

/// A trained classifier saved as a SEQ_CLS adapter: `lora_*` of every adapted layer (peft's
/// default targets of the family), the head under peft's `modules_to_save` keys,
/// `--task nlu --eval-only` then reproduces it.
fn trained_classifier(
    base: &Path,
    labels: usize,
    device: &Device,
) -> (AutoSequenceClassifier, LoraConfig) {
    let model = classifier(base, labels, 1, device);
    let targets = model.architecture().peft_default_targets();
    let cfg =
        LoraConfig::new(4, TargetModules::names(targets.iter().copied())).with_lora_alpha(8.0);
    let (mut model, _) = inject(model, &cfg).unwrap();
    perturb_classifier(&mut model);
    (model, cfg)
}

#[test]
fn classification_adapters_keep_their_trained_head() {
    let device = Device::flex().autodiff();
    for (name, base, labels, _) in seqcls_cases() {
        let (model, cfg) = trained_classifier(&base, labels, &device);
        let batch = seqcls_batch(name);
        let want = model.logits(&batch);
        let deberta = name.starts_with("seqcls_deberta");
        let dir = tempfile::tempdir().unwrap();
        let options = SaveOptions {
            task_type: Some(TaskType::SeqCls),
            ..SaveOptions::default()
        };
        let written = save_adapter(&model, &cfg, dir.path(), &options).unwrap();
        let saved: &[&str] = if deberta {
            &["pooler", "classifier"]
        } else {
            &["classifier"]
        };
        assert_eq!(
            written.modules_to_save,
            Some(saved.iter().map(|s| s.to_string()).collect())
        );
        let file = SafetensorsFile::open(&dir.path().join("adapter_model.safetensors")).unwrap();
        let head: Vec<String> = file
            .names()
            .into_iter()
            .filter(|k| !k.contains(".lora_"))
            .collect();
        let expected_head: &[&str] = if deberta {
            &[
                "base_model.model.classifier.bias",
                "base_model.model.classifier.weight",
                "base_model.model.pooler.dense.bias",
                "base_model.model.pooler.dense.weight",
            ]
        } else if name == "seqcls_roberta" {
            &[
                "base_model.model.classifier.dense.bias",
                "base_model.model.classifier.dense.weight",
                "base_model.model.classifier.out_proj.bias",
                "base_model.model.classifier.out_proj.weight",
            ]
        } else {
            &[
                "base_model.model.classifier.bias",
                "base_model.model.classifier.weight",
            ]
        };
        assert_eq!(head, expected_head, "{name}");
        let query = match name {
            "seqcls_roberta" => "roberta.encoder.layer.0.attention.self.query",
            _ if deberta => "deberta.encoder.layer.0.attention.self.query_proj",
            _ => "bert.encoder.layer.0.attention.self.query",
        };
        assert!(
            file.names()
                .contains(&format!("base_model.model.{query}.lora_A.weight")),
            "{name}: module paths are transformers' *ForSequenceClassification paths"
        );
        // a fresh model (another head seed) with the adapter loaded gives the trained logits
        let mut fresh = classifier(&base, labels, 99, &device);
        load_adapter(&mut fresh, dir.path()).unwrap();
        let err = max_abs_diff(fresh.logits(&batch), want);
        assert!(err == 0.0, "{name}: reloaded classifier differs by {err:e}");
        // a head of the wrong number of labels is refused with the key and both shapes (on
        // the bare encoder, whose head is not fixed by its checkpoint)
        if name != "seqcls_bare" {
            continue;
        }
        let mut other = classifier(&base, labels + 1, 0, &device);
        let e = load_adapter(&mut other, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("classifier") && e.contains(&format!("[{labels}")),
            "{e}"
        );
    }
}

#[test]
fn monteclora_pissa_saved_converted_is_plain_lora() {
    let device = Device::flex().autodiff();
    let cfg = LoraConfig::new(3, TargetModules::names(["q_proj", "v_proj"]))
        .with_lora_alpha(6.0)
        .with_init(InitMode::Pissa)
        .with_monteclora(Some(MonteCloraConfig::new()));
    let (mut model, _) = inject(TinyMlp::load(&fixtures(), &device), &cfg).unwrap();
    perturb(&mut model);
    let x = Tensor::<2>::from_data(TensorData::new(pseudo_random(24, 3), [3, 8]), &device);
    let want = model.forward(x.clone());
    let dir = tempfile::tempdir().unwrap();
    let written = save_adapter(&model, &cfg, dir.path(), &SaveOptions::default()).unwrap();
    assert_eq!(written.r, 6);
    let file = SafetensorsFile::open(&dir.path().join("adapter_model.safetensors")).unwrap();
    assert!(
        file.names()
            .iter()
            .all(|k| k.contains(".lora_A.") || k.contains(".lora_B.")),
        "a converted adapter keeps only lora_A / lora_B, as peft's conversion: {:?}",
        file.names()
    );
    let text = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
    assert!(!text.contains("monteclora_config"), "{text}");
    let mut fresh = TinyMlp::load(&fixtures(), &device);
    load_adapter(&mut fresh, dir.path()).unwrap();
    assert!(max_abs_diff(fresh.forward(x), want) < 1e-5);
}

/// Writes balora-saved adapters plus inputs/outputs for `scripts/peft_fixtures.py check`.
#[test]
#[ignore = "writes target/peft-interop for the Python check; run by hand"]
fn write_adapters_for_peft() {
    let device = Device::flex().autodiff();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peft-interop");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("base")).unwrap();
    std::fs::copy(
        fixtures().join("base.safetensors"),
        root.join("base/base.safetensors"),
    )
    .unwrap();
    let x = Tensor::<2>::from_data(TensorData::new(pseudo_random(24, 3), [3, 8]), &device);
    let mut expected = std::collections::BTreeMap::new();
    expected.insert("x".to_string(), x.to_data());
    for (name, init, rslora, monteclora) in [
        ("lora", InitMode::Gaussian, false, false),
        ("rslora", InitMode::Gaussian, true, false),
        ("pissa", InitMode::Pissa, false, false),
        ("pissa_fast", InitMode::PissaFast { niter: 4 }, false, false),
        // evaluated as its mean (plain LoRA); peft must also load the sampler parameters
        ("monteclora", InitMode::Gaussian, false, true),
        // converted to plain LoRA of rank 2r: no sampler tensors, as peft's conversion
        ("monteclora_pissa", InitMode::Pissa, false, true),
    ] {
        let cfg = LoraConfig::new(3, TargetModules::names(["q_proj", "v_proj"]))
            .with_lora_alpha(6.0)
            .with_use_rslora(rslora)
            .with_init(init)
            .with_monteclora(monteclora.then(MonteCloraConfig::new));
        let (mut model, _) = inject(TinyMlp::load(&fixtures(), &device), &cfg).unwrap();
        perturb(&mut model);
        expected.insert(format!("y_{name}"), model.forward(x.clone()).to_data());
        save_adapter(&model, &cfg, &root.join(name), &SaveOptions::default()).unwrap();
    }
    // SEQ_CLS: peft loads them onto AutoModelForSequenceClassification of the recorded base
    for (name, base, labels, _) in seqcls_cases() {
        let (model, cfg) = trained_classifier(&base, labels, &device);
        let batch = seqcls_batch(name);
        let b = batch.batch_size();
        let ids: Vec<i64> = batch.input_ids.iter().map(|&v| v as i64).collect();
        let mask: Vec<i64> = batch.attention_mask.iter().map(|&v| v as i64).collect();
        let dims = batch.dims;
        expected.insert(format!("{name}.input_ids"), TensorData::new(ids, dims));
        expected.insert(
            format!("{name}.attention_mask"),
            TensorData::new(mask, dims),
        );
        if let Some(types) = &batch.token_type_ids {
            let types: Vec<i64> = types.iter().map(|&v| v as i64).collect();
            expected.insert(
                format!("{name}.token_type_ids"),
                TensorData::new(types, dims),
            );
        }
        let logits = model.logits(&batch);
        assert_eq!(logits.dims()[0], b);
        expected.insert(format!("{name}.logits"), logits.to_data());
        let options = SaveOptions {
            task_type: Some(TaskType::SeqCls),
            base_model_name_or_path: Some(base.display().to_string()),
            ..SaveOptions::default()
        };
        save_adapter(&model, &cfg, &root.join(name), &options).unwrap();
    }
    // merged exports: transformers loads them as plain checkpoints
    let merged_llama = {
        let base = fixture("models/tiny-llama");
        let model = LlamaForCausalLM::from_pretrained(&base, &device, DType::F32).unwrap();
        let cfg = LoraConfig::new(3, TargetModules::names(["q_proj", "v_proj", "down_proj"]))
            .with_lora_alpha(6.0)
            .with_init(InitMode::Pissa);
        let (mut model, _) = inject(model, &cfg).unwrap();
        perturb_slots(&mut model, 0.2);
        let options = MergeOptions {
            max_shard_bytes: 40_000,
            ..MergeOptions::default()
        };
        save_merged(&model, &base, &root.join("merged_llama"), &options).unwrap();
        let batch = TokenBatch::right_padded(&[vec![5, 9, 17, 33, 2, 71], vec![4, 40, 100]], 0);
        (batch.clone(), model.logits(&batch).to_data())
    };
    let merged_bert = {
        let (base, labels) = (fixtures().join("seqcls_bare_base"), 2);
        let (model, _) = trained_classifier(&base, labels, &device);
        let mut options = MergeOptions::default();
        options.config_overrides.insert(
            "architectures".into(),
            serde_json::json!(["BertForSequenceClassification"]),
        );
        options.config_overrides.insert(
            "id2label".into(),
            serde_json::json!({"0": "neg", "1": "pos"}),
        );
        options
            .config_overrides
            .insert("label2id".into(), serde_json::json!({"neg": 0, "pos": 1}));
        save_merged(&model, &base, &root.join("merged_bert"), &options).unwrap();
        let batch = seqcls_batch("seqcls_bare");
        (batch.clone(), model.logits(&batch).to_data())
    };
    let merged_deberta = {
        let (base, labels) = (fixture("models/tiny-deberta-v3-cls"), 3);
        let (model, _) = trained_classifier(&base, labels, &device);
        save_merged(
            &model,
            &base,
            &root.join("merged_deberta"),
            &MergeOptions::default(),
        )
        .unwrap();
        let batch = seqcls_batch("seqcls_deberta");
        (batch.clone(), model.logits(&batch).to_data())
    };
    for (name, (batch, logits)) in [
        ("merged_llama", merged_llama),
        ("merged_bert", merged_bert),
        ("merged_deberta", merged_deberta),
    ] {
        let dims = batch.dims;
        let ints = |v: &[u32]| TensorData::new(v.iter().map(|&x| x as i64).collect(), dims);
        expected.insert(format!("{name}.input_ids"), ints(&batch.input_ids));
        let mask: Vec<u32> = batch.attention_mask.iter().map(|&m| m as u32).collect();
        expected.insert(format!("{name}.attention_mask"), ints(&mask));
        if let Some(types) = &batch.token_type_ids {
            expected.insert(format!("{name}.token_type_ids"), ints(types));
        }
        expected.insert(format!("{name}.logits"), logits);
    }
    write_safetensors(&root.join("expected.safetensors"), &expected).unwrap();
}
