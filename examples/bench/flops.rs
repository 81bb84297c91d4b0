//! Model FLOPs of one training step, from `config.json`, for the model-FLOP utilisation
//! column: useful work ÷ step time ÷ the same side's GEMM rate.
//!
//! A forward costs `2·tokens·(P + V·d)` for the linear layers and the LM head plus `4·B·T²·d`
//! per layer for `QKᵀ` and `AV` (no causal halving). With frozen base weights the backward only
//! needs input gradients (`dX = dY·W`, the same count again; the `dW` half is skipped), so a
//! LoRA step is 2 forwards' worth; BA-LoRA adds the no-grad teacher forward (3). Adapter
//! matmuls (rank 8) and element-wise work are left out: they are not "model" FLOPs.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::job::BenchMethod;

/// FLOPs of one forward over `batch × seq` tokens.
pub fn forward_flops(model_dir: &Path, batch: usize, seq: usize) -> Result<f64> {
    let path = model_dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let c: Value = serde_json::from_str(&text)?;
    let get = |k: &str| -> Result<f64> {
        c[k].as_f64()
            .with_context(|| format!("{}: missing numeric key {k:?}", path.display()))
    };
    let (layers, d, vocab, linear_per_layer, attn_width) = match c["model_type"].as_str() {
        Some("gpt2") => {
            let d = get("n_embd")?;
            let inner = c["n_inner"].as_f64().unwrap_or(4.0 * d);
            (
                get("n_layer")?,
                d,
                get("vocab_size")?,
                4.0 * d * d + 2.0 * d * inner,
                d,
            )
        }
        Some("llama" | "qwen2" | "mistral") => {
            let d = get("hidden_size")?;
            let heads = get("num_attention_heads")?;
            let kv = c["num_key_value_heads"].as_f64().unwrap_or(heads);
            let hd = c["head_dim"].as_f64().unwrap_or(d / heads);
            let inter = get("intermediate_size")?;
            let linear = 2.0 * d * heads * hd + 2.0 * d * kv * hd + 3.0 * d * inter;
            (
                get("num_hidden_layers")?,
                d,
                get("vocab_size")?,
                linear,
                heads * hd,
            )
        }
        other => bail!(
            "{}: no FLOP formula for model_type {other:?}",
            path.display()
        ),
    };
    let (b, t) = (batch as f64, seq as f64);
    let linear = 2.0 * b * t * (layers * linear_per_layer + vocab * d);
    let attention = layers * 4.0 * b * t * t * attn_width;
    Ok(linear + attention)
}

/// Forwards' worth of work in one step of `method` (see the module docs).
pub fn step_forwards(method: BenchMethod) -> f64 {
    if method.has_teacher() { 3.0 } else { 2.0 }
}
