//! Hugging Face PEFT's adapter format: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys are `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and `…lora_B.weight`
//! (`[out, r]`), exactly as `PeftModel.save_pretrained` writes them, so an adapter trained
//! here loads in peft with `PeftModel.from_pretrained(base, dir)` and vice versa.
//!
//! Modules a model trains in full beside its adapters (a classifier head: peft's
//! `modules_to_save`) are saved too, under `base_model.model.<module>.<tensor>` (peft's keys
//! once it strips its `modules_to_save.default` wrapper), and loaded back.
//!
//! PiSSA adapters are converted to plain LoRA on save by default (docs/methods.md, "PiSSA
//! conversion on save"):
//! `ΔW = s·(B·A − B₀·A₀) = s·[B | −B₀]·[A; A₀]`, i.e. rank 2r and `lora_alpha` doubled
//! (`√2·α` with rsLoRA) so `s` is unchanged. The converted adapter applies to the *original*
//! base model; nobody needs the residual weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use balora_adapters::{
    AdapterSlots, AdapterTensor, InitMode, LoraConfig, SavedParam, SavedParamMut, TargetModules,
    pattern_value,
};
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::IoError;
use crate::fs::{atomic_write, read};
use crate::tensors::{SafetensorsFile, write_safetensors};

/// File name of the adapter config, as peft names it.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights, as peft names it.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix peft puts before module paths (`PeftModel.base_model.model`).
pub const KEY_PREFIX: &str = "base_model.model.";

/// The peft task type recorded in `adapter_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskType {
    /// Decoder language models (`AutoModelForCausalLM`).
    #[serde(rename = "CAUSAL_LM")]
    CausalLm,
    /// Sequence classification (`AutoModelForSequenceClassification`).
    #[serde(rename = "SEQ_CLS")]
    SeqCls,
    /// Feature extraction (bare encoders).
    #[serde(rename = "FEATURE_EXTRACTION")]
    FeatureExtraction,
}

/// Options of [`save_adapter`].
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Convert PiSSA adapters to plain LoRA (rank 2r) that applies to the original base model.
    /// Default `true`. With `false` the factors are saved as they are, with
    /// `init_lora_weights` naming the PiSSA variant, as peft's `save_pretrained` does without
    /// `path_initial_model_for_weight_conversion`.
    pub convert_pissa_to_lora: bool,
    /// `base_model_name_or_path` to record.
    pub base_model_name_or_path: Option<String>,
    /// `task_type` to record.
    pub task_type: Option<TaskType>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            convert_pissa_to_lora: true,
            base_model_name_or_path: None,
            task_type: None,
        }
    }
}

/// `init_lora_weights` as peft writes it: a bool or a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true` (Kaiming/zero) or `false` (random B too; irrelevant once weights are loaded).
    Bool(bool),
    /// `"gaussian"`, `"pissa"`, `"pissa_niter_K"`, `"olora"`, …
    Name(String),
}

/// The subset of peft's `LoraConfig` that determines how saved factors apply.
/// Unknown fields are ignored, as peft itself does on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// Must be `"LORA"`.
    pub peft_type: String,
    /// Default rank.
    pub r: usize,
    /// Default `lora_alpha`.
    pub lora_alpha: f64,
    /// Targets (list or regex).
    pub target_modules: Option<TargetModules>,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA (not supported here; rejected on load).
    #[serde(default)]
    pub use_dora: bool,
    /// Dropout probability on the adapter branch's input (training only).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Conv1D layout flag (GPT-2); our slots are always `[out, in]`.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// `"none"`, `"all"` or `"lora_only"`; only `"none"` is supported.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// How the factors were initialised.
    #[serde(default = "default_init")]
    pub init_lora_weights: InitLoraWeights,
    /// Per-layer rank overrides (regex key → rank).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-layer alpha overrides (regex key → alpha).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Modules trained in full and saved beside the factors (a classifier head).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Task type.
    #[serde(default)]
    pub task_type: Option<TaskType>,
    /// Base model this adapter belongs to.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
}

fn default_bias() -> String {
    "none".into()
}

fn default_init() -> InitLoraWeights {
    InitLoraWeights::Bool(true)
}

