//! Token selection for generation: greedy, temperature and nucleus (top-p) sampling.

use rand::SeedableRng;
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

#[cfg(test)]
mod tests {
    use super::*;

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
