//! The seed corpora (`fuzz/seeds/<target>/`), written from the repository's fixtures, the
//! project's real assets where they are present, and inputs made here (a trained adapter and
//! checkpoint of the harnesses' own tiny model), so the fuzzers start from files that pass
//! the parsers and reach the code behind them. Regenerate with
//! `cargo test -p balora-fuzz --test replay -- --ignored write_seeds`.

use std::collections::BTreeMap;
use std::path::Path;

use balora::finetune::FinetuneConfig;
use balora_adapters::{LoraConfig, TargetModules};
use balora_io::tensors::write_safetensors;
use balora_io::{SaveOptions, save_adapter};
use burn::tensor::TensorData;

use crate::{checkpoint_trainer, fixture, join_files, model_fixture, trainee};

/// Every seed by target: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_string(), bytes));
    };
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let models = model_fixture("");
    for (target, names) in [
        (
            "config_llama",
            &[
                "tiny-llama",
                "tiny-llama3-rope",
                "tiny-mistral",
                "tiny-qwen2",
                "tiny-gemma",
            ][..],
        ),
        ("config_bert", &["tiny-bert-cls", "tiny-roberta-cls"]),
        ("config_gpt2", &["tiny-gpt2"]),
    ] {
        for name in names {
            add(target, name, read(&models.join(name).join("config.json")));
        }
    }
    // safetensors: a model's weights, an adapter's, and a minimal file of two dtypes
    add(
        "safetensors",
        "tiny-llama",
        read(&models.join("tiny-llama/model.safetensors")),
    );
    let peft = models.join("../peft");
    add(
        "safetensors",
        "peft-lora",
        read(&peft.join("lora/adapter_model.safetensors")),
    );
    let scratch = tempfile::tempdir().expect("scratch");
    let small = scratch.path().join("small.safetensors");
    let tensors = BTreeMap::from([
        ("a".to_string(), TensorData::new(vec![0.5f32; 6], [2, 3])),
        ("b".to_string(), TensorData::new(vec![7i64; 2], [2])),
    ]);
    write_safetensors(&small, &tensors).expect("small safetensors");
    add("safetensors", "small", read(&small));
    // adapters: peft's own fixtures, and one saved from the harness's model
    for dir in [
        "lora",
        "pissa_raw",
        "pissa_converted",
        "rslora_patterns",
        "seqcls_bare",
    ] {
        let d = peft.join(dir);
        add(
            "peft_adapter",
            dir,
            join_files(
                &read(&d.join("adapter_config.json")),
                &read(&d.join("adapter_model.safetensors")),
            ),
        );
    }
    let adapter = scratch.path().join("adapter");
    let cfg = LoraConfig::new(2, TargetModules::names(["q_proj", "v_proj"]));
    save_adapter(&trainee(), &cfg, &adapter, &SaveOptions::default()).expect("adapter");
    add(
        "peft_adapter",
        "tiny-llama",
        join_files(
            &read(&adapter.join("adapter_config.json")),
            &read(&adapter.join("adapter_model.safetensors")),
        ),
    );
    // a checkpoint after one step of the harness's own run
    let run = scratch.path().join("run");
    let mut trainer = checkpoint_trainer(&run).expect("trainer");
    trainer.step().expect("one step");
    trainer.save_checkpoint().expect("checkpoint");
    drop(trainer);
    let ckpt = run.join("checkpoint-1");
    add(
        "checkpoint",
        "step-1",
        join_files(
            &read(&ckpt.join("trainer_state.json")),
            &read(&ckpt.join("trainer_state.safetensors")),
        ),
    );
    // tokenizers and templates
    let tok = fixture("data-tokenizer");
    add("tokenizer", "wordlevel", read(&tok.join("tokenizer.json")));
    add("tokenizer", "bpe", BPE.as_bytes().to_vec());
    let chatml: serde_json::Value =
        serde_json::from_slice(&read(&tok.join("tokenizer_config.json"))).expect("json");
    let chatml = chatml["chat_template"].as_str().unwrap_or_default();
    add("chat_template", "chatml", chatml.as_bytes().to_vec());
    add(
        "chat_template",
        "llama2",
        LLAMA2_TEMPLATE.as_bytes().to_vec(),
    );
    // data
    add("nlg_jsonl", "formats", NLG.as_bytes().to_vec());
    add("nlu_jsonl", "pairs", NLU_JSONL.as_bytes().to_vec());
    add(
        "nlu_tsv",
        "pairs",
        NLU_JSONL_AS_TABLE.replace(',', "\t").into_bytes(),
    );
    add("nlu_csv", "quoted", NLU_CSV.as_bytes().to_vec());
    // run files: every key at its default, and the project's experiment suites
    let defaults = toml::to_string(&FinetuneConfig::default()).expect("toml");
    add("run_config", "defaults", defaults.into_bytes());
    add("run_config", "balora", RUN.as_bytes().to_vec());
    let suites = models.join("../../../bench/suites");
    for name in ["nlu-sentiment", "nlu-sentiment-quick"] {
        let text = read(&suites.join(format!("{name}.toml")));
        add("experiment_config", name, text);
    }
    out
}

/// Write every seed under `fuzz/seeds/`, replacing what is there.
pub fn write_all(root: &Path) {
    let seeds = root.join("seeds");
    let _ = std::fs::remove_dir_all(&seeds);
    for (target, name, bytes) in all() {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir).expect("seed folder");
        std::fs::write(dir.join(name), bytes).expect("seed");
    }
}

const BPE: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":{"type":"NFC"},"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
"post_processor":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},
"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
"vocab":{"<s>":0,"H":1,"e":2,"l":3,"o":4,"Ġ":5,"w":6,"r":7,"d":8,"He":9,"ll":10,"Hell":11,"Hello":12},
"merges":[["H","e"],["l","l"],["He","ll"],["Hell","o"]]}}"#;

const LLAMA2_TEMPLATE: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const NLG: &str = r#"{"query": "What is 2 + 2?", "response": "2 + 2 = 4. The answer is: 4", "answer": "4"}
{"instruction": "Write the answer.", "input": "2 + 2", "output": "4"}
{"instruction": "Be brief.", "output": "ok", "answer": 4}
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}
"#;

const NLU_JSONL: &str = r#"{"text": "the film is a delight", "label": 1}
{"sentence": "what a waste of time", "label": "0"}
{"text": "is it good?", "text_pair": "it is.", "label": true}
"#;

const NLU_JSONL_AS_TABLE: &str = "sentence1,sentence2,label
the film is a delight,it is,1
what a waste of time,it is not,0
";

const NLU_CSV: &str = "text,label
\"a delight, truly\",positive
\"he said \"\"no\"\"\",negative
plain text,positive
";

const RUN: &str = r#"task = "nlg"
method = "balora"
preset = "iclr2026"
rank = 4
alpha = 8.0
target_modules = "q_proj,v_proj"
lr = 1e-3
max_steps = 10
batch_size = 2
grad_accum = 2
lambda_svd = 0.05
"#;
