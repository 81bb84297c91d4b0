//! The README's smaller code blocks as a program: one BA-LoRA loss by hand and a model loaded
//! by its class (the adapter example is `examples/quickstart.rs`, whole). CI runs it; a unit
//! test keeps every README code block identical to its marked block here or to the
//! quickstart.
//!
//! ```text
//! cargo run --example adapter_api [-- MODEL_DIR]   # default: the tiny Llama test fixture
//! ```

use anyhow::{Result, ensure};
use balora::adapters::{InitMode, LoraConfig, TargetModules, inject};
use balora::auto::AutoCausalLm;
use balora::burn::tensor::DType;
use balora::model::{CausalLm, TokenBatch};

fn main() -> Result<()> {
    let dir = std::env::args().nth(1);
    let dir = dir.as_deref().unwrap_or("tests/fixtures/models/tiny-llama");
    let device = balora::parse_device("cpu", true)?;
    let model = AutoCausalLm::from_pretrained(dir.as_ref(), &device, DType::F32)?;
    let config = LoraConfig::new(4, TargetModules::names(["q_proj", "v_proj"]))
        .with_init(InitMode::PissaFast { niter: 2 });
    let (model, _) = inject(model, &config)?;
    regularisers_by_hand(model)?;
    by_class(dir)?;
    Ok(())
}

/// One BA-LoRA loss and its backward outside the trainer.
fn regularisers_by_hand(model: AutoCausalLm) -> Result<()> {
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
    let grads = out.loss.backward(); // out.terms.{consistency, diversity, svd, lambdas, skipped}
    // README: end
    let mut trained = 0;
    balora::adapters::AdapterSlots::visit_slots(&model, &mut |_, slot| {
        trained += slot
            .adapter()
            .is_some_and(|a| a.lora_b().val().grad(&grads).is_some()) as usize;
    });
    ensure!(trained > 0, "the BA-LoRA loss gave no adapter a gradient");
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
    /// this file's block between `// README: NAME` and `// README: end`; the one marked
    /// `// examples/quickstart.rs` is that whole example below its `// README` line.
    #[test]
    fn the_readme_shows_these_examples() {
        let lines = |text: &str| -> Vec<String> {
            let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            lines.map(String::from).collect()
        };
        let this = include_str!("adapter_api.rs");
        let quickstart = include_str!("quickstart.rs");
        let readme = include_str!("../README.md");
        let tag = "// examples/adapter_api.rs: ";
        let mut checked = 0;
        for block in readme.split("```rust\n").skip(1) {
            let block = &block[..block.find("```").expect("a closed code block")];
            let (first, body) = block.split_once('\n').unwrap_or((block, ""));
            let (name, source) = if first == "// examples/quickstart.rs" {
                let start = quickstart.find("// README\n").expect("the marker") + 10;
                ("quickstart", &quickstart[start..])
            } else {
                let name = first.strip_prefix(tag).unwrap_or_else(|| {
                    panic!("README code block not taken from an example: {first}")
                });
                let begin = format!("// README: {name}\n");
                let start = this.find(&begin).expect("the marker") + begin.len();
                let end = start + this[start..].find("// README: end").expect("its end");
                (name, &this[start..end])
            };
            assert_eq!(lines(source), lines(body), "README block {name} drifted");
            checked += 1;
        }
        assert_eq!(checked, 3, "README code blocks checked");
    }
}
