//! Architectures by name: the model class a checkpoint's `config.json` `model_type` names, and
//! peft's default target modules for it — so callers fine-tune any supported checkpoint
//! without naming its architecture.

use std::path::Path;

use balora_adapters::{AdapterSlots, LoraLinear, SavedParam, SavedParamMut};
use balora_bert::BertForSequenceClassification;
use balora_deberta::DebertaV2ForSequenceClassification;
use balora_gpt2::Gpt2LmHeadModel;
use balora_io::MODEL_CONFIG;
use balora_llama::LlamaForCausalLM;
use balora_model::generation::generate_uncached;
use balora_model::{CausalLm, GenerationConfig, ModelError, SequenceClassifier, TokenBatch};
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};

/// A supported model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama, Mistral, Qwen2, Gemma, SmolLM (`balora-llama`).
    Llama,
    /// GPT-2 (`balora-gpt2`).
    Gpt2,
    /// BERT, RoBERTa, MiniLM (`balora-bert`).
    Bert,
    /// DeBERTa-v2 / v3 (`balora-deberta`).
    Deberta,
}

/// The `model_type` values balora reads, for error messages.
const SUPPORTED: &str =
    "llama, mistral, qwen2, gemma, gpt2, bert, roberta, xlm-roberta or deberta-v2";

impl Architecture {
    /// The family of a `config.json` `model_type`, if supported.
    pub fn of_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" | "mistral" | "qwen2" | "gemma" => Some(Self::Llama),
            "gpt2" => Some(Self::Gpt2),
            "bert" | "roberta" | "xlm-roberta" => Some(Self::Bert),
            "deberta-v2" => Some(Self::Deberta),
            _ => None,
        }
    }

    /// The family of the checkpoint in `dir`, from its `config.json`.
    pub fn detect(dir: &Path) -> Result<Self, ModelError> {
        #[derive(serde::Deserialize)]
        struct ModelType {
            model_type: String,
        }
        let ModelType { model_type } = balora_io::fs::read_json(&dir.join(MODEL_CONFIG))?;
        Self::of_model_type(&model_type).ok_or(ModelError::UnsupportedConfig {
            key: "model_type",
            value: model_type,
            expected: SUPPORTED,
        })
    }

    /// Whether the family is a decoder language model (else an encoder classifier).
    pub fn is_causal_lm(self) -> bool {
        !matches!(self, Self::Bert | Self::Deberta)
    }

    /// peft's default `target_modules` for the family (its
    /// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`): the attention's query and value
    /// projections.
    pub fn peft_default_targets(self) -> &'static [&'static str] {
        match self {
            Self::Llama => &["q_proj", "v_proj"],
            Self::Gpt2 => &["c_attn"],
            Self::Bert => &["query", "value"],
            Self::Deberta => &["query_proj", "value_proj"],
        }
    }

    /// Every linear layer but the output head (peft's `target_modules="all-linear"`), the
    /// targets QLoRA and PiSSA's recipes adapt.
    pub fn all_linear_targets(self) -> &'static [&'static str] {
        match self {
            Self::Llama => &[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            Self::Gpt2 => &["c_attn", "c_proj", "c_fc"],
            Self::Bert => &["query", "key", "value", "dense"],
            Self::Deberta => &["query_proj", "key_proj", "value_proj", "dense"],
        }
    }
}

/// A causal language model of any supported family, loaded by `model_type`.
// A model is built once and moved a few times: the variants' size difference (the Llama
// config's fields) costs nothing worth a Box in every module path.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AutoCausalLm {
    /// A Llama-family model.
    Llama(LlamaForCausalLM),
    /// GPT-2.
    Gpt2(Gpt2LmHeadModel),
}

impl AutoCausalLm {
    /// Load the checkpoint in `dir` as its family's model, frozen, weights cast to `dtype`.
    pub fn from_pretrained(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        match Architecture::detect(dir)? {
            Architecture::Llama => Ok(Self::Llama(LlamaForCausalLM::from_pretrained(
                dir, device, dtype,
            )?)),
            Architecture::Gpt2 => Ok(Self::Gpt2(Gpt2LmHeadModel::from_pretrained(
                dir, device, dtype,
            )?)),
            Architecture::Bert | Architecture::Deberta => Err(ModelError::UnsupportedConfig {
                key: "model_type",
                value: "an encoder (bert/roberta/deberta-v2)".into(),
                expected: "a decoder for a causal LM (llama, mistral, qwen2, gemma, gpt2); \
                           encoders fine-tune as sequence classifiers",
            }),
        }
    }

    /// The family.
    pub fn architecture(&self) -> Architecture {
        match self {
            Self::Llama(_) => Architecture::Llama,
            Self::Gpt2(_) => Architecture::Gpt2,
        }
    }

    /// End-of-sequence ids from `config.json`.
    pub fn eos_ids(&self) -> Vec<u32> {
        match self {
            Self::Llama(m) => m.config().eos_ids(),
            Self::Gpt2(m) => m.config().eos_token_id.into_iter().collect(),
        }
    }

