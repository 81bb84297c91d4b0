//! `GPT2LMHeadModel`: learned positions, pre-norm blocks, fused `c_attn`, tanh-approximated
//! GELU, the LM head tied to the token embeddings. Field names are the Hugging Face keys
//! (`transformer.h.0.attn.c_attn`), so checkpoints load and adapter paths equal peft's.

use balora_adapters::{AdapterSlots, LoraLinear};
use balora_kernels::{Activation, activation};
use balora_model::attention::{AttentionMask, scaled_dot_product};
use balora_model::{CausalLm, TokenBatch};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::config::Gpt2Config;

/// Causal self-attention with the fused `c_attn` projection.
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// `[3·d, d]`: q, k and v stacked.
    pub c_attn: LoraLinear,
    /// `[d, d]`.
    pub c_proj: LoraLinear,
    heads: usize,
}

/// `c_proj(gelu(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// `[inner, d]`.
    pub c_fc: LoraLinear,
    /// `[d, inner]`.
    pub c_proj: LoraLinear,
}

/// One pre-norm block.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention: the fused `c_attn` (q, k, v) and `c_proj`.
    pub attn: Gpt2Attention,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// MLP.
    pub mlp: Gpt2Mlp,
}

/// The transformer (`transformer.*` in the checkpoint).
#[derive(Module, Debug)]
pub struct Gpt2Model {
    /// Token embeddings `[V, d]` (also the LM head).
    pub wte: Embedding,
    /// Position embeddings `[n_positions, d]`.
    pub wpe: Embedding,
    /// The pre-norm blocks, in order (`transformer.h.N`).
    pub h: Vec<Gpt2Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
}

/// GPT-2 with its tied LM head.
#[derive(Module, Debug)]
pub struct Gpt2LmHeadModel {
    /// The transformer.
    pub transformer: Gpt2Model,
    #[module(skip)]
    config: Gpt2Config,
}

impl Gpt2Attention {
    fn forward(&self, x: Tensor<3>, mask: AttentionMask<'_>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let qkv = self.c_attn.forward(x);
        let head = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([b, t, h, d / h])
                .swap_dims(1, 2)
        };
        let out = scaled_dot_product(head(0), head(1), head(2), mask);
        self.c_proj.forward(out.swap_dims(1, 2).reshape([b, t, d]))
    }
}

impl Gpt2Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.c_proj
            .forward(activation(self.c_fc.forward(x), Activation::GeluTanh))
    }
}

impl Gpt2Block {
    fn forward(&self, x: Tensor<3>, mask: AttentionMask<'_>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), mask);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

impl Gpt2LmHeadModel {
    /// A model of `config` with zero weights (to be loaded), frozen.
    pub fn init(config: &Gpt2Config, device: &Device, dtype: DType) -> Self {
        let d = config.n_embd;
        let inner = config.n_inner.unwrap_or(4 * d);
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_epsilon)
                .init(device)
        };
        let embedding = |n| {
            EmbeddingConfig::new(n, d)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let h = (0..config.n_layer)
            .map(|_| Gpt2Block {
                ln_1: norm(),
                attn: Gpt2Attention {
                    c_attn: LoraLinear::zeros(3 * d, d, true, device, dtype),
                    c_proj: LoraLinear::zeros(d, d, true, device, dtype),
                    heads: config.n_head,
                },
                ln_2: norm(),
                mlp: Gpt2Mlp {
                    c_fc: LoraLinear::zeros(inner, d, true, device, dtype),
                    c_proj: LoraLinear::zeros(d, inner, true, device, dtype),
                },
            })
            .collect();
        Self {
            transformer: Gpt2Model {
                wte: embedding(config.vocab_size),
                wpe: embedding(config.n_positions),
                h,
                ln_f: norm(),
            },
            config: config.clone(),
        }
        .freeze()
    }

    /// The configuration.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }
}

/// The adapter slots, listed once for both visitors: `$iter` is `iter` or `iter_mut`, `$m` is
/// empty or `mut`.
macro_rules! slots {
    ($model:ident, $f:ident, $iter:ident $(, $m:tt)?) => {
        for (i, b) in $model.transformer.h.$iter().enumerate() {
            let p = format!("transformer.h.{i}");
            $f(&format!("{p}.attn.c_attn"), &$($m)? b.attn.c_attn);
            $f(&format!("{p}.attn.c_proj"), &$($m)? b.attn.c_proj);
            $f(&format!("{p}.mlp.c_fc"), &$($m)? b.mlp.c_fc);
            $f(&format!("{p}.mlp.c_proj"), &$($m)? b.mlp.c_proj);
        }
    };
}

impl AdapterSlots for Gpt2LmHeadModel {
    fn fan_in_fan_out(&self) -> bool {
        true
    }

    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        slots!(self, f, iter);
    }

    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        slots!(self, f, iter_mut, mut);
    }
}

impl CausalLm for Gpt2LmHeadModel {
    fn logits(&self, batch: &TokenBatch) -> Tensor<3> {
        let device = self.transformer.wte.weight.val().device();
        let [b, t] = batch.dims;
        let tr = &self.transformer;
        // GPT-2 positions are plain 0..T (right padding keeps real tokens in place).
        let pos: Vec<i64> = (0..b).flat_map(|_| 0..t as i64).collect();
        let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [b, t]), &device);
        let mut x = tr.wte.forward(batch.ids(&device)) + tr.wpe.forward(pos);
        let mask = AttentionMask {
            key_padding: batch
                .has_padding()
                .then_some(batch.attention_mask.as_slice()),
            causal: true,
            window: None,
            query_offset: 0,
        };
        for block in &tr.h {
            x = block.forward(x, mask);
        }
        let x = tr.ln_f.forward(x);
        // the tied head: wte `[V, d]` is already the `[out, in]` weight
        balora_adapters::frozen_linear(x, tr.wte.weight.val())
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn max_len(&self) -> Option<usize> {
        Some(self.config().n_positions)
    }
}
