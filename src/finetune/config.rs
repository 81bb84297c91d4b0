//! What a fine-tuning run reads: [`FinetuneConfig`], the `finetune` example's options and the
//! keys of its TOML files (the same names), with typed choices.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use balora_losses::Preset;
pub use balora_train::MethodName;

/// Declares a closed set of lowercase names: serde (TOML, JSON), [`FromStr`] and, with the
/// `cli` feature, `clap::ValueEnum` (command lines, `--help` lists them) read them, and an
/// unknown name is refused with the list of choices.
macro_rules! choices {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $text)]
                #[cfg_attr(feature = "cli", value(name = $text))]
                $variant
            ),+
        }

        impl $name {
            /// Every accepted name.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?}: expected one of {}",
                        stringify!($name).to_lowercase(),
                        Self::NAMES.join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choices! {
    /// Which kind of fine-tuning.
    TaskKind {
        /// A causal LM on instruction data (response-only loss, accuracy of generated answers).
        Nlg = "nlg",
        /// Sequence classification (a trained head; accuracy, macro-F1, MCC).
        Nlu = "nlu",
    }
}

choices! {
    /// Where BA-LoRA's teacher comes from (docs/methods.md, "The teacher").
    TeacherSource {
        /// The model's own frozen initial adapter on the shared base: no second model.
        Adapter = "adapter",
        /// A second pretrained model loaded from a checkpoint (as the ICLR 2026 code).
        Checkpoint = "checkpoint",
    }
}

choices! {
    /// The learning-rate schedule after warmup.
    ScheduleName {
        /// Cosine decay to 0.
        Cosine = "cosine",
        /// Linear decay to 0.
        Linear = "linear",
        /// Constant.
        Constant = "constant",
    }
}

choices! {
    /// The dtype of the frozen base weights (adapters train in f32 either way).
    DtypeName {
        /// float32.
        F32 = "f32",
        /// bfloat16 (where the backend supports it).
        Bf16 = "bf16",
    }
}

/// Every setting of a fine-tuning run. `None` fields take the task's default (shown in each
/// field's documentation); `model`, `train` and `eval` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// nlg (causal LM on instruction data) or nlu (sequence classification).
    pub task: TaskKind,
    /// lora | pissa | balora | monteclora.
    pub method: MethodName,
    /// BA-LoRA's preset.
    pub preset: Preset,
    /// Override λ1 (consistency).
    pub lambda_consistency: Option<f64>,
    /// Override λ2 (diversity).
    pub lambda_diversity: Option<f64>,
    /// Override λ3 (SVD).
    pub lambda_svd: Option<f64>,
    /// BA-LoRA's teacher (NLG only for `checkpoint`).
    pub teacher: TeacherSource,
    /// The pretrained model of `teacher = checkpoint` (default: `model`).
    pub teacher_model: Option<PathBuf>,
    /// Hugging Face model directory; the architecture comes from its `config.json`.
    pub model: Option<PathBuf>,
    /// Training data (JSONL for NLG; JSONL/TSV/CSV for NLU).
    pub train: Option<PathBuf>,
    /// Held-out data for evaluation.
    pub eval: Option<PathBuf>,
    /// Adapter rank r.
    pub rank: usize,
    /// lora_alpha (default 2r).
    pub alpha: Option<f64>,
    /// rsLoRA scaling α/√r.
    pub rslora: bool,
    /// Adapter dropout.
    pub dropout: f64,
    /// Comma-separated module names, or a regex with `target_regex` (default: every linear
    /// layer of the architecture, peft's `all-linear`).
    pub target_modules: Option<String>,
    /// Treat `target_modules` as a regex over full module paths.
    pub target_regex: bool,
    /// PiSSA's randomized SVD power iterations (0: full SVD).
    pub pissa_niter: usize,
    /// Peak learning rate (default 2e-4 for NLG, 5e-4 for NLU).
    pub lr: Option<f64>,
    /// cosine | linear | constant.
    pub schedule: ScheduleName,
    /// Warmup fraction of the steps.
    pub warmup_ratio: f64,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Examples per micro-batch (default 4 for NLG, 16 for NLU).
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clipping (0 disables).
    pub max_grad_norm: f64,
    /// Maximum tokens per example; longer ones are truncated, with a count (default 256 for
    /// NLG, 128 for NLU).
    pub max_len: Option<usize>,
    /// Optimizer steps (overrides `epochs`; default 20, a short demonstration run).
    pub max_steps: Option<usize>,
    /// Epochs over the training set (used when `max_steps` is absent).
    pub epochs: Option<f64>,
    /// Use only the first N training examples.
    pub train_limit: Option<usize>,
    /// Evaluate on the first N held-out examples (default 8 for NLG, 500 for NLU).
    pub eval_limit: Option<usize>,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// End this process after step N (with a checkpoint); continue later with `resume`.
    pub stop_at_step: Option<usize>,
    /// The run's seed: data order, dropout, initialisation, head, MonteCLoRA noise.
    pub seed: u64,
    /// `cpu` | `wgpu` | `wgpu:cpu` | `cuda[:N]`.
    pub device: String,
    /// f32 | bf16.
    pub dtype: DtypeName,
    /// Run directory (default `runs/<task>-<method>`).
    pub output: Option<PathBuf>,
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Only evaluate this saved adapter directory.
    pub eval_only: Option<PathBuf>,
    /// Score the model before training too (`summary.json`'s `eval_before`); an experiment's
    /// learning-rate selection runs skip it, their "before" is never reported.
    pub eval_before: bool,
    /// Also write a full Hugging Face checkpoint with the adapter merged into the weights.
    pub merge_to: Option<PathBuf>,
    /// Also write the pooled features the head reads for every evaluated example, with the
    /// gold classes, to this JSON file (NLU; the experiments' feature picture).
    pub features_to: Option<PathBuf>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            task: TaskKind::Nlg,
            method: MethodName::Balora,
            preset: Preset::Paper,
            lambda_consistency: None,
            lambda_diversity: None,
            lambda_svd: None,
            teacher: TeacherSource::Adapter,
            teacher_model: None,
            model: None,
            train: None,
            eval: None,
            rank: 8,
            alpha: None,
            rslora: false,
            dropout: 0.0,
            target_modules: None,
            target_regex: false,
            pissa_niter: 4,
            lr: None,
            schedule: ScheduleName::Cosine,
            warmup_ratio: 0.03,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            batch_size: None,
            grad_accum: 1,
            max_grad_norm: 1.0,
            max_len: None,
            max_steps: None,
            epochs: None,
            train_limit: None,
            eval_limit: None,
            save_every: 0,
            stop_at_step: None,
            seed: 42,
            device: "cpu".into(),
            dtype: DtypeName::F32,
            output: None,
            resume: false,
            eval_only: None,
            eval_before: true,
            merge_to: None,
            features_to: None,
        }
    }
}
