//! Generation: the decoding loop ([`generate`]) and token selection (greedy, temperature and
//! nucleus top-p sampling).

use rand::SeedableRng;

use crate::{CausalLm, ModelError, TokenBatch};
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardUniform};

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// 0 for greedy decoding; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    /// `top_p` (1.0 disables it).
    pub top_p: f64,
    /// Tokens that end generation (kept in the output, like transformers).
    pub stop_tokens: Vec<u32>,
    /// Sampling seed.
    pub seed: u64,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, stopping at `stop_tokens`.
    pub fn greedy(max_new_tokens: usize, stop_tokens: Vec<u32>) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
            stop_tokens,
            seed: 0,
        }
    }
}

/// Picks the next token from a row of logits.
#[derive(Debug)]
pub struct Sampler {
    config: GenerationConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded by `config.seed`.
    pub fn new(config: &GenerationConfig) -> Self {
        Self {
            config: config.clone(),
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// The next token for `logits` (one row, vocabulary-sized).
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| {
                    if l > best.1 { (i, l) } else { best }
                })
                .0 as u32
        };
        if self.config.temperature <= 0.0 {
            return argmax();
        }
        let t = self.config.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, ((l as f64 - max) / t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut kept = 0.0;
        let cut = probs
            .iter()
            .position(|p| {
                kept += p.1;
                kept >= self.config.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        let probs = &probs[..cut];
        let mass: f64 = probs.iter().map(|p| p.1).sum();
        let u: f64 = StandardUniform.sample(&mut self.rng);
        let mut acc = 0.0;
        for &(i, p) in probs {
            acc += p / mass;
            if u < acc {
                return i as u32;
            }
        }
        probs.last().map_or_else(argmax, |p| p.0 as u32)
    }

    /// Whether `token` ends generation.
    pub fn is_stop(&self, token: u32) -> bool {
        self.config.stop_tokens.contains(&token)
    }
}

/// Generate after `prompt` until a stop token or `config.max_new_tokens`; returns only the new
/// tokens (the stop token included). `last_logits(sequence, new)` runs the model and returns
/// the logits row of the sequence's last position: `sequence` is everything so far, `new` the
/// tokens since the previous call (the whole prompt at first) — a model with a KV cache feeds
/// `new`, one without feeds `sequence`.
pub fn generate(
    prompt: &[u32],
    config: &GenerationConfig,
    mut last_logits: impl FnMut(&[u32], &[u32]) -> Result<Vec<f32>, ModelError>,
) -> Result<Vec<u32>, ModelError> {
    let mut sampler = Sampler::new(config);
    let mut sequence = prompt.to_vec();
    let mut new = Vec::new();
    let mut feed = prompt.to_vec();
    while new.len() < config.max_new_tokens && !feed.is_empty() {
        let row = last_logits(&sequence, &feed)?;
        let token = sampler.next(&row);
        new.push(token);
        sequence.push(token);
        feed = if sampler.is_stop(token) {
            Vec::new()
        } else {
            vec![token]
        };
    }
    Ok(new)
}

/// [`generate`] for several prompts at once, as one batch: the prompts left-padded with
/// `pad_id` ([`TokenBatch::left_padded`]), then one column per step in which each unfinished
/// row feeds its last token and each finished row a masked pad. `next_logits(batch)` runs the
/// model (with its KV cache, which must keep the key mask of the columns it has seen) and
/// returns each row's logits at the batch's last column. Every row has its own [`Sampler`]
/// seeded as [`generate`]'s, so a row's tokens are those of [`generate`] on its prompt alone
/// (equal ids up to the float rounding of a different batch shape); returns the new tokens of
/// each row, stop tokens included.
pub fn generate_batch(
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    pad_id: u32,
    mut next_logits: impl FnMut(&TokenBatch) -> Result<Vec<Vec<f32>>, ModelError>,
) -> Result<Vec<Vec<u32>>, ModelError> {
    let mut samplers: Vec<Sampler> = prompts.iter().map(|_| Sampler::new(config)).collect();
    let mut new: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    // a row is live while it may still take a token (an empty prompt, like `generate`'s, never is)
    let mut live: Vec<bool> = prompts
        .iter()
        .map(|p| !p.is_empty() && config.max_new_tokens > 0)
        .collect();
    let mut batch = TokenBatch::left_padded(prompts, pad_id);
    while live.contains(&true) {
        let rows = next_logits(&batch)?;
        let mut ids = vec![pad_id; prompts.len()];
        let mut mask = vec![0u8; prompts.len()];
        for (r, row) in rows.iter().enumerate() {
            if !live[r] {
                continue;
            }
            let token = samplers[r].next(row);
            new[r].push(token);
            live[r] = !samplers[r].is_stop(token) && new[r].len() < config.max_new_tokens;
            if live[r] {
                (ids[r], mask[r]) = (token, 1);
            }
        }
        batch = TokenBatch {
            input_ids: ids,
            attention_mask: mask,
            token_type_ids: None,
            dims: [prompts.len(), 1],
        };
    }
    Ok(new)
}

/// [`generate`] with any [`CausalLm`], re-running the whole sequence at every step (no KV
/// cache: for models without one, and as the cache's reference).
pub fn generate_uncached<M: CausalLm>(
    model: &M,
    prompt: &[u32],
    config: &GenerationConfig,
) -> Result<Vec<u32>, ModelError> {
    generate(prompt, config, |sequence, _| {
        last_row(model.logits(&TokenBatch::right_padded(&[sequence.to_vec()], 0)))
    })
}

/// The logits of the last position of a one-sequence batch `[1, T, V]`, on the host.
pub fn last_row(logits: burn::tensor::Tensor<3>) -> Result<Vec<f32>, ModelError> {
    let [_, t, v] = logits.dims();
    logits
        .narrow(1, t - 1, 1)
        .reshape([v])
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Readback(e.to_string()))
}

/// The logits of every row's last position of `[B, T, V]`, on the host.
pub fn last_rows(logits: burn::tensor::Tensor<3>) -> Result<Vec<Vec<f32>>, ModelError> {
    let [b, t, v] = logits.dims();
    let flat = logits
        .narrow(1, t - 1, 1)
        .reshape([b * v])
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Readback(e.to_string()))?;
    Ok(flat.chunks(v.max(1)).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake model whose next token is `(last real token + 1) mod 5`, 4 the stop token.
    #[test]
    fn batched_rows_decode_as_they_would_alone() {
        let config = GenerationConfig::greedy(6, vec![4]);
        let logits_for = |last: u32| -> Vec<f32> {
            let mut row = vec![0.0; 5];
            row[((last + 1) % 5) as usize] = 1.0;
            row
        };
        let prompts = vec![vec![1, 2], vec![3], vec![], vec![0, 0, 0]];
        let mut calls = 0;
        let batched = generate_batch(&prompts, &config, 9, |batch| {
            calls += 1;
            let [b, t] = batch.dims;
            Ok((0..b)
                .map(|r| {
                    // padding and finished rows feed masked pads: never read as a token
                    let m = batch.attention_mask[r * t + t - 1];
                    logits_for(if m == 1 {
                        batch.input_ids[r * t + t - 1]
                    } else {
                        7
                    })
                })
                .collect())
        })
        .unwrap();
        for (p, got) in prompts.iter().zip(&batched) {
            let alone = generate(p, &config, |_, new| Ok(logits_for(*new.last().unwrap())));
            assert_eq!(got, &alone.unwrap(), "prompt {p:?}");
        }
        assert_eq!(batched[0], vec![3, 4]);
        assert_eq!(batched[2], Vec::<u32>::new());
        assert_eq!(batched[3], vec![1, 2, 3, 4]);
        // the longest row decides the number of steps
        assert_eq!(calls, 4);
    }

    #[test]
    fn left_padding_aligns_the_last_tokens() {
        let b = TokenBatch::left_padded(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!(b.input_ids, vec![5, 6, 7, 0, 0, 8]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 0, 0, 1]);
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(&GenerationConfig::greedy(4, vec![]));
        assert_eq!(s.next(&[0.1, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_p_restricts_sampling_to_the_nucleus() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_p: 0.5,
            ..GenerationConfig::greedy(4, vec![])
        };
        let mut s = Sampler::new(&cfg);
        // token 2 alone holds > 50% of the mass: it is always chosen
        for _ in 0..50 {
            assert_eq!(s.next(&[0.0, 0.0, 5.0, 0.0]), 2);
        }
    }

    #[test]
    fn sampling_is_reproducible_from_the_seed() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            ..GenerationConfig::greedy(4, vec![])
        };
        let draw = || {
            let mut s = Sampler::new(&cfg);
            (0..20)
                .map(|_| s.next(&[0.0, 0.5, 1.0, 0.2]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }
}
