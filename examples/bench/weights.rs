//! A GPT-2-small checkpoint with seeded random weights, written once in Hugging Face's layout
//! (`config.json` + `model.safetensors`) so that both sides load the very same weights without
//! a download: step times do not depend on what the weights learned.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use balora::burn::tensor::TensorData;
use balora::io::tensors::write_safetensors;
use balora_testkit::pseudo_random;

const VOCAB: usize = 50257;
const POSITIONS: usize = 1024;
const D: usize = 768;
const LAYERS: usize = 12;
const HEADS: usize = 12;

/// Write the checkpoint into `dir` unless it is already there.
pub fn ensure_gpt2_small(dir: &Path) -> Result<()> {
    if dir.join("model.safetensors").exists() && dir.join("config.json").exists() {
        return Ok(());
    }
    eprintln!(
        "writing a random-weight GPT-2-small checkpoint to {} …",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seed = 0u64;
    // GPT-2's init: N(0, 0.02); a uniform law with the same standard deviation is enough here.
    let mut random = |shape: Vec<usize>| {
        seed += 1;
        let n = shape.iter().product();
        let a = 0.02 * 3f64.sqrt();
        let values: Vec<f32> = pseudo_random(n, seed)
            .into_iter()
            .map(|v| (a * v) as f32)
            .collect();
        TensorData::new(values, shape)
    };
    let filled = |shape: Vec<usize>, v: f32| {
        let n = shape.iter().product();
        TensorData::new(vec![v; n], shape)
    };
    let mut t = BTreeMap::new();
    t.insert("transformer.wte.weight".into(), random(vec![VOCAB, D]));
    t.insert("transformer.wpe.weight".into(), random(vec![POSITIONS, D]));
    let norm = |t: &mut BTreeMap<String, TensorData>, name: String| {
        t.insert(format!("{name}.weight"), filled(vec![D], 1.0));
        t.insert(format!("{name}.bias"), filled(vec![D], 0.0));
    };
    for i in 0..LAYERS {
        let p = format!("transformer.h.{i}");
        norm(&mut t, format!("{p}.ln_1"));
        norm(&mut t, format!("{p}.ln_2"));
        // Conv1D weights are stored [in, out].
        for (name, inp, out) in [
            ("attn.c_attn", D, 3 * D),
            ("attn.c_proj", D, D),
            ("mlp.c_fc", D, 4 * D),
            ("mlp.c_proj", 4 * D, D),
        ] {
            t.insert(format!("{p}.{name}.weight"), random(vec![inp, out]));
            t.insert(format!("{p}.{name}.bias"), filled(vec![out], 0.0));
        }
    }
    norm(&mut t, "transformer.ln_f".into());
    write_safetensors(&dir.join("model.safetensors"), &t)?;
    let config = serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": VOCAB,
        "n_positions": POSITIONS,
        "n_embd": D,
        "n_layer": LAYERS,
        "n_head": HEADS,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true,
        "bos_token_id": 50256,
        "eos_token_id": 50256
    });
    balora::io::fs::atomic_write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    Ok(())
}
