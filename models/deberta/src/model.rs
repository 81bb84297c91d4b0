//! The DeBERTa-v2/v3 encoder, its disentangled attention, the `ContextPooler` and the
//! classifier. Field names are the Hugging Face keys (`encoder.layer.0.attention.self_attention
//! .query_proj` once `self` is remapped, `pooler.dense`, `classifier`), so checkpoints load and
//! adapter paths equal peft's.

use balora_adapters::{AdapterSlots, LoraLinear, SavedParam, SavedParamMut};
use balora_kernels::gelu;
use balora_model::attention::{AttentionMask, biased_dot_product, scaled_dot_product};
use balora_model::head::{Dense, HeadInit};
use balora_model::{ModelError, SequenceClassifier, TokenBatch};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::{DType, Device, Int, Tensor};

use crate::config::DebertaV2Config;
use crate::relative::RelativeRows;

/// Word (and, in v2 configurations, position and segment) embeddings, normalised.
#[derive(Module, Debug)]
pub struct DebertaV2Embeddings {
    /// `[V, e]`.
    pub word_embeddings: Embedding,
    /// `[max_positions, e]`, only when `position_biased_input` (not in v3).
    pub position_embeddings: Option<Embedding>,
    /// `[type_vocab, e]`, only when `type_vocab_size` > 0 (not in v3).
    pub token_type_embeddings: Option<Embedding>,
    /// `[d, e]` without bias, when the embedding width `e` differs from `d`.
    pub embed_proj: Option<LoraLinear>,
    /// `LayerNorm` in the checkpoint.
    pub layer_norm: LayerNorm,
}

/// Content projections, and v2's separate position projections (`attention.self`).
#[derive(Module, Debug)]
pub struct DisentangledSelfAttention {
    /// `[H·dₕ, d]`.
    pub query_proj: LoraLinear,
    /// `[H·dₕ, d]`.
    pub key_proj: LoraLinear,
    /// `[H·dₕ, d]`.
    pub value_proj: LoraLinear,
    /// Position keys of the content-to-position term when `share_att_key` is off.
    pub pos_key_proj: Option<LoraLinear>,
    /// Position queries of the position-to-content term when `share_att_key` is off.
    pub pos_query_proj: Option<LoraLinear>,
}

/// A `dense` projection followed by residual LayerNorm.
#[derive(Module, Debug)]
pub struct DenseNorm {
    /// The projection.
    pub dense: LoraLinear,
    /// `LayerNorm` in the checkpoint.
    pub layer_norm: LayerNorm,
}

/// Attention sub-block.
#[derive(Module, Debug)]
pub struct DebertaV2Attention {
    /// `self` in the checkpoint.
    pub self_attention: DisentangledSelfAttention,
    /// Output projection + norm.
    pub output: DenseNorm,
}

/// The MLP's first projection.
#[derive(Module, Debug)]
pub struct DebertaV2Intermediate {
    /// `[inner, d]`.
    pub dense: LoraLinear,
}

/// One post-norm encoder layer.
#[derive(Module, Debug)]
pub struct DebertaV2Layer {
    /// Disentangled attention.
    pub attention: DebertaV2Attention,
    /// MLP up-projection.
    pub intermediate: DebertaV2Intermediate,
    /// MLP down-projection + norm.
    pub output: DenseNorm,
}

/// The layer stack and the relative-position embeddings all layers share.
#[derive(Module, Debug)]
pub struct DebertaV2Encoder {
    /// The post-norm layers, in order (`encoder.layer.N`).
    pub layer: Vec<DebertaV2Layer>,
    /// `[2S, d]`, when `relative_attention`.
    pub rel_embeddings: Option<Embedding>,
    /// The relative embeddings' LayerNorm (`norm_rel_ebd = "layer_norm"`, v3).
    pub layer_norm: Option<LayerNorm>,
}

/// The encoder (`deberta.*`, or unprefixed in a bare `DebertaV2Model` checkpoint).
#[derive(Module, Debug)]
pub struct DebertaV2Model {
    /// Input embeddings.
    pub embeddings: DebertaV2Embeddings,
    /// The layer stack.
    pub encoder: DebertaV2Encoder,
}

