//! From a TOML run file and command-line options to a checked [`FinetuneConfig`], and from
//! that to the adapter and loop settings — everything decided before a file is opened, so a
//! bad setting is refused at once, naming the key (docs/reliability.md, "Loading").

use std::path::Path;

use balora_adapters::{LoraConfig, TargetModules};
use balora_losses::Task;
use balora_train::schedule::LrSchedule;
use balora_train::{LoopConfig, Method, TorchAdamWConfig};
use serde_json::Value;

use super::{
    FinetuneConfig, FinetuneError, MethodName, ScheduleName, TaskKind, TeacherSource, setting,
};

impl FinetuneConfig {
    /// The keys of the TOML run file `file` (if any) with `given` over them — the command
    /// line's options as a JSON object, `null` where an option was not given — checked with
    /// [`validate`](Self::validate). Unknown keys and wrong types are refused, naming the
    /// file or "the command line".
    pub fn resolve(file: Option<&Path>, given: Value) -> Result<Self, FinetuneError> {
        let mut merged = serde_json::Map::new();
        let source = match file {
            Some(path) => {
                let bytes = balora_io::fs::read(path)?;
                let bad = |reason: String| FinetuneError::File {
                    path: path.to_path_buf(),
                    reason,
                };
                let text = String::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
                let value = serde_json::to_value(table).map_err(|e| bad(e.to_string()))?;
                merged.extend(value.as_object().cloned().unwrap_or_default());
                path.display().to_string()
            }
            None => "the command line".into(),
        };
        if let Value::Object(given) = given {
            merged.extend(given.into_iter().filter(|(_, v)| !v.is_null()));
        }
        let config: Self =
            serde_json::from_value(Value::Object(merged)).map_err(|e| FinetuneError::File {
                path: source.into(),
                reason: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every setting that needs no file — the method and its regularisers, the
    /// teacher, the adapter, the loop — and return the method.
    pub fn validate(&self) -> Result<Method, FinetuneError> {
        let task = match self.task {
            TaskKind::Nlg => Task::Nlg,
            TaskKind::Nlu => Task::Nlu,
        };
        let checkpoint_teacher = self.teacher == TeacherSource::Checkpoint;
        if !checkpoint_teacher && let Some(dir) = &self.teacher_model {
            return Err(setting(
                "teacher_model",
                dir.display(),
                "only read with teacher = checkpoint",
            ));
        }
        if checkpoint_teacher && (self.task != TaskKind::Nlg || self.method != MethodName::Balora) {
            return Err(setting(
                "teacher",
                "checkpoint",
                "applies to method balora on task nlg (a classifier's new head has no \
                 pretrained teacher)",
            ));
        }
        if self.task != TaskKind::Nlu
            && let Some(path) = &self.features_to
        {
            return Err(setting(
                "features_to",
                path.display(),
                "pooled features are a classifier's: task = nlu",
            ));
        }
        let mut method = Method::new(self.method, task, self.pissa_niter, self.preset)?;
        if let Some(r) = method.regularizers_mut() {
            r.lambda_consistency = self.lambda_consistency.unwrap_or(r.lambda_consistency);
            r.lambda_diversity = self.lambda_diversity.unwrap_or(r.lambda_diversity);
            r.lambda_svd = self.lambda_svd.unwrap_or(r.lambda_svd);
            r.validate()?;
        }
        for (key, value) in [("max_len", self.max_len), ("train_limit", self.train_limit)] {
            if value == Some(0) {
                return Err(setting(key, 0, "at least 1"));
            }
        }
        if let Some(epochs) = self.epochs
            && !(epochs.is_finite() && epochs > 0.0)
        {
            return Err(setting("epochs", epochs, "a finite number of epochs > 0"));
        }
        // the adapter and the loop as they will be built (any target list, any data size)
        self.adapter_config(&method, &["q_proj"])?;
        self.loop_config(1, 1e-4, 1).validate()?;
        Ok(method)
    }

    /// The adapter: rank, α (default 2r), targets (default `default_targets`), the method's
    /// initialisation and variant, the run's seed.
    pub fn adapter_config(
        &self,
        method: &Method,
        default_targets: &[&str],
    ) -> Result<LoraConfig, FinetuneError> {
        let targets = match &self.target_modules {
            Some(t) if self.target_regex => TargetModules::Regex(t.clone()),
            Some(t) => TargetModules::names(t.split(',').map(str::trim).filter(|s| !s.is_empty())),
            None => TargetModules::names(default_targets.iter().copied()),
        };
        let config = method.adapter_config(
            LoraConfig::new(self.rank, targets)
                .with_lora_alpha(self.alpha.unwrap_or(2.0 * self.rank as f64))
                .with_use_rslora(self.rslora)
                .with_lora_dropout(self.dropout)
                .with_seed(self.seed),
        );
        config.validate()?;
        Ok(config)
    }

    /// The loop over `examples` training examples: `max_steps`, else `epochs` over the data,
    /// else a short demonstration run of 20 steps (a few minutes on two CPU cores).
    pub fn loop_config(&self, examples: usize, lr: f64, batch_size: usize) -> LoopConfig {
        let batch_size = self.batch_size.unwrap_or(batch_size);
        let max_steps = match (self.max_steps, self.epochs) {
            (Some(steps), _) => steps,
            (None, Some(epochs)) => ((examples as f64 * epochs)
                / batch_size.max(1).saturating_mul(self.grad_accum.max(1)) as f64)
                .ceil()
                .max(1.0) as usize,
            (None, None) => 20,
        };
        LoopConfig {
            lr: self.lr.unwrap_or(lr),
            schedule: match self.schedule {
                ScheduleName::Cosine => LrSchedule::Cosine,
                ScheduleName::Linear => LrSchedule::Linear,
                ScheduleName::Constant => LrSchedule::Constant,
            },
            warmup_ratio: self.warmup_ratio,
            adamw: TorchAdamWConfig {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            },
            batch_size,
            grad_accum: self.grad_accum,
            max_grad_norm: Some(self.max_grad_norm).filter(|v| *v > 0.0),
            max_steps,
            save_every: self.save_every,
            seed: self.seed,
            stop_at_step: self.stop_at_step,
        }
    }
}
