//! The encoder, its pooling and the classification head. Field names are the Hugging Face
//! keys (`encoder.layer.0.attention.self_attention.query` once `self` is remapped, `classifier`),
//! so checkpoints load and adapter paths equal peft's.

use balora_adapters::{AdapterSlots, LoraLinear, SavedParam, SavedParamMut};
use balora_kernels::gelu;
use balora_model::attention::{AttentionMask, scaled_dot_product};
use balora_model::head::{Dense, HeadInit};
use balora_model::{ModelError, SequenceClassifier, TokenBatch};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::config::BertConfig;

/// How a sequence becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's final hidden state (`[CLS]` / `<s>`).
    Cls,
    /// BERT's pooler: `tanh(dense(h_CLS))`.
    Pooler,
    /// Mean of the real tokens' final hidden states (sentence-transformers).
    Mean,
}

/// Token, position and segment embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// `[V, d]`.
    pub word_embeddings: Embedding,
    /// `[max_positions, d]`.
    pub position_embeddings: Embedding,
    /// `[type_vocab, d]`.
    pub token_type_embeddings: Embedding,
    /// `LayerNorm` in the checkpoint.
    pub layer_norm: LayerNorm,
}

/// Query, key and value projections (`attention.self` in the checkpoint).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    /// `[d, d]`.
    pub query: LoraLinear,
    /// `[d, d]`.
    pub key: LoraLinear,
    /// `[d, d]`.
    pub value: LoraLinear,
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
pub struct BertAttention {
    /// `self` in the checkpoint.
    pub self_attention: BertSelfAttention,
    /// Output projection + norm.
    pub output: DenseNorm,
}

/// The MLP's first projection.
#[derive(Module, Debug)]
pub struct BertIntermediate {
    /// `[inner, d]`.
    pub dense: LoraLinear,
}

/// One post-norm encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer {
    /// Self-attention with its output projection and the first residual LayerNorm
    /// (`attention.self.*`, `attention.output.*`).
    pub attention: BertAttention,
    /// MLP up-projection.
    pub intermediate: BertIntermediate,
    /// MLP down-projection + norm.
    pub output: DenseNorm,
}

/// The layer stack.
#[derive(Module, Debug)]
pub struct BertEncoder {
    /// The post-norm layers, in order (`encoder.layer.N`).
    pub layer: Vec<BertLayer>,
}

/// BERT's pooler `tanh(dense(h_CLS))`.
#[derive(Module, Debug)]
pub struct BertPooler {
    /// `[d, d]`.
    pub dense: LoraLinear,
}

/// The encoder (`bert.*`, `roberta.*`, or unprefixed in the checkpoint).
#[derive(Module, Debug)]
pub struct BertModel {
    /// Word, position and token-type embeddings with their LayerNorm.
    pub embeddings: BertEmbeddings,
    /// The layer stack.
    pub encoder: BertEncoder,
    /// Pooler (absent in RoBERTa classifiers).
    pub pooler: Option<BertPooler>,
}

/// The classification head, trained fully (peft's `modules_to_save`): BERT's `classifier` on
/// the pooled output, or RoBERTa's `dense → tanh → out_proj` on `<s>`.
#[derive(Module, Debug)]
pub struct ClassificationHead {
    /// RoBERTa's hidden projection.
    pub dense: Option<Dense>,
    /// The output projection `[C, d]`.
    pub out_proj: Dense,
}

impl ClassificationHead {
    /// The head in `dtype` (trainable; a half-precision checkpoint's head trains in f32).
    pub(crate) fn cast(self, dtype: DType) -> Self {
        Self {
            dense: self.dense.map(|d| d.cast(dtype)),
            out_proj: self.out_proj.cast(dtype),
        }
    }

    fn forward(&self, pooled: Tensor<2>) -> Tensor<2> {
        // a head trained in f32 reads a half-precision encoder's output upcast
        let pooled = pooled.cast(self.out_proj.weight.val().dtype());
        let h = match &self.dense {
            Some(d) => d.forward(pooled).tanh(),
            None => pooled,
        };
        self.out_proj.forward(h)
    }
}

impl ClassificationHead {
    /// A fresh head ([`HeadInit`]: N(0, initializer_range) weights, zero biases, from `seed`).
    pub(crate) fn fresh(
        config: &BertConfig,
        labels: usize,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let d = config.hidden_size;
        let mut init = HeadInit::new(config.initializer_range, seed, device, dtype)?;
        let hidden = config.is_roberta().then(|| init.dense(d, d));
        Ok(Self {
            dense: hidden,
            out_proj: init.dense(labels, d),
        })
    }
}

