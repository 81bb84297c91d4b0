//! The trainer end to end on tiny checkpoints (seconds): every method learns, adapters load
//! back, evaluation runs, a killed-and-resumed run reproduces the uninterrupted loss curve,
//! and bad data is reported with its file and line.

use std::path::Path;

use balora_adapters::{
    InitMode, LoraConfig, MonteCloraConfig, TargetModules, clear_variants, inject,
};
use balora_bert::BertForSequenceClassification;
use balora_deberta::DebertaV2ForSequenceClassification;
use balora_io::{SaveOptions, load_adapter, save_adapter};
use balora_llama::LlamaForCausalLM;
use balora_losses::{BaLoraLoss, RegularizerConfig, Task};
use balora_model::{CausalLm, GenerationConfig, SequenceClassifier, TokenBatch};
use balora_testkit::{asset, fixture};
use balora_train::data::{
    Example, LabelSet, PromptFormat, read_nlg_jsonl, read_nlu, tokenize_nlg, tokenize_nlu,
};
use balora_train::metrics::{StepMetrics, read_metrics};
use balora_train::schedule::LrSchedule;
use balora_train::{
    LoopConfig, NlgObjective, NluObjective, Objective, TorchAdamWConfig, TrainError, Trainer,
};
use burn::module::Module;
use burn::tensor::{DType, Device};

fn device() -> Device {
    Device::flex().autodiff()
}

/// The flex device's RNG (dropout masks) is process-wide: tests that train take turns, as a
/// real run (one loop per process) does.
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prompts of random tokens, each answered by the same 5-token response: learnable in a few
/// steps by a rank-4 adapter.
fn nlg_examples() -> Vec<Example> {
    (0..16u32)
        .map(|i| {
            let prompt: Vec<u32> = (0..4).map(|k| 3 + (i * 7 + k * 13) % 100).collect();
            let response = [10u32, 11, 12, 13, 2];
            let ids: Vec<u32> = prompt.iter().chain(&response).copied().collect();
            let labels = prompt
                .iter()
                .map(|_| -100)
                .chain(response.iter().map(|&t| t as i64))
                .collect();
            Example {
                ids,
                labels,
                token_types: None,
            }
        })
        .collect()
}

fn loop_config(steps: usize) -> LoopConfig {
    LoopConfig {
        lr: 3e-2,
        schedule: LrSchedule::Cosine,
        warmup_ratio: 0.1,
        adamw: TorchAdamWConfig::default(),
        batch_size: 4,
        grad_accum: 2,
        max_grad_norm: Some(1.0),
        max_steps: steps,
        save_every: 5,
        seed: 7,
        stop_at_step: None,
    }
}

fn adapter(method: &str) -> LoraConfig {
    LoraConfig::new(
        4,
        TargetModules::names(["q_proj", "v_proj", "up_proj", "down_proj"]),
    )
    .with_lora_alpha(8.0)
    .with_init(if method == "pissa" || method == "balora" {
        InitMode::Pissa
    } else {
        InitMode::Gaussian
    })
    .with_monteclora((method == "monteclora").then(|| MonteCloraConfig::new().with_num_samples(4)))
    .with_lora_dropout(if method == "lora" { 0.1 } else { 0.0 })
}

/// A tiny Llama-family fixture model (`tiny-llama`, `tiny-gemma`).
fn tiny(case: &str) -> LlamaForCausalLM {
    LlamaForCausalLM::from_pretrained(&fixture(&format!("models/{case}")), &device(), DType::F32)
        .unwrap()
}

fn tiny_llama() -> LlamaForCausalLM {
    tiny("tiny-llama")
}

fn run_nlg(
    method: &str,
    dir: &Path,
    steps: usize,
    stop: Option<usize>,
    resume: bool,
) -> LlamaForCausalLM {
    run_nlg_on("tiny-llama", method, dir, steps, stop, resume)
}

fn run_nlg_on(
    case: &str,
    method: &str,
    dir: &Path,
    steps: usize,
    stop: Option<usize>,
    resume: bool,
) -> LlamaForCausalLM {
    let cfg = adapter(method);
    let (model, _) = inject(tiny(case), &cfg).unwrap();
    let balora = (method == "balora")
        .then(|| BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg), steps).unwrap());
    let objective = NlgObjective::new(balora, &model);
    let lc = LoopConfig {
        stop_at_step: stop,
        ..loop_config(steps)
    };
    let mut trainer = Trainer::new(model, objective, nlg_examples(), 0, lc, dir, &device())
        .unwrap()
        .with_default_observers();
    if resume {
        trainer.resume().unwrap();
    }
    let (mut model, _) = trainer.fit().unwrap();
    clear_variants(&mut model);
    save_adapter(&model, &cfg, &dir.join("adapter"), &SaveOptions::default()).unwrap();
    model
}

