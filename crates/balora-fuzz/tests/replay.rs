//! Every fuzz target over its committed seeds (`fuzz/seeds/<target>/`) and regression inputs
//! (`fuzz/regressions/<target>/`, every crash a fuzzer found), plus deterministic mutations
//! of them: the short smoke of each target the test suite runs (docs/reliability.md,
//! "Fuzzing"; the long libFuzzer runs are `scripts/fuzz`).
//!
//! A panicking input is written to `target/fuzz-failures/` and named in the failure.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use balora_fuzz::TARGETS;

/// Mutations per target: enough to leave the seeds' happy paths on every run, few enough for
/// CI (the slowest target, a training step per accepted checkpoint, stays under a few s).
const MUTATIONS: usize = 400;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// SplitMix64: the mutation stream of a target is a function of its name.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Interesting bytes and numbers a mutation splices in (JSON and TOML punctuation, limits).
const TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1e308",
    b"NaN",
    b"18446744073709551615",
    b"4294967296",
    b"null",
    b"[]",
    b"{}",
    b"\"",
    b",",
    b":",
    b"\n",
    b"=",
    b"\t",
    b"{{",
    b"}}",
    b"{%",
    b"%}",
    b"\xff\xff\xff\xff",
];

fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, t.iter().copied());
            }
            3 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = rng.next() as u8;
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn run_one(name: &str, target: fn(&[u8]), label: &str, input: &[u8]) {
    if std::panic::catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{:016x}", fnv(input)));
        std::fs::write(&path, input).unwrap();
        panic!(
            "{name}: {label} panicked; the input is {} (replay: cargo fuzz run {name} {})",
            path.display(),
            path.display()
        );
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn replay(name: &str) {
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"))
        .1;
    let seeds = inputs(&root().join("seeds").join(name));
    assert!(
        !seeds.is_empty(),
        "{name}: no seeds under fuzz/seeds/{name}"
    );
    for (label, input) in seeds
        .iter()
        .chain(&inputs(&root().join("regressions").join(name)))
    {
        run_one(name, target, label, input);
    }
    let mut rng = Rng(fnv(name.as_bytes()));
    for i in 0..MUTATIONS {
        let (_, seed) = &seeds[i % seeds.len()];
        let (_, other) = &seeds[rng.below(seeds.len())];
        let input = mutate(seed, other, &mut rng);
        run_one(name, target, &format!("mutation {i}"), &input);
    }
}

macro_rules! replay_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )+

        #[test]
        fn every_target_is_replayed() {
            let tested = [$(stringify!($name)),+];
            for (name, _) in TARGETS {
                assert!(tested.contains(name), "{name} has no replay test");
            }
        }
    };
}

replay_tests!(
    config_llama,
    config_bert,
    config_gpt2,
    safetensors,
    peft_adapter,
    tokenizer,
    chat_template,
    nlg_jsonl,
    nlu_jsonl,
    nlu_tsv,
    nlu_csv,
    run_config,
    experiment_config,
    checkpoint,
);

/// Regenerate `fuzz/seeds/` (run by hand after a format change; the seeds are committed).
#[test]
#[ignore]
fn write_seeds() {
    balora_fuzz::seeds::write_all(&root());
}
