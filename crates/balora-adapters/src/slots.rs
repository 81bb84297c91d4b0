//! The seam between models and adapters: a model lists its linear layers by module path, and
//! injection attaches adapters to the targeted ones.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::{AdapterError, LoraAdapter, LoraConfig, LoraLinear, Variant};

/// A model whose linear layers are [`LoraLinear`] slots, addressed by their Hugging Face
/// module paths (`model.layers.0.self_attn.q_proj`), which are also the paths in peft's adapter
/// keys (`base_model.model.<path>.lora_A.weight`).
///
/// Models implement this by visiting their fields in a fixed order; the trainer and the
/// adapter file format use it without knowing the architecture.
pub trait AdapterSlots {
    /// Visit every adaptable linear layer, read-only.
    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear));
    /// Visit every adaptable linear layer, mutably.
    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear));

    /// Whether the checkpoint stores these layers' weights transposed, `[in, out]` (GPT-2's
    /// `Conv1D`; peft's `fan_in_fan_out`). The slots themselves are always `[out, in]`.
    fn fan_in_fan_out(&self) -> bool {
        false
    }

    /// The modules this model trains in full beside its adapters — peft's `modules_to_save`,
    /// e.g. `["classifier"]` for a sequence classifier's fresh head. Empty by default.
    fn modules_to_save(&self) -> Vec<String> {
        Vec::new()
    }

    /// Visit every tensor of [`Self::modules_to_save`] by its Hugging Face path
    /// (`classifier.out_proj.weight`): what an adapter file must carry besides `lora_A` /
    /// `lora_B` for the trained model to be reproduced.
    fn visit_saved_modules(&self, _f: &mut dyn FnMut(&str, SavedParam<'_>)) {}

    /// Visit the same tensors mutably (loading an adapter replaces them).
    fn visit_saved_modules_mut(&mut self, _f: &mut dyn FnMut(&str, SavedParamMut<'_>)) {}
}

/// A tensor of a module trained in full (see [`AdapterSlots::modules_to_save`]), by rank.
#[derive(Debug, Clone, Copy)]
pub enum SavedParam<'a> {
    /// A bias.
    Vector(&'a Param<Tensor<1>>),
    /// A weight.
    Matrix(&'a Param<Tensor<2>>),
}

/// A mutable tensor of a module trained in full, by rank.
#[derive(Debug)]
pub enum SavedParamMut<'a> {
    /// A bias.
    Vector(&'a mut Param<Tensor<1>>),
    /// A weight.
    Matrix(&'a mut Param<Tensor<2>>),
}

/// Summary of an injection, for logs (`trainable params: … || all params: …`, as peft prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionReport {
    /// Paths of the layers that received an adapter, in model order.
    pub adapted: Vec<String>,
    /// Number of trainable adapter parameters.
    pub trainable_params: usize,
}

/// Freeze the whole model, then attach an adapter configured by `config` to every slot that
/// `config.target_modules` selects. Only adapter factors require gradients afterwards, so an
/// optimizer over the model updates nothing else.
///
/// Fails if the config is invalid, a target layer cannot take the adapter (rank too large for
/// PiSSA, SVD failure), or no layer matches the targets at all.
pub fn inject<M>(model: M, config: &LoraConfig) -> Result<(M, InjectionReport), AdapterError>
where
    M: Module + AdapterSlots,
{
    config.validate()?;
    let matcher = config.target_modules.matcher()?;
    let mut model = model.freeze();
    let mut adapted = Vec::new();
    let mut count = 0usize;
    let mut example = String::new();
    let mut result = Ok(());
    model.visit_slots_mut(&mut |path, slot| {
        count += 1;
        if example.is_empty() {
            example = path.to_string();
        }
        if result.is_err() || !matcher.matches(path) {
            return;
        }
        result = slot.attach(path, config);
        adapted.push(path.to_string());
    });
    result?;
    if adapted.is_empty() {
        return Err(AdapterError::NoTargetMatched {
            targets: config.target_modules.to_string(),
            count,
            example,
        });
    }
    let trainable_params = trainable_adapter_params(&model);
    Ok((
        model,
        InjectionReport {
            adapted,
            trainable_params,
        },
    ))
}

/// BA-LoRA's teacher as a model value (docs/methods.md, "The teacher"): a frozen clone of
/// `model` whose every slot is its [`LoraLinear::teacher`] — the base plus the adapter's
/// initial factors (PiSSA), or the bare base (Gaussian init).
///
/// Every frozen tensor is shared with `model` (Burn tensors are reference-counted handles, and
/// training replaces only the trained ones), so the teacher costs no weight memory and the
/// model itself needs no teacher mode. Modules trained in full
/// ([`AdapterSlots::modules_to_save`], a classifier head) are shared as they are at the call:
/// take the teacher of the model as initialised, before training or restoring a checkpoint.
pub fn teacher<M: Module + AdapterSlots>(model: &M) -> M {
    let mut teacher = model.clone().freeze();
    teacher.visit_slots_mut(&mut |_, slot| *slot = slot.teacher());
    teacher
}

/// Number of trainable adapter parameters (`r·(in + out)` per adapted layer, plus the
/// variant's, `r + N` with MonteCLoRA); the tensors of [`AdapterSlots::modules_to_save`] are
/// not counted.
pub fn trainable_adapter_params<M: AdapterSlots>(model: &M) -> usize {
    let mut n = 0;
    model.visit_slots(&mut |_, slot| {
        n += slot.adapter().map_or(0, LoraAdapter::num_trainable);
    });
    n
}

/// Merge every adapter into its base weight (see [`LoraLinear::merge`]).
pub fn merge_all<M: AdapterSlots>(model: &mut M) {
    model.visit_slots_mut(&mut |_, slot| {
        slot.merge();
    });
}

/// Undo [`merge_all`].
pub fn unmerge_all<M: AdapterSlots>(model: &mut M) {
    model.visit_slots_mut(&mut |_, slot| {
        slot.unmerge();
    });
}

/// Draw every adapter variant's random inputs (MonteCLoRA's noise) for draw number `step`,
/// each from a seed derived from `(seed, step, layer path)`: reproducible and resumable.
pub fn draw_variants<M: AdapterSlots>(model: &mut M, seed: u64, step: u64) {
    model.visit_slots_mut(&mut |path, slot| {
        let [_, inp] = slot.dims();
        if let Some(variant) = slot.adapter_mut().and_then(LoraAdapter::variant_mut) {
            let step_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step);
            variant.draw(inp, crate::init::path_seed(step_seed, path));
        }
    });
}

/// Forget the drawn inputs (evaluation then uses the mean adapter even on an autodiff device).
pub fn clear_variants<M: AdapterSlots>(model: &mut M) {
    model.visit_slots_mut(&mut |_, slot| {
        if let Some(variant) = slot.adapter_mut().and_then(LoraAdapter::variant_mut) {
            variant.clear();
        }
    });
}

/// The variants' loss term: the mean over adapted layers of each one's
/// [`Variant::loss`] (MonteCLoRA's `β·(KL_Dir + KL_W + KL_N) + [Σ w²]`); `None` when no
/// layer has drawn inputs.
pub fn variant_loss<M: AdapterSlots>(model: &M) -> Option<Tensor<1>> {
    let mut terms = Vec::new();
    model.visit_slots(&mut |_, slot| {
        if let Some(term) = slot
            .adapter()
            .and_then(LoraAdapter::variant)
            .and_then(Variant::loss)
        {
            terms.push(term);
        }
    });
    let n = terms.len();
    let sum = terms.into_iter().reduce(|a, b| a + b)?;
    Some(sum.div_scalar(n as f64))
}
