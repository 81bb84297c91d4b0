//! The README's code as a program: load a checkpoint by its `model_type`, inject PiSSA
//! adapters, train them with BA-LoRA for a few steps, save a PEFT adapter and load it back;
//! then one BA-LoRA loss by hand and a model loaded by its class. CI runs it; a unit test
//! keeps every README code block identical to its marked block here.
//!
//! ```text
//! cargo run --example adapter_api [-- MODEL_DIR]   # default: the tiny Llama test fixture
//! ```

use anyhow::{Result, ensure};
use balora::io::load_adapter;
use balora::model::{CausalLm, TokenBatch};
use balora::train::data::Example;

fn main() -> Result<()> {
    let dir = std::env::args().nth(1);
    let dir = dir.as_deref().unwrap_or("tests/fixtures/models/tiny-llama");
    let out = tempfile::tempdir()?;
    let (run, adapter) = (out.path().join("run"), out.path().join("adapter"));
    // toy data: each example's labels are its tokens (−100 masks a prompt token)
    let examples: Vec<Example> = (0..16u32)
        .map(|i| {
            let ids: Vec<u32> = (0..12).map(|t| 3 + (i * 7 + t * 13) % 60).collect();
            let labels = ids.iter().enumerate();
            let labels = labels
                .map(|(t, &id)| if t < 4 { -100 } else { id as i64 })
                .collect();
            Example {
                ids,
                labels,
                token_types: None,
            }
        })
        .collect();
    let pad = 0;
    // README: adapter
    use balora::adapters::{InitMode, LoraConfig, TargetModules, inject};
    use balora::auto::AutoCausalLm;
    use balora::burn::tensor::DType;
    use balora::io::{SaveOptions, save_adapter};
    use balora::losses::{BaLoraLoss, RegularizerConfig, Task};
    use balora::train::{LoopConfig, NlgObjective, Trainer};

    let device = balora::parse_device("cpu", /* autodiff */ true)?; // or "wgpu", "cuda:0"
    let model = AutoCausalLm::from_pretrained(dir.as_ref(), &device, DType::F32)?; // by model_type
    let config = LoraConfig::new(16, TargetModules::names(["q_proj", "v_proj"]))
        .with_lora_alpha(16.0)
        .with_init(InitMode::PissaFast { niter: 4 }); // Gaussian | Pissa | PissaFast
    let (model, report) = inject(model, &config)?; // freezes the base, attaches adapters
    println!("trainable params: {}", report.trainable_params);
    let steps = 10;
    let balora = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg), steps)?;
    let objective = NlgObjective::new(Some(balora), &model); // teacher: shares the frozen weights
    let loop_config = LoopConfig {
        max_steps: steps,
        lr: 1e-2,
        ..LoopConfig::default()
    };
    let trainer = Trainer::new(model, objective, examples, pad, loop_config, &run, &device)?;
    let (model, summary) = trainer.with_default_observers().fit()?; // metrics.jsonl, loss.png
    save_adapter(&model, &config, &adapter, &SaveOptions::default())?; // peft-loadable
    // README: end
    regularisers_by_hand(model.clone())?;
    by_class(dir)?;
    let first = balora::train::metrics::read_metrics::<balora::train::metrics::StepMetrics>(
        &run.join("metrics.jsonl"),
    )?;
    let last = summary.last.as_ref().map_or(f64::NAN, |m| m.task);
    println!("task loss {:.4} → {last:.4}", first[0].task);
    ensure!(last < first[0].task, "training did not lower the loss");
    // the saved adapter, loaded onto a fresh base, gives the trained model's logits
    let mut fresh = AutoCausalLm::from_pretrained(dir.as_ref(), &device, DType::F32)?;
    load_adapter(&mut fresh, &adapter)?;
    let batch = TokenBatch::right_padded(&[vec![5, 9, 17, 33]], 0);
    let diff = (model.logits(&batch) - fresh.logits(&batch)).abs().max();
    let diff = diff.into_scalar::<f64>();
    println!("reloaded adapter: max |Δlogits| = {diff:.1e}");
    ensure!(diff < 1e-4, "the reloaded adapter differs by {diff}");
    Ok(())
}

/// One BA-LoRA loss and its backward outside the trainer.
fn regularisers_by_hand(model: balora::auto::AutoCausalLm) -> Result<()> {
    let batch = TokenBatch::right_padded(&[vec![5, 9, 17, 33, 2, 8], vec![4, 40, 10]], 0);
    let labels: Vec<i64> = batch.input_ids.iter().map(|&t| t as i64).collect();
    let (total_steps, step) = (10, 5);
    // README: regularisers
    use balora::losses::{BaLoraLoss, RegularizerConfig};

    let reg = RegularizerConfig::iclr2026(); // or ::paper(Task::Nlg) (the default preset)
    let loss_fn = BaLoraLoss::new(reg.with_svd_k(2), total_steps)?;
    let frozen = balora::adapters::teacher(&model); // take it before training starts
    let logits = model.logits(&batch); // [B, T, V]
    // the shifted causal-LM cross-entropy (−100 ignored) and every term in one vocabulary pass
    let out = loss_fn.nlg_causal_lm(step, logits, &labels, || frozen.logits(&batch))?;
    out.loss.backward(); // out.terms.{consistency, diversity, svd, lambdas, skipped} to log
    // README: end
    Ok(())
}

/// A model by its class rather than by `model_type`.
fn by_class(dir: &str) -> Result<()> {
    let device = balora::burn::tensor::Device::flex();
    // README: models
    use balora::burn::tensor::DType;
    use balora::models::llama::LlamaForCausalLM;

    let model = LlamaForCausalLM::from_pretrained(dir.as_ref(), &device, DType::F32)?;
    // README: end
    ensure!(model.config().vocab_size > 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every README code block marked `// examples/adapter_api.rs: NAME` is, line for line,
    /// this file's block between `// README: NAME` and `// README: end`.
    #[test]
    fn the_readme_shows_this_example() {
        let lines = |text: &str| -> Vec<String> {
            let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            lines.map(String::from).collect()
        };
        let this = include_str!("adapter_api.rs");
        let readme = include_str!("../README.md");
        let tag = "// examples/adapter_api.rs: ";
        let mut checked = 0;
        for block in readme.split("```rust\n").skip(1) {
            let block = &block[..block.find("```").expect("a closed code block")];
            let (first, body) = block.split_once('\n').unwrap_or((block, ""));
            let name = first.strip_prefix(tag).unwrap_or_else(|| {
                panic!("README code block not taken from this example: {first}")
            });
            let begin = format!("// README: {name}\n");
            let start = this.find(&begin).expect("the marker") + begin.len();
            let end = start + this[start..].find("// README: end").expect("its end");
            assert_eq!(
                lines(&this[start..end]),
                lines(body),
                "README block {name} drifted"
            );
            checked += 1;
        }
        assert_eq!(checked, 3, "README code blocks checked");
    }
}