/// transformers' `ContextPooler`: `gelu(dense(h_CLS))`. Pretrained DeBERTa checkpoints carry
/// no pooler, so it is drawn fresh and trained with the classifier (`modules_to_save`).
#[derive(Module, Debug)]
pub struct ContextPooler {
    /// `[d, d]`.
    pub dense: Dense,
}

/// A DeBERTa-v2/v3 encoder with transformers' sequence-classification head.
#[derive(Module, Debug)]
pub struct DebertaV2ForSequenceClassification {
    /// The encoder.
    pub deberta: DebertaV2Model,
    /// The pooler (trained fully).
    pub pooler: ContextPooler,
    /// The output projection `[C, d]` (trained fully).
    pub classifier: Dense,
    #[module(skip)]
    pub(crate) config: DebertaV2Config,
}

/// What every layer's attention shares in one forward: the relative embeddings a sequence of
/// this length reads, and which row each query–key pair reads.
struct Relative {
    /// `[1, R, d]`: the rows used, normalised.
    embeddings: Tensor<3>,
    /// `[B, H, T, T]`: pair `(i, j)`'s row.
    index: Tensor<4, Int>,
    /// `[B, H, T, T]`: pair `(j, i)`'s row (the position-to-content term's gather).
    index_t: Tensor<4, Int>,
}

impl DisentangledSelfAttention {
    /// `[B, T, H·dₕ]` → `[B, H, T, dₕ]`.
    fn split(y: Tensor<3>, heads: usize) -> Tensor<4> {
        let [b, t, hd] = y.dims();
        y.reshape([b, t, heads, hd / heads]).swap_dims(1, 2)
    }

    /// Context vectors `[B, T, H·dₕ]`: `softmax((q·kᵀ + c2p + p2c) / √(dₕ·f))·v`, `f` counting
    /// the content term and each disentangled term on (docs/methods.md, "DeBERTa").
    fn forward(
        &self,
        x: Tensor<3>,
        mask: AttentionMask<'_>,
        relative: Option<&Relative>,
        config: &DebertaV2Config,
    ) -> Tensor<3> {
        let heads = config.num_attention_heads;
        let [b, t, _] = x.dims();
        let q = Self::split(self.query_proj.forward(x.clone()), heads);
        let k = Self::split(self.key_proj.forward(x.clone()), heads);
        let v = Self::split(self.value_proj.forward(x), heads);
        let dh = q.dims()[3];
        let ctx = match relative.filter(|_| config.c2p() || config.p2c()) {
            None => scaled_dot_product(q, k, v, mask),
            Some(rel) => {
                let factor = 1 + usize::from(config.c2p()) + usize::from(config.p2c());
                let scale = 1.0 / ((dh * factor) as f64).sqrt();
                // the relative rows as keys / queries `[B, H, dₕ, R]`
                let positions = |proj: &LoraLinear| {
                    let p = Self::split(proj.forward(rel.embeddings.clone()), heads);
                    let [_, _, r, _] = p.dims();
                    p.swap_dims(2, 3).expand([b, heads, dh, r])
                };
                let mut scores: Option<Tensor<4>> = None;
                if config.c2p() {
                    let proj = self.pos_key_proj.as_ref().unwrap_or(&self.key_proj);
                    let c2p = q
                        .clone()
                        .matmul(positions(proj))
                        .gather(3, rel.index.clone());
                    scores = Some(c2p);
                }
                if config.p2c() {
                    let proj = self.pos_query_proj.as_ref().unwrap_or(&self.query_proj);
                    let p2c = k
                        .clone()
                        .matmul(positions(proj))
                        .gather(3, rel.index_t.clone())
                        .swap_dims(2, 3);
                    scores = Some(match scores {
                        Some(s) => s + p2c,
                        None => p2c,
                    });
                }
                let scores = scores.expect("a disentangled term is on") * scale;
                biased_dot_product(q, k, v, mask, scale, scores)
            }
        };
        ctx.swap_dims(1, 2).reshape([b, t, heads * dh])
    }
}