    /// The padding id from `config.json`, if it names one.
    pub fn pad_id(&self) -> Option<u32> {
        match self {
            Self::Llama(m) => m.config().pad_token_id,
            Self::Gpt2(_) => None,
        }
    }

    /// Generate after `prompt` (with the KV cache where the family has one); returns the new
    /// tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &GenerationConfig,
    ) -> Result<Vec<u32>, ModelError> {
        match self {
            Self::Llama(m) => m.generate(prompt, config, true),
            Self::Gpt2(m) => generate_uncached(m, prompt, config),
        }
    }

    /// [`generate`](Self::generate) for several prompts: one left-padded batch with the KV
    /// cache where the family has one (each row's tokens as `generate` gives them alone),
    /// else one prompt after the other.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        pad_id: u32,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        match self {
            Self::Llama(m) => m.generate_batch(prompts, config, pad_id),
            Self::Gpt2(m) => prompts
                .iter()
                .map(|p| generate_uncached(m, p, config))
                .collect(),
        }
    }
}

impl AdapterSlots for AutoCausalLm {
    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        match self {
            Self::Llama(m) => m.visit_slots(f),
            Self::Gpt2(m) => m.visit_slots(f),
        }
    }

    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        match self {
            Self::Llama(m) => m.visit_slots_mut(f),
            Self::Gpt2(m) => m.visit_slots_mut(f),
        }
    }

    fn fan_in_fan_out(&self) -> bool {
        match self {
            Self::Llama(m) => m.fan_in_fan_out(),
            Self::Gpt2(m) => m.fan_in_fan_out(),
        }
    }

    fn modules_to_save(&self) -> Vec<String> {
        match self {
            Self::Llama(m) => m.modules_to_save(),
            Self::Gpt2(m) => m.modules_to_save(),
        }
    }

    fn visit_saved_modules(&self, f: &mut dyn FnMut(&str, SavedParam<'_>)) {
        match self {
            Self::Llama(m) => m.visit_saved_modules(f),
            Self::Gpt2(m) => m.visit_saved_modules(f),
        }
    }

    fn visit_saved_modules_mut(&mut self, f: &mut dyn FnMut(&str, SavedParamMut<'_>)) {
        match self {
            Self::Llama(m) => m.visit_saved_modules_mut(f),
            Self::Gpt2(m) => m.visit_saved_modules_mut(f),
        }
    }
}

impl CausalLm for AutoCausalLm {
    fn logits(&self, batch: &TokenBatch) -> Tensor<3> {
        match self {
            Self::Llama(m) => m.logits(batch),
            Self::Gpt2(m) => m.logits(batch),
        }
    }

    fn vocab_size(&self) -> usize {
        match self {
            Self::Llama(m) => m.vocab_size(),
            Self::Gpt2(m) => m.vocab_size(),
        }
    }

    fn max_len(&self) -> Option<usize> {
        match self {
            Self::Llama(m) => m.max_len(),
            Self::Gpt2(m) => m.max_len(),
        }
    }
}

/// A sequence classifier of any supported encoder family, loaded by `model_type`.
// Built once and moved a few times, as `AutoCausalLm`: no Box in every module path.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AutoSequenceClassifier {
    /// BERT, RoBERTa, MiniLM.
    Bert(BertForSequenceClassification),
    /// DeBERTa-v2 / v3.
    Deberta(DebertaV2ForSequenceClassification),
}

impl AutoSequenceClassifier {
    /// Load the encoder checkpoint in `dir` as its family's classifier with `num_labels`
    /// outputs (`None`: the checkpoint's `id2label` count), the head drawn from `seed` where
    /// the checkpoint has none (see the families' `from_pretrained`).
    pub fn from_pretrained(
        dir: &Path,
        num_labels: Option<usize>,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        match Architecture::detect(dir)? {
            Architecture::Bert => Ok(Self::Bert(BertForSequenceClassification::from_pretrained(
                dir, num_labels, seed, device, dtype,
            )?)),
            Architecture::Deberta => Ok(Self::Deberta(
                DebertaV2ForSequenceClassification::from_pretrained(
                    dir, num_labels, seed, device, dtype,
                )?,
            )),
            Architecture::Llama | Architecture::Gpt2 => Err(ModelError::UnsupportedConfig {
                key: "model_type",
                value: "a decoder (llama/gpt2 family)".into(),
                expected: "an encoder for a sequence classifier (bert, roberta, xlm-roberta, \
                           deberta-v2); decoders fine-tune as causal LMs",
            }),
        }
    }

    /// The family.
    pub fn architecture(&self) -> Architecture {
        match self {
            Self::Bert(_) => Architecture::Bert,
            Self::Deberta(_) => Architecture::Deberta,
        }
    }