/// An encoder with a sequence-classification head.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification {
    /// The encoder.
    pub bert: BertModel,
    /// The head (trained fully, like peft's `modules_to_save`).
    pub classifier: ClassificationHead,
    #[module(skip)]
    pub(crate) config: BertConfig,
    #[module(skip)]
    pub(crate) pooling: Pooling,
}

impl BertLayer {
    /// Post-norm block: `LN(x + attn(x))`, then `LN(a + out(gelu(inter(a))))`.
    fn forward(&self, x: Tensor<3>, mask: AttentionMask<'_>, heads: usize) -> Tensor<3> {
        let sa = &self.attention.self_attention;
        let [b, t, d] = x.dims();
        let split = |y: Tensor<3>| y.reshape([b, t, heads, d / heads]).swap_dims(1, 2);
        let q = split(sa.query.forward(x.clone()));
        let k = split(sa.key.forward(x.clone()));
        let v = split(sa.value.forward(x.clone()));
        let ctx = scaled_dot_product(q, k, v, mask)
            .swap_dims(1, 2)
            .reshape([b, t, d]);
        let out = &self.attention.output;
        let a = out.layer_norm.forward(out.dense.forward(ctx) + x);
        let h = gelu(self.intermediate.dense.forward(a.clone()));
        let o = &self.output;
        o.layer_norm.forward(o.dense.forward(h) + a)
    }
}

