//! What a step minimises: the task loss, plus BA-LoRA's regularisers against a teacher model
//! (docs/methods.md, "The teacher").

use balora_adapters::{AdapterSlots, teacher};
use balora_losses::task::{causal_lm_loss, classification_loss};
use balora_losses::{BaLoraLoss, Lambdas, LossOutput, Terms};
use balora_model::{CausalLm, SequenceClassifier, TokenBatch};
use burn::module::Module;
use burn::tensor::Tensor;

use crate::TrainError;

/// How a model's loss is computed on a batch.
pub trait Objective<M> {
    /// The loss of `batch` at optimizer step `step`.
    fn loss(
        &self,
        model: &M,
        batch: &TokenBatch,
        labels: &[i64],
        step: usize,
    ) -> Result<LossOutput, TrainError>;
    /// Whether labels are per token (NLG) or per example (NLU).
    fn token_labels(&self) -> bool;
}

/// BA-LoRA's regularisers and the frozen model their consistency term compares against.
struct Regularisers<M> {
    /// The regularisers and their schedule.
    loss: BaLoraLoss,
    /// The teacher: [`balora_adapters::teacher`] of the model being trained (the default,
    /// sharing every frozen tensor), or a separately loaded pretrained model.
    teacher: M,
}

impl<M: Module + AdapterSlots> Regularisers<M> {
    /// `balora` against the teacher of `model` as it is now (call before training).
    fn of(balora: Option<BaLoraLoss>, model: &M) -> Option<Self> {
        balora.map(|loss| Self {
            loss,
            teacher: teacher(model),
        })
    }
}

fn task_only(task: Tensor<1>) -> LossOutput {
    LossOutput {
        loss: task.clone(),
        task,
        terms: Terms {
            consistency: None,
            diversity: None,
            svd: None,
            lambdas: Lambdas::default(),
            skipped: Vec::new(),
        },
    }
}

/// Causal-LM objective (response-only cross-entropy), optionally with BA-LoRA's terms.
pub struct NlgObjective<M> {
    balora: Option<Regularisers<M>>,
}

impl<M: Module + AdapterSlots> NlgObjective<M> {
    /// The task loss, plus `balora`'s terms when given, against [`balora_adapters::teacher`]
    /// of `model` — take it before training starts (or a checkpoint is restored).
    pub fn new(balora: Option<BaLoraLoss>, model: &M) -> Self {
        Self {
            balora: Regularisers::of(balora, model),
        }
    }

    /// BA-LoRA's terms against a given teacher, e.g. a second pretrained model loaded from
    /// the checkpoint (`teacher = checkpoint`, docs/methods.md, "The teacher"): the same
    /// numbers as the default teacher at the cost of that model's memory.
    pub fn with_teacher(loss: BaLoraLoss, teacher: M) -> Self {
        Self {
            balora: Some(Regularisers {
                loss,
                teacher: teacher.freeze(),
            }),
        }
    }
}

impl<M: CausalLm> Objective<M> for NlgObjective<M> {
    fn loss(
        &self,
        model: &M,
        batch: &TokenBatch,
        labels: &[i64],
        step: usize,
    ) -> Result<LossOutput, TrainError> {
        let logits = model.logits(batch);
        match &self.balora {
            None => Ok(task_only(causal_lm_loss(logits, labels)?)),
            // the task cross-entropy shares the regularisers' fused pass over the vocabulary
            Some(r) => Ok(r
                .loss
                .nlg_causal_lm(step, logits, labels, || r.teacher.logits(batch).detach())?),
        }
    }
    fn token_labels(&self) -> bool {
        true
    }
}

/// Classification objective (cross-entropy), optionally with BA-LoRA's terms.
pub struct NluObjective<M> {
    balora: Option<Regularisers<M>>,
}

impl<M: Module + AdapterSlots> NluObjective<M> {
    /// The task loss, plus `balora`'s terms when given, against [`balora_adapters::teacher`]
    /// of `model` (its adapters' initial factors and the classifier head as it is now) —
    /// take it before training starts (or a checkpoint is restored).
    pub fn new(balora: Option<BaLoraLoss>, model: &M) -> Self {
        Self {
            balora: Regularisers::of(balora, model),
        }
    }
}

impl<M: SequenceClassifier> Objective<M> for NluObjective<M> {
    fn loss(
        &self,
        model: &M,
        batch: &TokenBatch,
        labels: &[i64],
        step: usize,
    ) -> Result<LossOutput, TrainError> {
        let logits = model.logits(batch);
        let task = classification_loss(logits.clone(), labels)?;
        match &self.balora {
            None => Ok(task_only(task)),
            Some(r) => Ok(r
                .loss
                .nlu(step, task, logits, || r.teacher.logits(batch).detach())?),
        }
    }
    fn token_labels(&self) -> bool {
        false
    }
}
