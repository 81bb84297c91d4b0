//! The README's adapter example, whole: load a checkpoint by its `model_type`, inject PiSSA
//! adapters, train them with BA-LoRA for a few steps, save a PEFT adapter and load it back
//! onto a fresh base. The README block is this file below the `// README` line, line for
//! line (a test in `examples/adapter_api.rs` keeps them equal); CI runs it.
//!
//! ```text
//! cargo run --example quickstart [-- MODEL_DIR]   # default: the tiny Llama test fixture
//! ```
// README
use anyhow::{Result, ensure};
use balora::adapters::{InitMode, LoraConfig, TargetModules, inject};
use balora::auto::AutoCausalLm;
use balora::burn::tensor::DType;
use balora::io::{SaveOptions, load_adapter, save_adapter};
use balora::losses::{BaLoraLoss, RegularizerConfig, Task};
use balora::model::{CausalLm, TokenBatch};
use balora::train::data::Example;
use balora::train::metrics::{StepMetrics, read_metrics};
use balora::train::{LoopConfig, NlgObjective, Trainer};

fn main() -> Result<()> {
    // any Hugging Face causal LM directory (config.json, *.safetensors)
    let dir = std::env::args().nth(1);
    let dir = dir.as_deref().unwrap_or("tests/fixtures/models/tiny-llama");
    let device = balora::parse_device("cpu", /* autodiff */ true)?; // or "wgpu", "cuda:0"
    let model = AutoCausalLm::from_pretrained(dir.as_ref(), &device, DType::F32)?; // by model_type
    let config = LoraConfig::new(16, TargetModules::names(["q_proj", "v_proj"]))
        .with_lora_alpha(16.0)
        .with_init(InitMode::PissaFast { niter: 4 }); // Gaussian | Pissa | PissaFast
    let (model, report) = inject(model, &config)?; // freezes the base, attaches adapters
    println!("trainable params: {}", report.trainable_params);

    // toy data: 16 token sequences; −100 masks each one's 4-token prompt out of the loss
    let examples: Vec<Example> = (0..16u32)
        .map(|i| {
            let ids: Vec<u32> = (0..12).map(|t| 3 + (i * 7 + t * 13) % 60).collect();
            let labels = ids.iter().enumerate();
            let labels = labels.map(|(t, &id)| if t < 4 { -100 } else { id as i64 });
            let labels = labels.collect();
            Example {
                ids,
                labels,
                token_types: None,
            }
        })
        .collect();
    let steps = 10;
    let balora = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg), steps)?;
    let objective = NlgObjective::new(Some(balora), &model); // teacher: shares the frozen weights
    let loop_config = LoopConfig {
        max_steps: steps,
        lr: 1e-2,
        ..LoopConfig::default()
    };
    let out = tempfile::tempdir()?; // the run's folder: metrics, checkpoints, the adapter
    let (run, adapter) = (out.path().join("run"), out.path().join("adapter"));
    let pad = 0;
    let trainer = Trainer::new(model, objective, examples, pad, loop_config, &run, &device)?;
    let (model, summary) = trainer.with_default_observers().fit()?; // metrics.jsonl, loss.png
    println!(
        "{} steps, {:.0} tokens/s",
        summary.steps, summary.tokens_per_s
    );
    let logged: Vec<StepMetrics> = read_metrics(&run.join("metrics.jsonl"))?; // a line per step
    let (first, last) = (logged[0].task, logged[steps - 1].task);
    println!("task loss {first:.3} → {last:.3}");
    save_adapter(&model, &config, &adapter, &SaveOptions::default())?; // peft-loadable

    // the saved adapter on a fresh base gives the trained model's logits
    let mut fresh = AutoCausalLm::from_pretrained(dir.as_ref(), &device, DType::F32)?;
    load_adapter(&mut fresh, &adapter)?;
    let batch = TokenBatch::right_padded(&[vec![5, 9, 17, 33]], pad);
    let diff = (model.logits(&batch) - fresh.logits(&batch)).abs().max();
    let diff = diff.into_scalar::<f64>();
    println!("reloaded adapter: max |Δlogits| = {diff:.1e}");
    ensure!(last < first, "training did not lower the loss");
    ensure!(diff < 1e-4, "the reloaded adapter differs by {diff}");
    Ok(())
}