#[test]
fn every_method_learns_and_its_adapter_loads_back() {
    let _turn = exclusive();
    for method in ["lora", "pissa", "balora", "monteclora"] {
        learns_and_reloads("tiny-llama", method);
    }
}

/// Gemma (GELU-tanh MLP, `(1 + w)` norms, scaled embeddings, tied head) trains with BA-LoRA's
/// NLG terms, teacher included, like Llama.
#[test]
fn balora_learns_on_tiny_gemma_and_its_adapter_loads_back() {
    let _turn = exclusive();
    learns_and_reloads("tiny-gemma", "balora");
}

/// 20 steps of `method` on the tiny model `case` halve the task loss; the saved adapter
/// reproduces the trained model on a fresh base, and generation has learned the response.
fn learns_and_reloads(case: &str, method: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = run_nlg_on(case, method, dir.path(), 20, None, false);
    let m = read_metrics::<StepMetrics>(&dir.path().join("metrics.jsonl")).unwrap();
    let what = format!("{case} {method}");
    assert_eq!(m.len(), 20, "{what}");
    let (first, last) = (m[0].task, m[19].task);
    assert!(
        last < 0.5 * first,
        "{what}: task loss {first} → {last} did not decrease"
    );
    if method == "balora" {
        assert!(m[5].consistency.is_some() && m[5].svd.is_some() && m[5].diversity.is_some());
    }
    if method == "monteclora" {
        assert!(m[5].monteclora.is_some());
    }
    assert!(dir.path().join("loss.png").is_file());
    // the saved adapter reproduces the trained model on the original base
    let mut fresh = tiny(case).valid();
    load_adapter(&mut fresh, &dir.path().join("adapter")).unwrap();
    let batch = TokenBatch::right_padded(&[nlg_examples()[0].ids.clone()], 0);
    let want = model.valid().logits(&batch);
    let got = fresh.logits(&batch);
    let err: f64 = (want - got).abs().max().into_scalar::<f64>();
    assert!(err < 1e-3, "{what}: reloaded adapter differs by {err:e}");
    // evaluation (generation) runs and has learned the response
    let out = model
        .valid()
        .generate(
            &nlg_examples()[3].ids[..4],
            &GenerationConfig::greedy(5, vec![2]),
            true,
        )
        .unwrap();
    assert_eq!(out, vec![10, 11, 12, 13, 2], "{what}");
}

/// `teacher = checkpoint` (docs/methods.md, "The teacher"): a separately loaded pretrained
/// model and the model's own frozen initial (PiSSA) adapter are the same teacher, so two
/// BA-LoRA runs that differ only in the teacher log the same consistency term, step after step.
#[test]
fn a_checkpoint_teacher_equals_the_initial_adapter_teacher() {
    let _turn = exclusive();
    let steps = 4;
    let run = |checkpoint: bool| {
        let dir = tempfile::tempdir().unwrap();
        let (model, _) = inject(tiny_llama(), &adapter("balora")).unwrap();
        let c = RegularizerConfig {
            lambda_consistency: 1.0,
            ..RegularizerConfig::paper(Task::Nlg)
        };
        let loss = BaLoraLoss::new(c, steps).unwrap();
        let objective = if checkpoint {
            NlgObjective::with_teacher(loss, tiny_llama())
        } else {
            NlgObjective::new(Some(loss), &model)
        };
        let trainer = Trainer::new(
            model,
            objective,
            nlg_examples(),
            0,
            loop_config(steps),
            dir.path(),
            &device(),
        )
        .unwrap();
        trainer.fit().unwrap();
        read_metrics::<StepMetrics>(&dir.path().join("metrics.jsonl")).unwrap()
    };
    let own = run(false);
    let separate = run(true);
    let kl = |m: &balora_train::metrics::StepMetrics| m.consistency.expect("consistency logged");
    for (a, b) in own.iter().zip(&separate) {
        let (x, y) = (kl(a), kl(b));
        assert!(
            (x - y).abs() <= 1e-6 + 1e-4 * x.abs(),
            "step {}: consistency {x} (initial adapter) vs {y} (checkpoint)",
            a.step
        );
    }
    // the term is alive: the student starts at the teacher and moves away from it
    assert!(
        kl(&own[0]).abs() < 1e-4 && kl(&own[steps - 1]) > 1e-3,
        "{own:?}"
    );
}