impl BertModel {
    pub(crate) fn init(config: &BertConfig, pooler: bool, device: &Device, dtype: DType) -> Self {
        let d = config.hidden_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let embedding = |n| {
            EmbeddingConfig::new(n, d)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let layer = (0..config.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_attention: BertSelfAttention {
                        query: LoraLinear::zeros(d, d, true, device, dtype),
                        key: LoraLinear::zeros(d, d, true, device, dtype),
                        value: LoraLinear::zeros(d, d, true, device, dtype),
                    },
                    output: DenseNorm {
                        dense: LoraLinear::zeros(d, d, true, device, dtype),
                        layer_norm: norm(),
                    },
                },
                intermediate: BertIntermediate {
                    dense: LoraLinear::zeros(config.intermediate_size, d, true, device, dtype),
                },
                output: DenseNorm {
                    dense: LoraLinear::zeros(d, config.intermediate_size, true, device, dtype),
                    layer_norm: norm(),
                },
            })
            .collect();
        Self {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(config.vocab_size),
                position_embeddings: embedding(config.max_position_embeddings),
                token_type_embeddings: embedding(config.type_vocab_size),
                layer_norm: norm(),
            },
            encoder: BertEncoder { layer },
            pooler: pooler.then(|| BertPooler {
                dense: LoraLinear::zeros(d, d, true, device, dtype),
            }),
        }
    }

    /// Final hidden states `[B, T, d]`.
    fn forward(&self, batch: &TokenBatch, config: &BertConfig) -> Tensor<3> {
        let device = self.embeddings.word_embeddings.weight.val().device();
        let [b, t] = batch.dims;
        let positions: Vec<i64> = if config.is_roberta() {
            // transformers: padding_idx + cumsum(ids != padding_idx), padding keeps padding_idx
            let pad = config.pad_token_id.unwrap_or(1);
            batch
                .input_ids
                .chunks(t.max(1))
                .flat_map(|row| {
                    let mut seen = 0i64;
                    row.iter()
                        .map(|&id| {
                            if id == pad {
                                pad as i64
                            } else {
                                seen += 1;
                                pad as i64 + seen
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        } else {
            (0..b).flat_map(|_| 0..t as i64).collect()
        };
        let positions = Tensor::<2, Int>::from_data(TensorData::new(positions, [b, t]), &device);
        let e = &self.embeddings;
        let x = e.word_embeddings.forward(batch.ids(&device))
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(batch.token_types(&device));
        let mut x = e.layer_norm.forward(x);
        let heads = config.num_attention_heads;
        let mask = AttentionMask {
            key_padding: batch
                .has_padding()
                .then_some(batch.attention_mask.as_slice()),
            causal: false,
            window: None,
            query_offset: 0,
        };
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask, heads);
        }
        x
    }
}

impl BertForSequenceClassification {
    /// Use another pooling for [`Self::features`] and the head.
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Final hidden states `[B, T, d]`.
    pub fn hidden_states(&self, batch: &TokenBatch) -> Tensor<3> {
        self.bert.forward(batch, self.config())
    }

    /// One vector per sequence `[B, d]` with the configured pooling.
    pub fn features(&self, batch: &TokenBatch) -> Tensor<2> {
        self.pool(self.hidden_states(batch), batch, self.pooling)
    }

    /// Pool hidden states `[B, T, d]` into `[B, d]`.
    pub fn pool(&self, h: Tensor<3>, batch: &TokenBatch, pooling: Pooling) -> Tensor<2> {
        let [b, t, d] = h.dims();
        let cls = || h.clone().narrow(1, 0, 1).reshape([b, d]);
        match pooling {
            Pooling::Cls => cls(),
            Pooling::Pooler => match &self.bert.pooler {
                Some(p) => p.dense.forward(cls()).tanh(),
                None => cls(),
            },
            Pooling::Mean => {
                let m: Vec<f64> = batch.attention_mask.iter().map(|&v| v as f64).collect();
                let m =
                    Tensor::<2>::from_data(TensorData::new(m, [b, t]), (&h.device(), h.dtype()))
                        .unsqueeze_dim::<3>(2);
                let summed: Tensor<2> = (h * m.clone()).sum_dim(1).reshape([b, d]);
                let counts: Tensor<2> = m.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
                summed / counts
            }
        }
    }
}

impl BertForSequenceClassification {
    /// The encoder's attribute in transformers' `*ForSequenceClassification` class, the first
    /// component of every module path (`bert.` or `roberta.`).
    fn prefix(&self) -> &'static str {
        if self.config.is_roberta() {
            "roberta."
        } else {
            "bert."
        }
    }
}

/// The adapter slots, listed once for both visitors: `$iter` is `iter` or `iter_mut`, `$m` is
/// empty or `mut`.
macro_rules! slots {
    ($model:ident, $f:ident, $iter:ident $(, $m:tt)?) => {
        let p = $model.prefix();
        for (i, l) in $model.bert.encoder.layer.$iter().enumerate() {
            let base = format!("{p}encoder.layer.{i}");
            let sa = &$($m)? l.attention.self_attention;
            $f(&format!("{base}.attention.self.query"), &$($m)? sa.query);
            $f(&format!("{base}.attention.self.key"), &$($m)? sa.key);
            $f(&format!("{base}.attention.self.value"), &$($m)? sa.value);
            $f(&format!("{base}.attention.output.dense"), &$($m)? l.attention.output.dense);
            $f(&format!("{base}.intermediate.dense"), &$($m)? l.intermediate.dense);
            $f(&format!("{base}.output.dense"), &$($m)? l.output.dense);
        }
    };
}

/// The head's dense layers under transformers' names, listed once for both visitors.
macro_rules! head {
    ($model:ident, $dense:ident $(, $m:tt)?) => {
        let head = &$($m)? $model.classifier;
        match &$($m)? head.dense {
            // RobertaClassificationHead: classifier.dense, classifier.out_proj
            Some(hidden) => {
                $dense("classifier.dense", hidden);
                $dense("classifier.out_proj", &$($m)? head.out_proj);
            }
            // BertForSequenceClassification: classifier is the nn.Linear itself
            None => $dense("classifier", &$($m)? head.out_proj),
        }
    };
}

impl AdapterSlots for BertForSequenceClassification {
    fn modules_to_save(&self) -> Vec<String> {
        vec!["classifier".into()]
    }

    fn visit_saved_modules(&self, f: &mut dyn FnMut(&str, SavedParam<'_>)) {
        let mut dense = |name: &str, d: &Dense| d.visit(name, f);
        head!(self, dense);
    }

    fn visit_saved_modules_mut(&mut self, f: &mut dyn FnMut(&str, SavedParamMut<'_>)) {
        let mut dense = |name: &str, d: &mut Dense| d.visit_mut(name, f);
        head!(self, dense, mut);
    }

    fn visit_slots(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        slots!(self, f, iter);
    }

    fn visit_slots_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        slots!(self, f, iter_mut, mut);
    }
}

impl SequenceClassifier for BertForSequenceClassification {
    fn logits(&self, batch: &TokenBatch) -> Tensor<2> {
        self.classifier.forward(self.pooled(batch))
    }

    fn pooled(&self, batch: &TokenBatch) -> Tensor<2> {
        // RoBERTa's head holds its own dense + tanh over h_CLS; BERT's reads the pooler's
        let head_pooling = if self.config().is_roberta() {
            Pooling::Cls
        } else {
            Pooling::Pooler
        };
        self.pool(self.hidden_states(batch), batch, head_pooling)
    }

    fn num_labels(&self) -> usize {
        self.classifier.out_proj.outputs()
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn max_len(&self) -> Option<usize> {
        let c = self.config();
        // RoBERTa's positions start after the padding id
        let first = if c.is_roberta() {
            c.pad_token_id.unwrap_or(1) as usize + 1
        } else {
            0
        };
        Some(c.max_position_embeddings.saturating_sub(first))
    }
}