impl DebertaV2Layer {
    /// Post-norm block: `LN(x + attn(x))`, then `LN(a + out(gelu(inter(a))))`.
    fn forward(
        &self,
        x: Tensor<3>,
        mask: AttentionMask<'_>,
        relative: Option<&Relative>,
        config: &DebertaV2Config,
    ) -> Tensor<3> {
        let ctx = self
            .attention
            .self_attention
            .forward(x.clone(), mask, relative, config);
        let out = &self.attention.output;
        let a = out.layer_norm.forward(out.dense.forward(ctx) + x);
        let h = gelu(self.intermediate.dense.forward(a.clone()));
        let o = &self.output;
        o.layer_norm.forward(o.dense.forward(h) + a)
    }
}

impl DebertaV2Model {
    pub(crate) fn init(config: &DebertaV2Config, device: &Device, dtype: DType) -> Self {
        let (d, e, inner) = (
            config.hidden_size,
            config.embedding_width(),
            config.intermediate_size,
        );
        let a = config.num_attention_heads * config.head_dim();
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let embedding = |n, width| {
            EmbeddingConfig::new(n, width)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let linear = |out, inp| LoraLinear::zeros(out, inp, true, device, dtype);
        let separate = config.relative_attention && !config.share_att_key;
        let layer = (0..config.num_hidden_layers)
            .map(|_| DebertaV2Layer {
                attention: DebertaV2Attention {
                    self_attention: DisentangledSelfAttention {
                        query_proj: linear(a, d),
                        key_proj: linear(a, d),
                        value_proj: linear(a, d),
                        pos_key_proj: (separate && config.c2p()).then(|| linear(a, d)),
                        pos_query_proj: (separate && config.p2c()).then(|| linear(a, d)),
                    },
                    output: DenseNorm {
                        dense: linear(d, a),
                        layer_norm: norm(),
                    },
                },
                intermediate: DebertaV2Intermediate {
                    dense: linear(inner, d),
                },
                output: DenseNorm {
                    dense: linear(d, inner),
                    layer_norm: norm(),
                },
            })
            .collect();
        Self {
            embeddings: DebertaV2Embeddings {
                word_embeddings: embedding(config.vocab_size, e),
                position_embeddings: config
                    .position_biased_input
                    .then(|| embedding(config.max_position_embeddings, e)),
                token_type_embeddings: (config.type_vocab_size > 0)
                    .then(|| embedding(config.type_vocab_size, e)),
                embed_proj: (e != d).then(|| LoraLinear::zeros(d, e, false, device, dtype)),
                layer_norm: norm(),
            },
            encoder: DebertaV2Encoder {
                layer,
                rel_embeddings: config
                    .relative_attention
                    .then(|| embedding(2 * config.attention_span(), d)),
                layer_norm: (config.relative_attention && config.norm_relative()).then(norm),
            },
        }
    }

    /// Final hidden states `[B, T, d]`.
    fn forward(&self, batch: &TokenBatch, config: &DebertaV2Config) -> Tensor<3> {
        let device = self.embeddings.word_embeddings.weight.val().device();
        let [b, t] = batch.dims;
        let e = &self.embeddings;
        let mut x = e.word_embeddings.forward(batch.ids(&device));
        if let Some(p) = &e.position_embeddings {
            let positions = Tensor::<1, Int>::arange(0..t as i64, &device);
            x = x + p.forward(positions.unsqueeze::<2>().expand([b, t]));
        }
        if let Some(types) = &e.token_type_embeddings {
            x = x + types.forward(batch.token_types(&device));
        }
        if let Some(proj) = &e.embed_proj {
            x = proj.forward(x);
        }
        let mut x = e.layer_norm.forward(x);
        let relative = self.encoder.rel_embeddings.as_ref().map(|rel| {
            let rows = RelativeRows::new(config, t, &device);
            let table = rel.weight.val().narrow(0, rows.first, rows.rows);
            let table = match &self.encoder.layer_norm {
                Some(norm) => norm.forward(table),
                None => table,
            };
            let heads = config.num_attention_heads;
            Relative {
                embeddings: table.unsqueeze_dim(0),
                index: rows.index.clone().expand([b, heads, t, t]),
                index_t: rows.index.swap_dims(2, 3).expand([b, heads, t, t]),
            }
        });
        let mask = AttentionMask {
            key_padding: batch
                .has_padding()
                .then_some(batch.attention_mask.as_slice()),
            causal: false,
            window: None,
            query_offset: 0,
        };
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask, relative.as_ref(), config);
        }
        x
    }
}

