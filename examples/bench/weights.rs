//! Checkpoints with seeded random weights in Hugging Face's layout (`config.json` +
//! `model.safetensors`), written once, so that both sides load the very same weights without a
//! download: step times do not depend on what the weights learned. GPT-2-small, and
//! SmolLM2-135M's shape for machines without the real weights (a GPU machine without network,
//! `scripts/gpu-check`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use balora::burn::tensor::TensorData;
use balora::io::tensors::write_safetensors;
use balora_testkit::pseudo_random;

/// How a tensor starts.
enum Init {
    /// GPT-2's and Llama's N(0, 0.02), as a uniform law with the same standard deviation.
    Normal,
    /// Every entry this value (norm weights and biases).
    Filled(f32),
}

/// The tensors (name, shape, start) of one architecture.
type Layout = Vec<(String, Vec<usize>, Init)>;

/// A random GPT-2-small (124M) in `dir` unless it is already there.
pub fn ensure_gpt2_small(dir: &Path) -> Result<()> {
    const VOCAB: usize = 50257;
    const POSITIONS: usize = 1024;
    const D: usize = 768;
    const LAYERS: usize = 12;
    const HEADS: usize = 12;
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
    let mut t: Layout = vec![
        (
            "transformer.wte.weight".into(),
            vec![VOCAB, D],
            Init::Normal,
        ),
        (
            "transformer.wpe.weight".into(),
            vec![POSITIONS, D],
            Init::Normal,
        ),
    ];
    let norm = |t: &mut Layout, name: String| {
        t.push((format!("{name}.weight"), vec![D], Init::Filled(1.0)));
        t.push((format!("{name}.bias"), vec![D], Init::Filled(0.0)));
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
            t.push((format!("{p}.{name}.weight"), vec![inp, out], Init::Normal));
            t.push((format!("{p}.{name}.bias"), vec![out], Init::Filled(0.0)));
        }
    }
    norm(&mut t, "transformer.ln_f".into());
    ensure(dir, "GPT-2-small", &config, t)
}

/// A random Llama with SmolLM2-135M-Instruct's configuration in `dir` unless it is already
/// there.
pub fn ensure_smollm2_shape(dir: &Path) -> Result<()> {
    const VOCAB: usize = 49152;
    const D: usize = 576;
    const FF: usize = 1536;
    const LAYERS: usize = 30;
    const HEADS: usize = 9;
    const KV: usize = 3;
    const HEAD_DIM: usize = 64;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": D,
        "intermediate_size": FF,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "vocab_size": VOCAB,
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "attention_bias": false,
        "mlp_bias": false
    });
    let mut t: Layout = vec![(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, D],
        Init::Normal,
    )];
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.push((format!("{p}.{norm}.weight"), vec![D], Init::Filled(1.0)));
        }
        // nn.Linear weights are stored [out, in].
        for (name, out, inp) in [
            ("self_attn.q_proj", HEADS * HEAD_DIM, D),
            ("self_attn.k_proj", KV * HEAD_DIM, D),
            ("self_attn.v_proj", KV * HEAD_DIM, D),
            ("self_attn.o_proj", D, HEADS * HEAD_DIM),
            ("mlp.gate_proj", FF, D),
            ("mlp.up_proj", FF, D),
            ("mlp.down_proj", D, FF),
        ] {
            t.push((format!("{p}.{name}.weight"), vec![out, inp], Init::Normal));
        }
    }
    t.push(("model.norm.weight".into(), vec![D], Init::Filled(1.0)));
    ensure(dir, "SmolLM2-135M-shaped", &config, t)
}

/// Write `layout`'s tensors (the random ones seeded 1, 2, … in order) and `config` into `dir`,
/// unless both files exist.
fn ensure(dir: &Path, what: &str, config: &serde_json::Value, layout: Layout) -> Result<()> {
    if dir.join("model.safetensors").exists() && dir.join("config.json").exists() {
        return Ok(());
    }
    eprintln!(
        "writing a random-weight {what} checkpoint to {} …",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let a = 0.02 * 3f64.sqrt();
    let mut seed = 0u64;
    let mut tensors = BTreeMap::new();
    for (name, shape, init) in layout {
        let n = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Normal => {
                seed += 1;
                pseudo_random(n, seed)
                    .into_iter()
                    .map(|v| (a * v) as f32)
                    .collect()
            }
            Init::Filled(v) => vec![v; n],
        };
        tensors.insert(name, TensorData::new(values, shape));
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    balora::io::fs::atomic_write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(config)?.as_bytes(),
    )?;
    Ok(())
}
