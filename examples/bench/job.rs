//! One unit of benchmark work, described as JSON so that the same description drives our
//! worker (`bench --worker '<json>'`) and the PyTorch + PEFT reference
//! (`python bench/reference/bench.py '<json>'`). Each side runs one job per process, so peak
//! memory is per job, and prints one JSON result line on stdout.

use std::path::PathBuf;

use balora::losses::{LossError, Preset, Task};
use balora::train::{Method, MethodName};
use serde::{Deserialize, Serialize};

/// The rows of the training-step table, under the same names on both sides (the reference
/// reads them from the job's JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BenchMethod {
    /// LoRA on q and v.
    Lora,
    /// LoRA on every linear layer.
    LoraAll,
    /// PiSSA (randomized SVD, 4 power iterations) on q and v.
    Pissa,
    /// BA-LoRA, `paper` preset.
    BaloraPaper,
    /// BA-LoRA, `iclr2026` preset.
    BaloraIclr2026,
    /// MonteCLoRA on q and v.
    Monteclora,
}

impl BenchMethod {
    /// The library's method and whether it adapts every linear layer (else q, v).
    pub fn setup(self) -> Result<(Method, bool), LossError> {
        let method = |name, preset| Method::new(name, Task::Nlg, 4, preset);
        Ok(match self {
            Self::Lora => (Method::Lora, false),
            Self::LoraAll => (Method::Lora, true),
            Self::Pissa => (method(MethodName::Pissa, Preset::Paper)?, false),
            Self::BaloraPaper => (method(MethodName::Balora, Preset::Paper)?, false),
            Self::BaloraIclr2026 => (method(MethodName::Balora, Preset::Iclr2026)?, false),
            Self::Monteclora => (method(MethodName::Monteclora, Preset::Paper)?, false),
        })
    }

    /// Whether a step also runs the teacher's forward (for the FLOP count).
    pub fn has_teacher(self) -> bool {
        matches!(self, Self::BaloraPaper | Self::BaloraIclr2026)
    }
}

impl std::fmt::Display for BenchMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

/// A benchmark job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// `warmup + steps` optimizer steps of `method` on a fixed batch of `batch × seq` tokens.
    Train {
        model_dir: PathBuf,
        method: BenchMethod,
        steps: usize,
        warmup: usize,
        batch: usize,
        seq: usize,
        rank: usize,
        seed: u64,
    },
    /// `y = x·W` with `x [m, k]`, `W [k, n]`, then the gradients of `sum(y)` for both.
    Gemm {
        m: usize,
        k: usize,
        n: usize,
        reps: usize,
        warmup: usize,
    },
    /// PiSSA initialisation of every linear layer (`niter` 0: full SVD).
    PissaInit {
        model_dir: PathBuf,
        niter: usize,
        rank: usize,
    },
    /// Greedy decoding with the KV cache of `new_tokens` tokens (no stop token) after `batch`
    /// prompts of `prompt` tokens each, `warmup + reps` times.
    Decode {
        model_dir: PathBuf,
        batch: usize,
        prompt: usize,
        new_tokens: usize,
        reps: usize,
        warmup: usize,
    },
}

/// What a side reports for a job (the fields that apply).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Seconds per measured step / repetition (warm-up excluded).
    #[serde(default)]
    pub seconds: Vec<f64>,
    /// Total loss per step, warm-up included (both sides start from the same weights and
    /// tokens, so step 1 must agree).
    #[serde(default)]
    pub loss: Vec<f64>,
    /// Peak resident memory of the process, MB.
    #[serde(default)]
    pub peak_rss_mb: f64,
    /// Trainable parameters.
    #[serde(default)]
    pub trainable: usize,
    /// Library versions of the side.
    #[serde(default)]
    pub versions: String,
    /// The new tokens of each row of a decoding job (both sides decode greedily from the
    /// same weights and prompts, so they must agree).
    #[serde(default)]
    pub tokens: Vec<Vec<u32>>,
}

/// Median of `xs` (0 for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// The token ids of row `b`, position `t` (both sides use this formula, so they see the same
/// batch without sharing a file).
pub fn token(b: usize, t: usize, vocab: usize) -> u32 {
    ((b * 131 + t * 7919 + 17) % vocab) as u32
}