#[test]
fn a_resumed_run_reproduces_the_uninterrupted_loss_curve() {
    let _turn = exclusive();
    for method in ["lora", "monteclora"] {
        let full = tempfile::tempdir().unwrap();
        run_nlg(method, full.path(), 10, None, false);
        let split = tempfile::tempdir().unwrap();
        run_nlg(method, split.path(), 10, Some(5), false);
        run_nlg(method, split.path(), 10, None, true);
        let a = read_metrics::<StepMetrics>(&full.path().join("metrics.jsonl")).unwrap();
        let b = read_metrics::<StepMetrics>(&split.path().join("metrics.jsonl")).unwrap();
        let loss = |m: &[balora_train::metrics::StepMetrics]| {
            m.iter().map(|x| x.loss.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(a.len(), 10);
        assert_eq!(loss(&a), loss(&b), "{method}: resumed curve differs");
    }
}

/// An objective whose loss turns NaN at optimizer step `bad` (0-based), as a diverging run's
/// does.
struct NanAt<O> {
    inner: O,
    bad: usize,
}

impl<M, O: Objective<M>> Objective<M> for NanAt<O> {
    fn loss(
        &self,
        model: &M,
        batch: &TokenBatch,
        labels: &[i64],
        step: usize,
    ) -> Result<balora_losses::LossOutput, TrainError> {
        let mut out = self.inner.loss(model, batch, labels, step)?;
        if step == self.bad {
            out.loss = out.loss.mul_scalar(f64::NAN);
        }
        Ok(out)
    }
    fn token_labels(&self) -> bool {
        self.inner.token_labels()
    }
}

/// A NaN loss at step 4 stops the run with an error naming the step; the checkpoint of step 3
/// is intact, nothing of step 4 is logged, and `resume` from it (the fault gone) reproduces the
/// uninterrupted run's metrics bit for bit.
#[test]
fn a_nan_loss_stops_the_run_and_the_last_checkpoint_resumes_it() {
    let _turn = exclusive();
    let steps = 6;
    let lc = LoopConfig {
        save_every: 1,
        ..loop_config(steps)
    };
    let trainer = |dir: &Path, bad: usize| {
        let (model, _) = inject(tiny_llama(), &adapter("lora")).unwrap();
        let objective = NanAt {
            inner: NlgObjective::new(None, &model),
            bad,
        };
        Trainer::new(
            model,
            objective,
            nlg_examples(),
            0,
            lc.clone(),
            dir,
            &device(),
        )
        .unwrap()
    };
    let full = tempfile::tempdir().unwrap();
    trainer(full.path(), usize::MAX).fit().unwrap();
    let faulty = tempfile::tempdir().unwrap();
    let err = trainer(faulty.path(), 3)
        .fit()
        .expect_err("the NaN must stop the run");
    assert!(
        matches!(err, TrainError::NonFinite { step: 4, .. }),
        "{err}"
    );
    let latest = std::fs::read_to_string(faulty.path().join("latest")).unwrap();
    assert_eq!(latest, "checkpoint-3");
    let logged = read_metrics::<StepMetrics>(&faulty.path().join("metrics.jsonl")).unwrap();
    assert_eq!(logged.len(), 3);
    let mut again = trainer(faulty.path(), usize::MAX);
    assert!(again.resume().unwrap());
    assert_eq!(again.state().step, 3);
    again.fit().unwrap();
    let a = std::fs::read(full.path().join("metrics.jsonl")).unwrap();
    let b = std::fs::read(faulty.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        a, b,
        "the resumed run's metrics differ from the uninterrupted run's"
    );
}

/// Two trainers on one output folder: the second is refused while the first lives (its
/// lock names this process), and the folder is free again once the first is gone.
#[test]
fn a_second_run_on_the_same_output_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let make = || {
        let (model, _) = inject(tiny_llama(), &adapter("lora")).unwrap();
        let objective = NlgObjective::new(None, &model);
        let lc = loop_config(2);
        Trainer::new(
            model,
            objective,
            nlg_examples(),
            0,
            lc,
            dir.path(),
            &device(),
        )
    };
    let first = make().unwrap();
    let err = make().err().expect("the folder is taken");
    let text = err.to_string();
    assert!(matches!(err, TrainError::Locked { pid, .. } if pid == std::process::id()));
    assert!(
        text.contains(".lock") && text.contains("another run"),
        "{text}"
    );
    drop(first);
    assert!(make().is_ok(), "a released folder is free again");
    // a lock left by a process that no longer exists (killed) is taken over
    std::fs::write(dir.path().join(".lock"), "999999999").unwrap();
    assert!(make().is_ok(), "a stale lock must not block a resume");
}

/// 24 short sequences of three classes, told apart by their first tokens.
fn three_class_examples() -> Vec<Example> {
    (0..24u32)
        .map(|i| Example {
            ids: vec![3 + i % 5, 20 + (i % 3) * 7, 9, 40 + (i % 2) * 30],
            labels: vec![(i % 3) as i64],
            token_types: None,
        })
        .collect()
}

#[test]
fn classification_trains_with_balora() {
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let model = BertForSequenceClassification::from_pretrained(
        &fixture("models/tiny-bert-cls"),
        None,
        7,
        &device(),
        DType::F32,
    )
    .unwrap();
    let cfg = LoraConfig::new(4, TargetModules::names(["query", "value"])).with_lora_alpha(8.0);
    let (model, _) = inject(model, &cfg).unwrap();
    let examples = three_class_examples();
    let balora = Some(BaLoraLoss::new(RegularizerConfig::paper(Task::Nlu), 20).unwrap());
    let lc = LoopConfig {
        lr: 1e-2,
        ..loop_config(20)
    };
    let objective = NluObjective::new(balora, &model);
    let trainer = Trainer::new(model, objective, examples, 0, lc, dir.path(), &device()).unwrap();
    let (model, _) = trainer.fit().unwrap();
    let m = read_metrics::<StepMetrics>(&dir.path().join("metrics.jsonl")).unwrap();
    assert!(m[19].task < m[0].task, "{} → {}", m[0].task, m[19].task);
    assert!(m[3].diversity.is_some() && m[3].svd.is_some());
    assert_eq!(model.valid().num_labels(), 3);
}

/// BA-LoRA's NLU terms on the tiny DeBERTa-v3 (PiSSA init, all three regularisers): the task
/// loss falls in 20 steps, and the saved adapter — pooler and classifier included — reloads
/// onto a model with another head seed to the trained logits.
#[test]
fn balora_learns_on_tiny_deberta_and_its_adapter_loads_back() {
    let _turn = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("models/tiny-deberta-v3-cls");
    let load = |seed| {
        DebertaV2ForSequenceClassification::from_pretrained(
            &base,
            None,
            seed,
            &device(),
            DType::F32,
        )
        .unwrap()
    };
    let cfg = LoraConfig::new(
        4,
        TargetModules::names(["query_proj", "key_proj", "value_proj"]),
    )
    .with_lora_alpha(8.0)
    .with_init(InitMode::Pissa);
    let (model, _) = inject(load(7), &cfg).unwrap();
    let examples = three_class_examples();
    let balora = Some(BaLoraLoss::new(RegularizerConfig::paper(Task::Nlu), 20).unwrap());
    let lc = LoopConfig {
        lr: 1e-2,
        ..loop_config(20)
    };
    let objective = NluObjective::new(balora, &model);
    let run = dir.path().join("run");
    let trainer = Trainer::new(model, objective, examples, 0, lc, &run, &device()).unwrap();
    let (model, _) = trainer.fit().unwrap();
    let m = read_metrics::<StepMetrics>(&run.join("metrics.jsonl")).unwrap();
    assert!(m[19].task < m[0].task, "{} → {}", m[0].task, m[19].task);
    assert!(m[3].consistency.is_some() && m[3].diversity.is_some() && m[3].svd.is_some());
    let model = model.valid();
    let options = SaveOptions {
        task_type: Some(balora_io::TaskType::SeqCls),
        ..SaveOptions::default()
    };
    save_adapter(&model, &cfg, &dir.path().join("adapter"), &options).unwrap();
    let batch = TokenBatch::right_padded(&[vec![3, 20, 9, 40], vec![4, 27, 9]], 0);
    let mut fresh = load(99);
    load_adapter(&mut fresh, &dir.path().join("adapter")).unwrap();
    let err = balora_testkit::max_abs_diff(fresh.logits(&batch), model.logits(&batch));
    assert!(err < 1e-5, "reloaded DeBERTa classifier differs by {err:e}");
}

#[test]
fn bad_data_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let p = write(
        "bad.jsonl",
        "{\"query\": \"a\", \"response\": \"b\"}\n{\"query\": \"x\"\n",
    );
    let e = read_nlg_jsonl(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl:2") && e.contains("malformed JSON"),
        "{e}"
    );
    // invalid UTF-8 on line 2 is reported as line 2 (1-based, like every data error)
    let p = dir.path().join("latin1.jsonl");
    std::fs::write(
        &p,
        b"{\"query\": \"a\", \"response\": \"b\"}\n{\"query\": \"caf\xe9\", \"response\": \"b\"}\n",
    )
    .unwrap();
    let e = read_nlg_jsonl(&p).unwrap_err().to_string();
    assert!(e.contains("latin1.jsonl:2") && e.contains("UTF-8"), "{e}");
    let p = write("missing.jsonl", "{\"query\": \"a\"}\n");
    let e = read_nlg_jsonl(&p).unwrap_err().to_string();
    assert!(
        e.contains("missing.jsonl:1") && e.contains("response"),
        "{e}"
    );
    let p = write("empty.jsonl", "\n\n");
    assert!(
        read_nlg_jsonl(&p)
            .unwrap_err()
            .to_string()
            .contains("no usable example")
    );
    let p = write("nolabel.tsv", "sentence\tfoo\nhello\t1\n");
    assert!(read_nlu(&p).unwrap_err().to_string().contains("label"));
    let alpaca = write(
        "alpaca.jsonl",
        "{\"instruction\": \"Add\", \"input\": \"1 2\", \"output\": \"3\"}\n",
    );
    let r = read_nlg_jsonl(&alpaca).unwrap();
    assert_eq!(r[0].prompt, "Add\n\n1 2");
    let csv = write(
        "pairs.csv",
        "sentence1,sentence2,label\n\"a, b\",c,pos\nd,e,neg\n",
    );
    let r = read_nlu(&csv).unwrap();
    assert_eq!((r[0].text.as_str(), r[0].label.as_str()), ("a, b", "pos"));
    // a held-out label the training set never had: named with its file, line and the class set
    let train_set = write(
        "train.jsonl",
        "{\"text\": \"good\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": \"neg\"}\n",
    );
    let eval_set = write(
        "eval.jsonl",
        "{\"text\": \"fine\", \"label\": \"pos\"}\n\n{\"text\": \"meh\", \"label\": \"neutral\"}\n",
    );
    let labels = LabelSet::from_records(&read_nlu(&train_set).unwrap());
    let tokenizer = balora_io::load_tokenizer(&asset("models/all-MiniLM-L6-v2")).unwrap();
    let records = read_nlu(&eval_set).unwrap();
    let e = tokenize_nlu(&records, &tokenizer, &labels, 32, &eval_set)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("eval.jsonl:3") && e.contains("\"neutral\"") && e.contains("[\"neg\", \"pos\"]"),
        "{e}"
    );
}