impl DebertaV2ForSequenceClassification {
    /// The encoder, a fresh pooler and classifier of `labels` outputs drawn from `seed`
    /// ([`HeadInit`]: the pooler first, then the classifier).
    pub(crate) fn init(
        config: &DebertaV2Config,
        labels: usize,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let d = config.hidden_size;
        let mut head = HeadInit::new(config.initializer_range, seed, device, dtype)?;
        Ok(Self {
            deberta: DebertaV2Model::init(config, device, dtype),
            pooler: ContextPooler {
                dense: head.dense(d, d),
            },
            classifier: head.dense(labels, d),
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DebertaV2Config {
        &self.config
    }

    /// Final hidden states `[B, T, d]`.
    pub fn hidden_states(&self, batch: &TokenBatch) -> Tensor<3> {
        self.deberta.forward(batch, &self.config)
    }

    /// The pooled vector `[B, d]` the classifier reads: `gelu(dense(h_CLS))`.
    pub fn features(&self, batch: &TokenBatch) -> Tensor<2> {
        let h = self.hidden_states(batch);
        let [b, _, d] = h.dims();
        let cls = h.narrow(1, 0, 1).reshape([b, d]);
        // a head trained in f32 reads a half-precision encoder's output upcast
        let cls = cls.cast(self.classifier.weight.val().dtype());
        gelu(self.pooler.dense.forward(cls))
    }
}

/// The adapter slots, listed once for both visitors: `$iter` is `iter` or `iter_mut`, `$m` is
/// empty or `mut`.
macro_rules! slots {
    ($model:ident, $f:ident, $iter:ident $(, $m:tt)?) => {
        for (i, l) in $model.deberta.encoder.layer.$iter().enumerate() {
            let base = format!("deberta.encoder.layer.{i}");
            let sa = &$($m)? l.attention.self_attention;
            $f(&format!("{base}.attention.self.query_proj"), &$($m)? sa.query_proj);
            $f(&format!("{base}.attention.self.key_proj"), &$($m)? sa.key_proj);
            $f(&format!("{base}.attention.self.value_proj"), &$($m)? sa.value_proj);
            if let Some(p) = &$($m)? sa.pos_key_proj {
                $f(&format!("{base}.attention.self.pos_key_proj"), p);
            }
            if let Some(p) = &$($m)? sa.pos_query_proj {
                $f(&format!("{base}.attention.self.pos_query_proj"), p);
            }
            $f(&format!("{base}.attention.output.dense"), &$($m)? l.attention.output.dense);
            $f(&format!("{base}.intermediate.dense"), &$($m)? l.intermediate.dense);
            $f(&format!("{base}.output.dense"), &$($m)? l.output.dense);
        }
    };
}

impl AdapterSlots for DebertaV2ForSequenceClassification {
    fn modules_to_save(&self) -> Vec<String> {
        vec!["pooler".into(), "classifier".into()]
    }

    fn visit_saved_modules(&self, f: &mut dyn FnMut(&str, SavedParam<'_>)) {
        self.pooler.dense.visit("pooler.dense", f);
        self.classifier.visit("classifier", f);
    }

    fn visit_saved_modules_mut(&mut self, f: &mut dyn FnMut(&str, SavedParamMut<'_>)) {
        self.pooler.dense.visit_mut("pooler.dense", f);
        self.classifier.visit_mut("classifier", f);
    }

    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        slots!(self, f, iter);
    }

    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        slots!(self, f, iter_mut, mut);
    }
}

impl SequenceClassifier for DebertaV2ForSequenceClassification {
    fn logits(&self, batch: &TokenBatch) -> Tensor<2> {
        self.classifier.forward(self.features(batch))
    }

    fn pooled(&self, batch: &TokenBatch) -> Tensor<2> {
        self.features(batch)
    }

    fn num_labels(&self) -> usize {
        self.classifier.outputs()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_len(&self) -> Option<usize> {
        // learned absolute positions bound the length; relative ones clamp instead
        self.config
            .position_biased_input
            .then_some(self.config.max_position_embeddings)
    }
}
