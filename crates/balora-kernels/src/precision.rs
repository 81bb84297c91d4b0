//! Mixed precision: which dtype trains over a base stored in another.
//!
//! A half-precision base (`--dtype bf16`) halves the frozen weights' memory, but low-rank
//! factors, optimizer moments and loss reductions in bf16 lose the small updates training is
//! made of (bf16 keeps 8 bits of mantissa). PEFT users get f32 there: peft's
//! `prepare_model_for_kbit_training` upcasts the trainable parameters, AdamW keeps f32 state,
//! and transformers upcasts the logits before the loss. balora does the same everywhere through
//! this one rule (docs/methods.md, "Mixed precision").

use burn::tensor::DType;

/// The dtype of everything trained or reduced over tensors of `base` dtype: f32 over bf16 or
/// f16, the base's own dtype otherwise (f32 stays f32, f64 gradient checks stay f64).
pub fn training_dtype(base: DType) -> DType {
    match base {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_trains_in_f32() {
        assert_eq!(training_dtype(DType::BF16), DType::F32);
        assert_eq!(training_dtype(DType::F16), DType::F32);
        assert_eq!(training_dtype(DType::F32), DType::F32);
        assert_eq!(training_dtype(DType::F64), DType::F64);
    }
}
