//! # balora-kernels
//!
//! Fused kernels for the parts of a fine-tuning step that Burn composes from many small
//! tensor ops, each with a hand-written backward: on flex (the CPU backend) they run as Burn
//! backend extensions over the raw buffers; on every other backend, and for dtypes the kernels
//! do not cover, the same functions compose ordinary tensor ops, so callers never branch.
//!
//! * [`vocab_terms`]: cross-entropy, teacher KL and entropy over the vocabulary in one pass per row,
//!   keeping six numbers per row for the backward instead of several `[N, V]` tensors (and,
//!   for the per-sample SVD term, each sample's Gram matrix, so the gradient stays in place);
//! * [`gelu`]: the exact GELU with its exact derivative on every backend (Burn's CubeCL
//!   backward is the tanh approximation's);
//! * [`activation()`]: GPT-2's tanh GELU and Llama's SiLU, one vectorised pass each way;
//! * [`lora_linear`]: a frozen linear layer with an optional LoRA branch, one multi-threaded GEMM
//!   per product and no gradient ever computed for the frozen weight.
//!
//! The kernels know nothing about models, adapters or losses; they take and return tensors.

#![warn(missing_docs)]

mod activation;
mod flex;
mod gemm;
mod linear;
#[cfg(feature = "mkl")]
mod mkl;
mod precision;
mod rows;
mod simd;
mod vocab;

pub use activation::{Activation, activation, activation_composed, gelu, gelu_composed};
pub use gemm::gemm_library;
pub use linear::{LowRank, gram, lora_linear, lora_linear_composed, matmul};
pub use precision::training_dtype;
pub use vocab::{VocabTermsConfig, gram_matrices, vocab_terms, vocab_terms_composed};