/// peft's pattern rule: key `k` applies to module `name` when `(.*\.)?(k)$` matches it.
impl PeftConfig {
    /// The scale `s` of the layer at `path` whose saved rank is `r`.
    pub fn scale_for(&self, path: &str, r: usize) -> f64 {
        let alpha = *pattern_value(&self.alpha_pattern, path).unwrap_or(&self.lora_alpha);
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

fn key(path: &str, which: &str) -> String {
    format!("{KEY_PREFIX}{path}.{which}.weight")
}

fn to_data(t: Tensor<2>) -> TensorData {
    t.detach().into_data()
}

/// Save the adapters of `model` (configured by `config`) into `dir` in peft's format.
/// Both files are written atomically. Returns the config as written.
pub fn save_adapter<M: AdapterSlots>(
    model: &M,
    config: &LoraConfig,
    dir: &Path,
    options: &SaveOptions,
) -> Result<PeftConfig, IoError> {
    let convert = options.convert_pissa_to_lora && config.init.is_pissa();
    let mut tensors = BTreeMap::new();
    model.visit_slots(&mut |path, slot| {
        let Some(adapter) = slot.adapter() else {
            return;
        };
        // a converted adapter is plain LoRA of rank 2r (as peft's conversion writes it), with
        // none of a variant's tensors
        for (name, tensor) in adapter.saved_tensors(convert) {
            let data = match tensor {
                AdapterTensor::Matrix(t) => t.into_data(),
                AdapterTensor::Vector(t) => t.into_data(),
            };
            tensors.insert(format!("{KEY_PREFIX}{path}.{name}"), data);
        }
    });
    let modules_to_save = model.modules_to_save();
    for (path, data) in saved_module_data(model) {
        tensors.insert(format!("{KEY_PREFIX}{path}"), data);
    }
    // conversion doubles every rank and scales every α so that s stays the same
    let rank = |r: usize| if convert { 2 * r } else { r };
    let alpha = |a: f64| match (convert, config.use_rslora) {
        (false, _) => a,
        (true, true) => a * std::f64::consts::SQRT_2,
        (true, false) => 2.0 * a,
    };
    let init = if convert || !config.init.is_pissa() {
        InitLoraWeights::Bool(true)
    } else {
        InitLoraWeights::Name(config.init.peft_name())
    };
    let peft = PeftConfig {
        peft_type: "LORA".into(),
        r: rank(config.r),
        lora_alpha: alpha(config.lora_alpha),
        target_modules: Some(config.target_modules.clone()),
        use_rslora: config.use_rslora,
        use_dora: false,
        lora_dropout: config.lora_dropout,
        fan_in_fan_out: model.fan_in_fan_out(),
        bias: "none".into(),
        init_lora_weights: init,
        rank_pattern: config
            .rank_pattern
            .iter()
            .map(|(k, &r)| (k.clone(), rank(r)))
            .collect(),
        alpha_pattern: config
            .alpha_pattern
            .iter()
            .map(|(k, &a)| (k.clone(), alpha(a)))
            .collect(),
        modules_to_save: (!modules_to_save.is_empty()).then_some(modules_to_save),
        task_type: options.task_type,
        base_model_name_or_path: options.base_model_name_or_path.clone(),
    };
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    let monteclora = config.monteclora.as_ref().filter(|_| !convert);
    write_config(&dir.join(CONFIG_FILE), &peft, monteclora)?;
    Ok(peft)
}

/// The values of every tensor of the model's fully trained modules, by module path
/// (`classifier.weight`): what adapter files and merged exports write besides the factors.
pub(crate) fn saved_module_data<M: AdapterSlots>(model: &M) -> BTreeMap<String, TensorData> {
    let mut out = BTreeMap::new();
    model.visit_saved_modules(&mut |path, param| {
        let data = match param {
            SavedParam::Vector(p) => p.val().detach().into_data(),
            SavedParam::Matrix(p) => to_data(p.val()),
        };
        out.insert(path.to_string(), data);
    });
    out
}

/// Write `adapter_config.json` like peft (`indent=2, sort_keys=True`), with the fields peft
/// always emits so its loader needs no defaults from us.
fn write_config(
    path: &Path,
    config: &PeftConfig,
    monteclora: Option<&balora_adapters::MonteCloraConfig>,
) -> Result<(), IoError> {
    let json_err = |source| IoError::Json {
        path: path.to_path_buf(),
        source,
    };
    let mut value = serde_json::to_value(config).map_err(json_err)?;
    if let Value::Object(map) = &mut value {
        map.insert("inference_mode".into(), json!(true));
        map.insert("layers_to_transform".into(), Value::Null);
        map.insert("layers_pattern".into(), Value::Null);
        map.insert("revision".into(), Value::Null);
        map.insert("lora_bias".into(), json!(false));
    }
    if let (Value::Object(map), Some(mc)) = (&mut value, monteclora) {
        // one draw per step: the "buffer" holds a single sample
        map.insert(
            "monteclora_config".into(),
            json!({
                "buffer_size": 1,
                "dirichlet_prior": mc.dirichlet_prior,
                "kl_loss_weight": mc.kl_loss_weight,
                "num_samples": mc.num_samples,
                "sample_scaler": mc.sample_scaler,
                "use_entropy": mc.use_entropy,
            }),
        );
    }
    // serde_json's Map is a BTreeMap (no `preserve_order`): keys come out sorted.
    let mut text = serde_json::to_string_pretty(&value).map_err(json_err)?;
    text.push('\n');
    atomic_write(path, text.as_bytes())
}

/// Read `adapter_config.json` from `dir`.
pub fn read_config(dir: &Path) -> Result<PeftConfig, IoError> {
    let path = dir.join(CONFIG_FILE);
    let bytes = read(&path)?;
    let config: PeftConfig = serde_json::from_slice(&bytes).map_err(|source| IoError::Json {
        path: path.clone(),
        source,
    })?;
    let unsupported = |key: &str, value: String, reason: &str| IoError::Unsupported {
        path: path.clone(),
        key: key.into(),
        value,
        reason: reason.into(),
    };
    if config.peft_type != "LORA" {
        return Err(unsupported(
            "peft_type",
            config.peft_type.clone(),
            "only LORA adapters are supported",
        ));
    }
    if config.use_dora {
        return Err(unsupported(
            "use_dora",
            "true".into(),
            "DoRA is not supported",
        ));
    }
    if config.bias != "none" {
        return Err(unsupported(
            "bias",
            config.bias.clone(),
            "trained biases are not supported",
        ));
    }
    if let InitLoraWeights::Name(name) = &config.init_lora_weights
        && name.starts_with("pissa_niter")
    {
        return Err(unsupported(
            "init_lora_weights",
            name.clone(),
            "a randomized-SVD PiSSA adapter cannot be re-applied to the base model (its residual \
             depends on the RNG); save it converted to LoRA instead",
        ));
    }
    Ok(config)
}

/// What [`load_adapter`] attached.
#[derive(Debug, Clone)]
pub struct LoadedAdapter {
    /// The adapter's config.
    pub config: PeftConfig,
    /// Layers that received an adapter, in model order.
    pub adapted: Vec<String>,
}

/// Load a peft LoRA adapter from `dir` onto the matching slots of `model`.
///
/// Every `lora_A`/`lora_B` pair in the file must belong to a slot of the model and fit its
/// shape; the error names the file, key and both shapes otherwise. With
/// `init_lora_weights: "pissa"` the base weight of each adapted layer is first replaced by its
/// PiSSA residual (as peft does on load), so the result equals training-time outputs.
/// The loaded factors are trainable; the teacher (BA-LoRA's reference) stays the pretrained
/// model: the base for plain LoRA, `W_res + s·B₀·A₀` for PiSSA.
pub fn load_adapter<M: AdapterSlots>(model: &mut M, dir: &Path) -> Result<LoadedAdapter, IoError> {
    let config = read_config(dir)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let file = SafetensorsFile::open(&weights_path)?;
    // MonteCLoRA's sampler tensors only matter for training; a loaded adapter is the mean.
    let mut remaining: BTreeMap<String, ()> = file
        .names()
        .into_iter()
        .filter(|k| k.contains(".lora_A.") || k.contains(".lora_B."))
        .map(|k| (k, ()))
        .collect();
    let pissa = config.init_lora_weights == InitLoraWeights::Name("pissa".into());
    let mut adapted = Vec::new();
    let mut result: Result<(), IoError> = Ok(());
    let dir_path: PathBuf = dir.to_path_buf();
    model.visit_slots_mut(&mut |path, slot| {
        if result.is_err() {
            return;
        }
        let (ka, kb) = (key(path, "lora_A"), key(path, "lora_B"));
        if remaining.remove(&ka).is_none() {
            if remaining.contains_key(&kb) {
                result = Err(IoError::MissingTensor {
                    path: weights_path.clone(),
                    key: ka,
                });
            }
            return;
        }
        remaining.remove(&kb);
        result = attach_from_file(slot, path, &file, &config, pissa, &dir_path);
        adapted.push(path.to_string());
    });
    result?;
    if let Some((k, _)) = remaining.into_iter().next() {
        return Err(IoError::UnexpectedTensor {
            path: dir.join(WEIGHTS_FILE),
            key: k,
        });
    }
    load_saved_modules(model, &config, &file)?;
    Ok(LoadedAdapter { config, adapted })
}

/// Replace the tensors of the model's fully trained modules with those the file carries for
/// the modules `config.modules_to_save` names. Every such file tensor must belong to the
/// model and fit its shape; a module the config names but the file lacks is an error.
fn load_saved_modules<M: AdapterSlots>(
    model: &mut M,
    config: &PeftConfig,
    file: &SafetensorsFile,
) -> Result<(), IoError> {
    let Some(modules) = &config.modules_to_save else {
        return Ok(());
    };
    let in_module = |name: &str| {
        let name = name.strip_prefix(KEY_PREFIX).unwrap_or(name);
        modules.iter().any(|m| {
            name.strip_prefix(m.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
                || name.contains(&format!(".{m}."))
        })
    };
    let mut remaining: Vec<String> = file
        .names()
        .into_iter()
        .filter(|k| !k.contains(".lora_") && in_module(k))
        .collect();
    let mut result = Ok(());
    model.visit_saved_modules_mut(&mut |path, param| {
        let k = format!("{KEY_PREFIX}{path}");
        let Some(i) = remaining.iter().position(|r| *r == k) else {
            if result.is_ok() && in_module(&k) {
                result = Err(IoError::MissingTensor {
                    path: file.path().to_path_buf(),
                    key: k,
                });
            }
            return;
        };
        remaining.swap_remove(i);
        if result.is_err() {
            return;
        }
        result = match param {
            SavedParamMut::Vector(p) => replace(p, file, &k),
            SavedParamMut::Matrix(p) => replace(p, file, &k),
        };
    });
    result?;
    match remaining.into_iter().next() {
        Some(k) => Err(IoError::UnexpectedTensor {
            path: file.path().to_path_buf(),
            key: k,
        }),
        None => Ok(()),
    }
}

/// Load `key` into `param` with the parameter's shape, device, dtype and trainability.
fn replace<const D: usize>(
    param: &mut Param<Tensor<D>>,
    file: &SafetensorsFile,
    key: &str,
) -> Result<(), IoError> {
    let current = param.val();
    let t = file.tensor::<D>(key, current.dims(), &current.device(), current.dtype())?;
    let t = if param.is_require_grad() {
        t.require_grad()
    } else {
        t
    };
    *param = Param::from_tensor(t);
    Ok(())
}

/// Attach the factors stored for `path` in `file` to `slot` (see [`load_adapter`]).
fn attach_from_file(
    slot: &mut balora_adapters::LoraLinear,
    path: &str,
    file: &SafetensorsFile,
    config: &PeftConfig,
    pissa: bool,
    dir: &Path,
) -> Result<(), IoError> {
    let (ka, kb) = (key(path, "lora_A"), key(path, "lora_B"));
    let [out, inp] = slot.dims();
    // the rank is lora_A's first dimension; the shape checks below hold it to [r, in]
    let r = file
        .shape(&ka)
        .and_then(|s| s.first().copied())
        .unwrap_or(0);
    if r == 0 {
        return Err(IoError::Shape {
            path: file.path().to_path_buf(),
            found: file.shape(&ka).unwrap_or_default(),
            key: ka,
            expected: vec![1, inp],
        });
    }
    let device = slot.weight.val().device();
    // factors are loaded in the training dtype: f32 over a half-precision base
    let dtype = balora_adapters::training_dtype(slot.weight.val().dtype());
    let a = file.tensor(&ka, [r, inp], &device, dtype)?;
    let b = file.tensor(&kb, [out, r], &device, dtype)?;
    let scale = config.scale_for(path, r);
    let adapter_err = |source| IoError::Adapter {
        path: dir.to_path_buf(),
        source,
    };
    if !pissa {
        return slot.attach_factors(path, a, b, scale).map_err(adapter_err);
    }
    // peft re-runs the SVD on load: the base becomes the residual, (A₀, B₀) the teacher's
    // initial factors, and the saved factors the trainable ones.
    let init = LoraConfig::new(r, TargetModules::names([path]))
        .with_lora_alpha(scale * r as f64)
        .with_init(InitMode::Pissa);
    slot.attach(path, &init).map_err(adapter_err)?;
    match slot.adapter_mut() {
        Some(adapter) => adapter.set_factors(path, a, b).map_err(adapter_err),
        None => Ok(()),
    }
}