/// SFT tokenisation equals Python's (`scripts/model_fixtures.py --only sft`): chat rows
/// through the chat template with only assistant turns in the loss, multi-turn included, and
/// Alpaca rows as the PiSSA / BA-LoRA reference tokenises them.
#[test]
fn sft_tokenisation_matches_transformers_on_smollm2() {
    let dir = asset("models/SmolLM2-135M-Instruct");
    let tokenizer = balora_io::load_tokenizer(&dir).unwrap();
    let template = balora_io::ChatTemplate::load(&dir).unwrap().unwrap();
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("models/smollm2/sft.json")).unwrap())
            .unwrap();
    let eos = fixture["eos_token_id"].as_u64().unwrap() as u32;
    let tmp = tempfile::tempdir().unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("row{i}.jsonl"));
        std::fs::write(&path, format!("{}\n", case["row"])).unwrap();
        let records = read_nlg_jsonl(&path).unwrap();
        let format = match case["format"].as_str().unwrap() {
            "chat" => PromptFormat::Chat(template.clone()),
            _ => PromptFormat::Alpaca,
        };
        let (examples, truncated) = tokenize_nlg(&records, &tokenizer, &format, 4096, eos).unwrap();
        assert_eq!(truncated, 0);
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let labels: Vec<i64> = serde_json::from_value(case["labels"].clone()).unwrap();
        assert_eq!(examples[0].ids, ids, "case {i} ({}): ids", case["format"]);
        assert_eq!(
            examples[0].labels, labels,
            "case {i} ({}): labels",
            case["format"]
        );
        // generation starts from the same prompt tokens training saw before the response
        let prompt = format.prompt_ids(&tokenizer, &records[0]).unwrap();
        // (the last response is the final run of labelled tokens)
        let start = labels.iter().rposition(|&l| l == -100).unwrap() + 1;
        assert_eq!(prompt, ids[..start], "case {i}: prompt ids");
    }
}
