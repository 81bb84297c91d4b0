//! Adapter files in Hugging Face PEFT's format, both directions.
//!
//! Fixtures under `tests/fixtures/peft/` come from `scripts/peft_fixtures.py make` (peft 0.21.2):
//! a tiny MLP's base weights, an input and peft's adapted outputs, and peft's own adapter
//! directories. The reverse direction (peft loading what balora saves) is checked by
//! `cargo test --test peft_interop -- --ignored write_adapters_for_peft` followed by
//! `scripts/peft_fixtures.py check target/peft-interop`.

use std::path::{Path, PathBuf};

use balora::adapters::{
    AdapterSlots, InitMode, LoraConfig, LoraLinear, MonteCloraConfig, TargetModules, inject,
};
use balora::burn::module::Module;
use balora::burn::tensor::{DType, Device, Tensor, TensorData};
use balora::io::tensors::{SafetensorsFile, write_safetensors};
use balora::io::{InitLoraWeights, SaveOptions, load_adapter, read_config, save_adapter};
use balora_testkit::{max_abs_diff, pseudo_random};

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

fn perturb(model: &mut TinyMlp) {
    let mut seed = 40;
    model.visit_slots_mut(&mut |_, slot| {
        if let Some(ad) = &mut slot.adapter {
            seed += 1;
            let noise = |t: Tensor<2>, s| {
                let dims = t.dims();
                let n = Tensor::<2>::from_data(
                    TensorData::new(pseudo_random(dims[0] * dims[1], s), dims),
                    &t.device(),
                );
                (t + n.mul_scalar(0.05)).detach().require_grad()
            };
            ad.lora_a = ad.lora_a.clone().map(|a| noise(a, seed));
            ad.lora_b = ad.lora_b.clone().map(|b| noise(b, seed + 100));
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
    write_safetensors(&root.join("expected.safetensors"), &expected).unwrap();
}
