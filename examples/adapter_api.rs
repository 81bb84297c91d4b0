//! The README's "Adapter API" example as a program: load a checkpoint by its `model_type`,
//! inject PiSSA adapters, train them with BA-LoRA for a few steps, save a PEFT adapter and
//! load it back. CI runs it; a unit test keeps the README's copy identical to the block below.
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
    // README: begin
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

#[cfg(test)]
mod tests {
    /// The README shows exactly the lines between the markers above.
    #[test]
    fn the_readme_shows_this_example() {
        let this = include_str!("adapter_api.rs");
        let block = |text: &'static str, begin: &str, end: &str| -> Vec<&'static str> {
            let start = text.find(begin).expect("begin marker") + begin.len();
            let stop = start + text[start..].find(end).expect("end marker");
            text[start..stop]
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect()
        };
        let ours = block(this, "// README: begin", "// README: end");
        let readme = include_str!("../README.md");
        let marker = "// examples/adapter_api.rs (CI runs it; a test keeps this copy identical)";
        let theirs = block(readme, marker, "```");
        assert_eq!(
            ours, theirs,
            "README's adapter example drifted from examples/adapter_api.rs"
        );
    }
}
