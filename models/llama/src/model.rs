//! `LlamaForCausalLM`: RMSNorm, rotate-half RoPE, grouped-query attention, a gated MLP
//! (SiLU; Gemma's tanh-approximated GELU).
//! Field names are the Hugging Face keys (`model.layers.0.self_attn.q_proj`), so checkpoints
//! load without remapping and adapter paths equal peft's.

use balora_adapters::{AdapterSlots, LoraLinear};
use balora_kernels::{Activation, activation};
use balora_model::attention::{AttentionMask, repeat_kv, scaled_dot_product};
use balora_model::{CausalLm, TokenBatch};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, RmsNorm, RmsNormConfig};
use burn::tensor::{DType, Device, Tensor};

use crate::config::LlamaConfig;
use crate::rope::{Rope, apply_rotary};

/// Self-attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[heads·d, hidden]`.
    pub q_proj: LoraLinear,
    /// `[kv_heads·d, hidden]`.
    pub k_proj: LoraLinear,
    /// `[kv_heads·d, hidden]`.
    pub v_proj: LoraLinear,
    /// `[hidden, heads·d]`.
    pub o_proj: LoraLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Cached keys and values of one layer, `[B, kv_heads, T_past, d]` (before head repetition).
#[derive(Debug, Clone)]
pub struct LayerCache {
    k: Tensor<4>,
    v: Tensor<4>,
}

/// Per-layer key/value caches for incremental decoding, with the key mask of the cached
/// columns (`[B, T_past]`: 1 real, 0 padding) so that left-padded batches and rows that feed
/// masked pads after they finish (batched generation) keep their padding hidden and their
/// positions counting real tokens only.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    key_mask: Vec<u8>,
}

impl KvCache {
    /// Columns already cached (padding included).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |c| c.k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything a forward pass needs besides the hidden states.
struct Context<'a> {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: AttentionMask<'a>,
}

impl Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: &Context<'_>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let split = |y: Tensor<3>, n| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()), h);
        let k = split(self.k_proj.forward(x.clone()), kvh);
        let v = split(self.v_proj.forward(x), kvh);
        let q = apply_rotary(q, ctx.cos.clone(), ctx.sin.clone());
        let mut k = apply_rotary(k, ctx.cos.clone(), ctx.sin.clone());
        let mut v = v;
        if let Some(slot) = cache {
            if let Some(past) = slot.take() {
                k = Tensor::cat(vec![past.k, k], 2);
                v = Tensor::cat(vec![past.v, v], 2);
            }
            *slot = Some(LayerCache {
                k: k.clone(),
                v: v.clone(),
            });
        }
        let out = scaled_dot_product(q, repeat_kv(k, h / kvh), repeat_kv(v, h / kvh), ctx.mask);
        let out = out.swap_dims(1, 2).reshape([b, t, h * d]);
        self.o_proj.forward(out)
    }
}

