//! `BaLoraLoss`: the task loss plus the scheduled, weighted regularisers of one step.

use balora_kernels::{VocabTermsConfig, gram_matrices, vocab_terms};
use burn::tensor::Tensor;

use crate::task::{check_labels, mean_cross_entropy, shifted_targets};
use crate::{Lambdas, LossError, RegularizerConfig, Task, TokenMask, nlg, nlu};

/// The regularisers of one step, each `None` when its λ is 0 at this step or its inputs are
/// degenerate (see `skipped`).
#[derive(Debug, Clone)]
pub struct Terms {
    /// Consistency (unweighted).
    pub consistency: Option<Tensor<1>>,
    /// Diversity (unweighted).
    pub diversity: Option<Tensor<1>>,
    /// SVD (unweighted).
    pub svd: Option<Tensor<1>>,
    /// λ1, λ2, λ3 at this step (after schedules and adaptive λ1).
    pub lambdas: Lambdas,
    /// Why a term with λ > 0 was skipped (for a logged warning).
    pub skipped: Vec<String>,
}

/// A step's total loss with its parts, for the backward pass and for logging.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// `L_task + λ1·L_C + λ2·L_D + λ3·L_S`.
    pub loss: Tensor<1>,
    /// The task loss as given.
    pub task: Tensor<1>,
    /// The regularisers.
    pub terms: Terms,
}

/// BA-LoRA's objective for a run of `total_steps` optimizer steps (schedules need the total).
///
/// The teacher's logits are requested through a closure, called only when the consistency
/// term is active this step (λ1(t) > 0): the caller runs its teacher — the model's base with
/// the frozen initial adapter, or a separately loaded checkpoint — under no-grad
/// (docs/methods.md, "The teacher").
#[derive(Debug, Clone)]
pub struct BaLoraLoss {
    config: RegularizerConfig,
    total_steps: usize,
}