    /// transformers' task class of this checkpoint (a merged export's `architectures`).
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::Bert(m) if m.config().model_type == "bert" => "BertForSequenceClassification",
            Self::Bert(m) if m.config().model_type == "xlm-roberta" => {
                "XLMRobertaForSequenceClassification"
            }
            Self::Bert(_) => "RobertaForSequenceClassification",
            Self::Deberta(_) => "DebertaV2ForSequenceClassification",
        }
    }
}

impl AdapterSlots for AutoSequenceClassifier {
    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        match self {
            Self::Bert(m) => m.visit_slots(f),
            Self::Deberta(m) => m.visit_slots(f),
        }
    }

    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        match self {
            Self::Bert(m) => m.visit_slots_mut(f),
            Self::Deberta(m) => m.visit_slots_mut(f),
        }
    }

    fn modules_to_save(&self) -> Vec<String> {
        match self {
            Self::Bert(m) => m.modules_to_save(),
            Self::Deberta(m) => m.modules_to_save(),
        }
    }

    fn visit_saved_modules(&self, f: &mut dyn FnMut(&str, SavedParam<'_>)) {
        match self {
            Self::Bert(m) => m.visit_saved_modules(f),
            Self::Deberta(m) => m.visit_saved_modules(f),
        }
    }

    fn visit_saved_modules_mut(&mut self, f: &mut dyn FnMut(&str, SavedParamMut<'_>)) {
        match self {
            Self::Bert(m) => m.visit_saved_modules_mut(f),
            Self::Deberta(m) => m.visit_saved_modules_mut(f),
        }
    }
}

impl SequenceClassifier for AutoSequenceClassifier {
    fn logits(&self, batch: &TokenBatch) -> Tensor<2> {
        match self {
            Self::Bert(m) => m.logits(batch),
            Self::Deberta(m) => m.logits(batch),
        }
    }

    fn pooled(&self, batch: &TokenBatch) -> Tensor<2> {
        match self {
            Self::Bert(m) => m.pooled(batch),
            Self::Deberta(m) => m.pooled(batch),
        }
    }

    fn num_labels(&self) -> usize {
        match self {
            Self::Bert(m) => m.num_labels(),
            Self::Deberta(m) => m.num_labels(),
        }
    }

    fn vocab_size(&self) -> usize {
        match self {
            Self::Bert(m) => m.vocab_size(),
            Self::Deberta(m) => m.vocab_size(),
        }
    }

    fn max_len(&self) -> Option<usize> {
        match self {
            Self::Bert(m) => m.max_len(),
            Self::Deberta(m) => m.max_len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use balora_testkit::{fixture, max_abs_diff};

    #[test]
    fn the_architecture_comes_from_model_type() {
        for (dir, want) in [
            ("tiny-llama", Architecture::Llama),
            ("tiny-mistral", Architecture::Llama),
            ("tiny-qwen2", Architecture::Llama),
            ("tiny-gpt2", Architecture::Gpt2),
            ("tiny-bert-cls", Architecture::Bert),
            ("tiny-roberta-cls", Architecture::Bert),
        ] {
            let got = Architecture::detect(&fixture(&format!("models/{dir}"))).unwrap();
            assert_eq!(got, want, "{dir}");
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(MODEL_CONFIG), r#"{"model_type": "t5"}"#).unwrap();
        let e = Architecture::detect(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("\"t5\"") && e.contains("gpt2"), "{e}");
        let e = AutoCausalLm::from_pretrained(
            &fixture("models/tiny-bert-cls"),
            &Device::flex(),
            DType::F32,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("encoder"), "{e}");
    }

    #[test]
    fn the_auto_model_is_its_family_class() {
        let device = Device::flex();
        let batch = TokenBatch::right_padded(&[vec![5, 9, 17, 33], vec![4, 40]], 0);
        let config = GenerationConfig::greedy(3, Vec::new());
        let dir = fixture("models/tiny-llama");
        let auto = AutoCausalLm::from_pretrained(&dir, &device, DType::F32).unwrap();
        let llama = LlamaForCausalLM::from_pretrained(&dir, &device, DType::F32).unwrap();
        assert_eq!(auto.architecture(), Architecture::Llama);
        assert_eq!(max_abs_diff(auto.logits(&batch), llama.logits(&batch)), 0.0);
        let cached = auto.generate(&[5, 9, 17], &config).unwrap();
        assert_eq!(cached, llama.generate(&[5, 9, 17], &config, false).unwrap());
        assert_eq!(auto.eos_ids(), vec![2]);
        let dir = fixture("models/tiny-gpt2");
        let auto = AutoCausalLm::from_pretrained(&dir, &device, DType::F32).unwrap();
        let gpt2 = Gpt2LmHeadModel::from_pretrained(&dir, &device, DType::F32).unwrap();
        assert_eq!(max_abs_diff(auto.logits(&batch), gpt2.logits(&batch)), 0.0);
        assert!(auto.fan_in_fan_out());
        assert_eq!(auto.generate(&[5, 9, 17], &config).unwrap().len(), 3);
    }
}