/// The gated MLP `down(act(gate(x)) ⊙ up(x))`: SiLU (Llama), GELU-tanh (Gemma's GeGLU).
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[intermediate, hidden]`.
    pub gate_proj: LoraLinear,
    /// `[intermediate, hidden]`.
    pub up_proj: LoraLinear,
    /// `[hidden, intermediate]`.
    pub down_proj: LoraLinear,
    #[module(skip)]
    act: Activation,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = activation(self.gate_proj.forward(x.clone()), self.act);
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Grouped-query self-attention with RoPE (`q_proj`, `k_proj`, `v_proj`, `o_proj`).
    pub self_attn: Attention,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// The gated MLP (`gate_proj`, `up_proj`, `down_proj`).
    pub mlp: Mlp,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: &Context<'_>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), ctx, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// The decoder stack (`model.*` in the checkpoint).
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embeddings `[V, hidden]`.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
}

/// A Llama-family causal language model.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    /// The decoder.
    pub model: LlamaModel,
    /// Output projection `[V, hidden]`; `None` when tied to the input embeddings.
    pub lm_head: Option<LoraLinear>,
    #[module(skip)]
    config: LlamaConfig,
}

impl LlamaForCausalLM {
    /// A model of `config` with zero weights (to be loaded), frozen. The config must have
    /// passed [`ModelConfig::validate`](balora_model::ModelConfig::validate) (an activation
    /// it names but this crate lacks falls back to SiLU).
    pub fn init(config: &LlamaConfig, device: &Device, dtype: DType) -> Self {
        let act = config.activation().unwrap_or(Activation::Silu);
        let (hd, d) = (config.hidden_size, config.head_dim());
        let (h, kvh) = (config.num_attention_heads, config.kv_heads());
        let norm = || {
            RmsNormConfig::new(hd)
                .with_epsilon(config.rms_norm_eps)
                .init(device)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: LoraLinear::zeros(h * d, hd, config.qkv_bias(), device, dtype),
                    k_proj: LoraLinear::zeros(kvh * d, hd, config.qkv_bias(), device, dtype),
                    v_proj: LoraLinear::zeros(kvh * d, hd, config.qkv_bias(), device, dtype),
                    o_proj: LoraLinear::zeros(hd, h * d, config.o_bias(), device, dtype),
                    heads: h,
                    kv_heads: kvh,
                    head_dim: d,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: LoraLinear::zeros(
                        config.intermediate_size,
                        hd,
                        config.mlp_bias,
                        device,
                        dtype,
                    ),
                    up_proj: LoraLinear::zeros(
                        config.intermediate_size,
                        hd,
                        config.mlp_bias,
                        device,
                        dtype,
                    ),
                    down_proj: LoraLinear::zeros(
                        hd,
                        config.intermediate_size,
                        config.mlp_bias,
                        device,
                        dtype,
                    ),
                    act,
                },
            })
            .collect();
        let embed_tokens = EmbeddingConfig::new(config.vocab_size, hd)
            .with_initializer(Initializer::Zeros)
            .init(device);
        let lm_head = (!config.tied())
            .then(|| LoraLinear::zeros(config.vocab_size, hd, false, device, dtype));
        Self {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm: norm(),
            },
            lm_head,
            config: config.clone(),
        }
        .freeze()
    }

    /// Add `by` to every RMSNorm weight: Gemma's checkpoints store `w` for a scale of
    /// `1 + w` (computed in f32, as transformers does).
    pub(crate) fn offset_norms(mut self, by: f64) -> Self {
        let shift = |norm: RmsNorm| -> RmsNorm {
            let gamma = norm.gamma.map(|w| {
                let dtype = w.dtype();
                w.cast(DType::F32).add_scalar(by).cast(dtype)
            });
            RmsNorm { gamma, ..norm }
        };
        self.model.layers = std::mem::take(&mut self.model.layers)
            .into_iter()
            .map(|l| DecoderLayer {
                input_layernorm: shift(l.input_layernorm),
                post_attention_layernorm: shift(l.post_attention_layernorm),
                ..l
            })
            .collect();
        self.model.norm = shift(self.model.norm);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Logits `[B, T, V]` for `batch`, optionally continuing from (and extending) `cache`.
    ///
    /// Positions count real tokens only (`cumsum(mask) − 1`, as transformers derives
    /// `position_ids` from the attention mask), so left and right padding both work, with and
    /// without a cache.
    ///
    /// # Panics
    ///
    /// If `cache` holds a different number of rows than `batch`.
    pub fn forward(&self, batch: &TokenBatch, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let device = self.model.embed_tokens.weight.val().device();
        let cfg = self.config();
        let [b, t] = batch.dims;
        let past = cache.as_ref().map_or(0, |c| c.len());
        // The key mask of past + new columns, per row (the cache's columns first).
        let past_mask = cache.as_ref().map_or(&[][..], |c| c.key_mask.as_slice());
        assert_eq!(
            past_mask.len(),
            b * past,
            "forward: a batch of {b} rows continues a cache of {} rows",
            past_mask.len() / past.max(1)
        );
        let keys: Vec<u8> = (0..b)
            .flat_map(move |r| {
                let old = &past_mask[r * past..(r + 1) * past];
                let new = &batch.attention_mask[r * t..(r + 1) * t];
                old.iter().chain(new).copied()
            })
            .collect();
        // transformers: position_ids = cumsum(mask) − 1 over past and new columns, padding
        // filled with 1.
        let mut positions = Vec::with_capacity(b * t);
        for row in keys.chunks((past + t).max(1)) {
            let mut real = row[..past].iter().filter(|&&m| m == 1).count();
            for &m in &row[past..] {
                real += usize::from(m == 1);
                positions.push(if m == 1 { real - 1 } else { 1 });
            }
        }
        let mut x = self.model.embed_tokens.forward(batch.ids(&device));
        let dtype = x.dtype();
        if let Some(scale) = cfg.embed_scale() {
            // transformers multiplies by √hidden rounded to the hidden states' dtype
            let scale = Tensor::<1>::from_data([scale], (&device, dtype));
            x = x * scale.reshape([1, 1, 1]);
        }
        let (cos, sin) = Rope::new(cfg).tables(&positions, [b, t], &device, dtype);
        let padded = keys.contains(&0);
        let ctx = Context {
            cos,
            sin,
            mask: AttentionMask {
                key_padding: padded.then_some(keys.as_slice()),
                causal: true,
                window: cfg.window(),
                query_offset: past,
            },
        };
        if let Some(c) = cache.as_mut()
            && c.layers.is_empty()
        {
            c.layers = vec![None; self.model.layers.len()];
        }
        for (i, layer) in self.model.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &ctx, slot);
        }
        drop(ctx);
        if let Some(c) = cache {
            c.key_mask = keys;
        }
        let x = self.model.norm.forward(x);
        match &self.lm_head {
            Some(head) => head.forward(x),
            // tied: the embeddings `[V, hidden]` are already the `[out, in]` weight
            None => balora_adapters::frozen_linear(x, self.model.embed_tokens.weight.val()),
        }
    }
}

/// The adapter slots, listed once for both visitors: `$iter` is `iter` or `iter_mut`, `$m` is
/// empty or `mut`.
macro_rules! slots {
    ($model:ident, $f:ident, $iter:ident $(, $m:tt)?) => {
        for (i, l) in $model.model.layers.$iter().enumerate() {
            let p = format!("model.layers.{i}");
            $f(&format!("{p}.self_attn.q_proj"), &$($m)? l.self_attn.q_proj);
            $f(&format!("{p}.self_attn.k_proj"), &$($m)? l.self_attn.k_proj);
            $f(&format!("{p}.self_attn.v_proj"), &$($m)? l.self_attn.v_proj);
            $f(&format!("{p}.self_attn.o_proj"), &$($m)? l.self_attn.o_proj);
            $f(&format!("{p}.mlp.gate_proj"), &$($m)? l.mlp.gate_proj);
            $f(&format!("{p}.mlp.up_proj"), &$($m)? l.mlp.up_proj);
            $f(&format!("{p}.mlp.down_proj"), &$($m)? l.mlp.down_proj);
        }
        if let Some(head) = &$($m)? $model.lm_head {
            $f("lm_head", head);
        }
    };
}

impl AdapterSlots for LlamaForCausalLM {
    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        slots!(self, f, iter);
    }

    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        slots!(self, f, iter_mut, mut);
    }
}

impl CausalLm for LlamaForCausalLM {
    fn logits(&self, batch: &TokenBatch) -> Tensor<3> {
        self.forward(batch, None)
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
}