impl BaLoraLoss {
    /// Validate `config` and fix the run length.
    pub fn new(config: RegularizerConfig, total_steps: usize) -> Result<Self, LossError> {
        config.validate()?;
        Ok(Self {
            config,
            total_steps,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RegularizerConfig {
        &self.config
    }

    /// NLU: classification logits `[B, C]`.
    pub fn nlu<F>(
        &self,
        step: usize,
        task: Tensor<1>,
        student: Tensor<2>,
        teacher: F,
    ) -> Result<LossOutput, LossError>
    where
        F: FnOnce() -> Tensor<2>,
    {
        self.expect_task(Task::Nlu)?;
        // the terms are computed in f32 over half-precision logits (docs/methods.md)
        let dtype = balora_kernels::training_dtype(student.dtype());
        let student = student.cast(dtype);
        let teacher = || teacher().cast(dtype);
        let lambdas = self.config.lambdas_at(step, self.total_steps);
        let mut skipped = Vec::new();
        let consistency = if lambdas.consistency > 0.0 {
            Some(nlu::consistency(student.clone(), teacher())?)
        } else {
            None
        };
        let diversity = if lambdas.diversity > 0.0 {
            let d = nlu::diversity(student.clone())?;
            if d.is_none() {
                skipped.push("diversity: batch of 1 (a covariance needs B ≥ 2)".to_string());
            }
            d
        } else {
            None
        };
        let svd = if lambdas.svd > 0.0 {
            Some(nlu::svd(
                student,
                self.config.svd_k,
                self.config.svd_objective,
                self.config.svd_eps,
            )?)
        } else {
            None
        };
        Ok(combine(task, consistency, diversity, svd, lambdas, skipped))
    }

    /// NLG: language-model logits `[B, T, V]` with host labels `[B, T]` (−100 = ignored) and
    /// a task loss computed by the caller.
    pub fn nlg<F>(
        &self,
        step: usize,
        task: Tensor<1>,
        student: Tensor<3>,
        labels: &[i64],
        teacher: F,
    ) -> Result<LossOutput, LossError>
    where
        F: FnOnce() -> Tensor<3>,
    {
        self.nlg_terms(step, Some(task), student, labels, teacher)
    }

    /// NLG with the causal-LM cross-entropy ([`crate::task::causal_lm_loss`]) as the task loss,
    /// computed in the same fused pass over the vocabulary as the consistency and diversity
    /// terms: one read of the logits, one `[B·T, V]` gradient for all three.
    pub fn nlg_causal_lm<F>(
        &self,
        step: usize,
        student: Tensor<3>,
        labels: &[i64],
        teacher: F,
    ) -> Result<LossOutput, LossError>
    where
        F: FnOnce() -> Tensor<3>,
    {
        self.nlg_terms(step, None, student, labels, teacher)
    }

    /// `task: None` computes the causal-LM cross-entropy in the fused pass.
    fn nlg_terms<F>(
        &self,
        step: usize,
        task: Option<Tensor<1>>,
        student: Tensor<3>,
        labels: &[i64],
        teacher: F,
    ) -> Result<LossOutput, LossError>
    where
        F: FnOnce() -> Tensor<3>,
    {
        self.expect_task(Task::Nlg)?;
        let c = &self.config;
        // the terms are computed in f32 over half-precision logits (docs/methods.md)
        let dtype = balora_kernels::training_dtype(student.dtype());
        let student = student.cast(dtype);
        let teacher = || teacher().cast(dtype);
        let [b, t, v] = student.dims();
        if task.is_none() {
            // the labels are targets here, not only a mask: they must be token ids
            check_labels(labels, [b, t, v])?;
        }
        let mask = TokenMask::new(labels, [b, t], c.mask, &student)?;
        let mut lambdas = c.lambdas_at(step, self.total_steps);
        let mut skipped = Vec::new();
        let mut skip = |term: &str, why: &str| skipped.push(format!("{term}: {why}"));
        let teacher = if lambdas.consistency > 0.0 {
            let teacher = teacher().detach();
            if teacher.dims() != student.dims() {
                return Err(LossError::Shape {
                    what: "teacher logits",
                    expected: format!("{:?} (the student's shape)", student.dims()),
                    found: teacher.dims().to_vec(),
                });
            }
            if let Some(adaptive) = &c.adaptive_consistency
                && let Some(h) = nlg::teacher_entropy(teacher.clone(), &mask, c.temperature)?
            {
                lambdas.consistency = adaptive.lambda(c.lambda_consistency, h, v);
            }
            Some(teacher)
        } else {
            None
        };
        let want_entropy = lambdas.diversity > 0.0 && mask.count() > 0;
        let want_ce = task.is_none() && t >= 2;
        let (targets, labelled) = if want_ce {
            let (targets, n) = shifted_targets(labels, t);
            (Some(targets), n)
        } else {
            (None, 0)
        };
        let want_norms = lambdas.svd > 0.0 && nlg::needs_row_norms(c, v);
        let gram_block = if lambdas.svd > 0.0 {
            nlg::gram_block(c, t, v)
        } else {
            0
        };
        let fused = want_ce || teacher.is_some() || want_entropy || want_norms || gram_block > 0;
        let terms = fused.then(|| {
            let config = VocabTermsConfig {
                targets,
                temperature: c.temperature,
                entropy: want_entropy,
                square_sum: want_norms,
                gram_block,
                ..nlg::entropy_config(c.top_k_entropy, c.entropy_eps)
            };
            vocab_terms(nlg::rows(student.clone()), teacher.map(nlg::rows), &config)
        });
        let task = match (task, &terms) {
            (Some(task), _) => task,
            (None, Some(terms)) if want_ce => mean_cross_entropy(terms.clone(), labelled),
            _ => Tensor::zeros([1], (&student.device(), student.dtype())),
        };
        let consistency = match &terms {
            Some(terms) if lambdas.consistency > 0.0 => {
                let kl = nlg::column(terms, 1);
                let term = nlg::reduce_consistency(kl, &mask, c.kl_reduction, c.temperature);
                if term.is_none() {
                    skip("consistency", "no selected token in the batch");
                }
                term
            }
            _ => None,
        };
        let diversity = if lambdas.diversity > 0.0 {
            let term = terms
                .as_ref()
                .filter(|_| want_entropy)
                .and_then(|terms| nlg::reduce_diversity(nlg::column(terms, 2), &mask));
            if term.is_none() {
                skip("diversity", "no selected token in the batch");
            }
            term
        } else {
            None
        };
        let svd = if lambdas.svd > 0.0 {
            let row_sq = terms
                .as_ref()
                .filter(|_| want_norms)
                .map(|t| nlg::column(t, 3));
            let gram = terms
                .as_ref()
                .filter(|_| gram_block > 0)
                .map(|t| gram_matrices(t.clone(), gram_block));
            let term = nlg::svd_fused(student, &mask, c, row_sq, gram)?;
            if term.is_none() {
                skip(
                    "svd",
                    "fewer than 2 selected tokens, or a vanishing denominator",
                );
            }
            term
        } else {
            None
        };
        Ok(combine(task, consistency, diversity, svd, lambdas, skipped))
    }

    fn expect_task(&self, task: Task) -> Result<(), LossError> {
        if self.config.task == task {
            Ok(())
        } else {
            Err(LossError::InvalidConfig(format!(
                "the regulariser is configured for {:?} but was called with {task:?} logits",
                self.config.task
            )))
        }
    }
}

fn combine(
    task: Tensor<1>,
    consistency: Option<Tensor<1>>,
    diversity: Option<Tensor<1>>,
    svd: Option<Tensor<1>>,
    lambdas: Lambdas,
    skipped: Vec<String>,
) -> LossOutput {
    let mut loss = task.clone();
    let weighted = [
        (&consistency, lambdas.consistency),
        (&diversity, lambdas.diversity),
        (&svd, lambdas.svd),
    ];
    for (term, lambda) in weighted {
        if let Some(term) = term {
            loss = loss + term.clone().mul_scalar(lambda);
        }
    }
    LossOutput {
        loss,
        task,
        terms: Terms {
            consistency,
            diversity,
            svd,
            lambdas,
            skipped,
        },
    }
}
