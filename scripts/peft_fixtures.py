#!/usr/bin/env python3
"""PEFT interop fixtures for balora's adapter files, both directions.

    make  [OUT]   build a tiny random MLP, adapt it with peft (LoRA; rsLoRA with rank/alpha
                  patterns; PiSSA saved converted to LoRA and unconverted), and write the base
                  weights, inputs, peft's outputs and peft's adapter directories to OUT
                  (default tests/fixtures/peft). Also SEQ_CLS adapters of the tiny BERT and
                  RoBERTa classifiers of tests/fixtures/models, of a bare (unprefixed) BERT
                  encoder and of the tiny DeBERTa-v3 / v2 classifiers (pooler and classifier in
                  `modules_to_save`), each with a perturbed head in `modules_to_save`, and peft's logits
                  (`seqcls_*`, `seqcls_outputs.safetensors`), and CAUSAL_LM adapters of the tiny
                  Gemma on every projection (`causal_gemma`, `causal_outputs.safetensors`). The
                  Rust tests `tests/peft_interop.rs` and `models/llama/tests/reference.rs` load
                  them.
    check DIR     load adapters that balora saved (DIR/<name>/ + DIR/expected.safetensors, written by
                  `cargo test --test peft_interop -- --ignored write_adapters_for_peft`) with peft
                  onto the same base model and compare peft's outputs with balora's, and the
                  tensors peft loaded (MonteCLoRA's sampler parameters included) with the file's.
                  SEQ_CLS adapters load onto `AutoModelForSequenceClassification` of their
                  `base_model_name_or_path`; their logits are compared. `merged_*` are full
                  checkpoints written by `save_merged`: transformers loads them as their task
                  class and must give balora's adapted logits.

Pinned: torch==2.15.0 transformers==5.23.0 peft==0.21.2 safetensors==0.8.0 (CPU).
    python3 -m venv .venv && .venv/bin/pip install torch==2.15.0 transformers==5.23.0 \
        peft==0.21.2 safetensors==0.8.0 numpy
"""
import copy
import os
import shutil
import sys

import json

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          BertForSequenceClassification)

torch.set_num_threads(2)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "fixtures", "peft")
TARGETS = ["q_proj", "v_proj"]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 12)
        self.v_proj = nn.Linear(12, 8)

    def forward(self, x):
        return self.v_proj(torch.tanh(self.q_proj(x)))


class Tiny(nn.Module):
    """Two blocks; the Rust twin is `TinyMlp` in tests/peft_interop.rs."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


def base_model(out_dir):
    model = Tiny()
    model.load_state_dict(load_file(os.path.join(out_dir, "base.safetensors")))
    return model.eval()


def perturb_adapters(model, scale=0.05):
    """Stand in for training: move every LoRA factor away from its initial value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(scale * torch.randn_like(p))


def make(out_dir):
    torch.manual_seed(0)
    os.makedirs(out_dir, exist_ok=True)
    base = Tiny().eval()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()},
              os.path.join(out_dir, "base.safetensors"))
    x = torch.randn(3, 8)
    outputs = {"x": x, "y_base": base(x).detach()}

    def adapt(name, config, pissa_init_dir=None):
        model = get_peft_model(copy.deepcopy(base), config)
        if pissa_init_dir is not None:
            # Official PiSSA workflow: keep (A0, B0) with init=True for the conversion.
            # (`config` is the very object peft stores, so remember the mode first.)
            mode = model.peft_config["default"].init_lora_weights
            model.peft_config["default"].init_lora_weights = True
            model.save_pretrained(pissa_init_dir)
            model.peft_config["default"].init_lora_weights = mode
        perturb_adapters(model)
        outputs[f"y_{name}"] = model(x).detach()
        return model

    lora = adapt("lora", LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                    init_lora_weights=False))
    lora.save_pretrained(os.path.join(out_dir, "lora"))

    patterned = adapt("rslora_patterns", LoraConfig(
        r=4, lora_alpha=8, use_rslora=True, target_modules=TARGETS,
        rank_pattern={"layers.1.q_proj": 2}, alpha_pattern={"v_proj": 3},
        init_lora_weights=False))
    patterned.save_pretrained(os.path.join(out_dir, "rslora_patterns"))

    init_dir = os.path.join(out_dir, "_pissa_init")
    pissa = adapt("pissa", LoraConfig(r=3, lora_alpha=6, target_modules=TARGETS,
                                      init_lora_weights="pissa"), pissa_init_dir=init_dir)
    pissa.save_pretrained(os.path.join(out_dir, "pissa_raw"))
    pissa.save_pretrained(os.path.join(out_dir, "pissa_converted"),
                          path_initial_model_for_weight_conversion=init_dir)
    shutil.rmtree(init_dir)

    save_file({k: v.contiguous() for k, v in outputs.items()},
              os.path.join(out_dir, "outputs.safetensors"))
    for name in ["lora", "rslora_patterns", "pissa_raw", "pissa_converted"]:
        os.remove(os.path.join(out_dir, name, "README.md"))  # peft's model-card boilerplate
    # Cross-check: each saved adapter, reloaded by peft on the original base, reproduces the
    # outputs above (pissa_raw re-runs the SVD on load).
    for name in ["lora", "rslora_patterns", "pissa_raw", "pissa_converted"]:
        model = PeftModel.from_pretrained(base_model(out_dir), os.path.join(out_dir, name))
        want = outputs["y_" + name.replace("_raw", "").replace("_converted", "")]
        err = (model(x) - want).abs().max().item()
        print(f"{name}: peft reload max |Δ| = {err:.2e}")
        assert err < 1e-5, name


MODELS = os.path.join(HERE, "..", "tests", "fixtures", "models")
BERT_TARGETS = dict(target_modules=["query", "value"])
# DeBERTa: every projection but the pooler's (`pooler.dense` ends in `dense`, so the suffixes are
# spelled out), and the pooler trained in full beside the classifier peft adds itself
DEBERTA_TARGETS = dict(target_modules=["query_proj", "key_proj", "value_proj",
                                       "intermediate.dense", "output.dense"],
                       modules_to_save=["pooler"])
# (adapter name, base checkpoint: a model fixture or, None, the bare encoder in OUT, labels,
# LoraConfig targets)
SEQCLS = [("seqcls_bert", "tiny-bert-cls", 3, BERT_TARGETS),
          ("seqcls_roberta", "tiny-roberta-cls", 2, BERT_TARGETS),
          ("seqcls_bare", None, 2, BERT_TARGETS),
          ("seqcls_deberta", "tiny-deberta-v3-cls", 3, DEBERTA_TARGETS),
          ("seqcls_deberta_v2", "tiny-deberta-v2-cls", 2,
           dict(DEBERTA_TARGETS, target_modules=DEBERTA_TARGETS["target_modules"]
                + ["pos_key_proj", "pos_query_proj"]))]


def classifier(base_dir, num_labels):
    return AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=num_labels, attn_implementation="eager").eval()


def seqcls_logits(model, batch):
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        return model(**kwargs).logits.float()


def make_seqcls(out_dir):
    """peft SEQ_CLS adapters on the tiny classifiers, with a perturbed head."""
    torch.manual_seed(0)
    # an encoder saved bare (keys `embeddings.*`, no `bert.` prefix), like all-MiniLM-L6-v2
    bare = BertForSequenceClassification.from_pretrained(os.path.join(MODELS, "tiny-bert-cls"))
    bare.bert.save_pretrained(os.path.join(out_dir, "seqcls_bare_base"), safe_serialization=True)
    outputs = {}
    for name, base, labels, targets in SEQCLS:
        base_dir = os.path.join(MODELS, base) if base else os.path.join(out_dir, "seqcls_bare_base")
        batch = load_file(os.path.join(MODELS, base or "tiny-bert-cls", "reference.safetensors"))
        model = get_peft_model(classifier(base_dir, labels), LoraConfig(
            task_type="SEQ_CLS", r=4, lora_alpha=8, init_lora_weights=False, **targets))
        with torch.no_grad():
            for p_name, p in model.named_parameters():
                if "modules_to_save" in p_name:
                    p.add_(0.3 * torch.randn_like(p))  # a trained head, not the checkpoint's
        perturb_adapters(model)
        model.eval()
        for k, v in batch.items():
            if k != "logits":
                outputs[f"{name}.{k}"] = v
        outputs[f"{name}.logits"] = seqcls_logits(model, batch)
        model.save_pretrained(os.path.join(out_dir, name))
        os.remove(os.path.join(out_dir, name, "README.md"))
        # record the base relative to the repository, not this machine's path
        config_path = os.path.join(out_dir, name, "adapter_config.json")
        config = json.load(open(config_path))
        config["base_model_name_or_path"] = (f"tests/fixtures/models/{base}" if base
                                             else "tests/fixtures/peft/seqcls_bare_base")
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        reloaded = PeftModel.from_pretrained(classifier(base_dir, labels), os.path.join(out_dir, name))
        err = (seqcls_logits(reloaded, batch) - outputs[f"{name}.logits"]).abs().max().item()
        print(f"{name}: peft reload max |Δ logits| = {err:.2e}")
        assert err < 1e-5, name
    save_file({k: v.contiguous() for k, v in outputs.items()},
              os.path.join(out_dir, "seqcls_outputs.safetensors"))


CAUSAL = [("causal_gemma", "tiny-gemma")]


def make_causal(out_dir):
    """peft CAUSAL_LM adapters on the tiny decoders (every projection adapted)."""
    torch.manual_seed(0)
    outputs = {}
    for name, base in CAUSAL:
        base_dir = os.path.join(MODELS, base)
        batch = load_file(os.path.join(base_dir, "reference.safetensors"))
        load = lambda: AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").eval()
        model = get_peft_model(load(), LoraConfig(
            task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"]))
        perturb_adapters(model)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        outputs[f"{name}.input_ids"] = batch["input_ids"]
        outputs[f"{name}.attention_mask"] = batch["attention_mask"]
        outputs[f"{name}.logits"] = logits.float()
        model.save_pretrained(os.path.join(out_dir, name))
        os.remove(os.path.join(out_dir, name, "README.md"))
        config_path = os.path.join(out_dir, name, "adapter_config.json")
        config = json.load(open(config_path))
        config["base_model_name_or_path"] = f"tests/fixtures/models/{base}"
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    save_file({k: v.contiguous() for k, v in outputs.items()},
              os.path.join(out_dir, "causal_outputs.safetensors"))


def check_seqcls(path, name, expected):
    config = json.load(open(os.path.join(path, "adapter_config.json")))
    saved = load_file(os.path.join(path, "adapter_model.safetensors"))
    head = [v for k, v in saved.items() if k.endswith("classifier.weight")
            or k.endswith("classifier.out_proj.weight")]
    base = classifier(config["base_model_name_or_path"], head[0].shape[0])
    model = PeftModel.from_pretrained(base, path).eval()
    batch = {k.split(".", 1)[1]: v for k, v in expected.items() if k.startswith(f"{name}.")}
    err = (seqcls_logits(model, batch) - batch["logits"]).abs().max().item()
    loaded = get_peft_model_state_dict(model)
    if set(saved) != set(loaded):
        sys.exit(f"FAILED: {name}: keys only in balora's file {sorted(set(saved) - set(loaded))}, "
                 f"only in peft's model {sorted(set(loaded) - set(saved))}")
    err = max([err] + [(saved[k] - loaded[k]).abs().max().item() for k in saved])
    print(f"{name}: peft logits and tensors vs balora max |Δ| = {err:.2e} ({len(saved)} tensors)")
    return err


def check_merged(path, name, expected):
    """A merged checkpoint balora wrote, loaded by transformers as its task class."""
    config = json.load(open(os.path.join(path, "config.json")))
    batch = {k.split(".", 1)[1]: v for k, v in expected.items() if k.startswith(f"{name}.")}
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    if config["model_type"] in ("bert", "roberta", "deberta-v2"):
        model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager")
    else:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    with torch.no_grad():
        logits = model.eval()(**kwargs).logits.float()
    mask = batch["attention_mask"].bool()
    if logits.dim() == 3:  # padded positions carry no meaning
        logits, want = logits[mask], batch["logits"][mask]
    else:
        want = batch["logits"]
    err = (logits - want).abs().max().item()
    print(f"{name}: transformers' logits on balora's merged checkpoint vs balora max |Δ| = {err:.2e}")
    return err


def check(adapter_root):
    expected = load_file(os.path.join(adapter_root, "expected.safetensors"))
    base_dir = os.path.join(adapter_root, "base")
    worst = 0.0
    for name in sorted(os.listdir(adapter_root)):
        path = os.path.join(adapter_root, name)
        if name.startswith("merged_"):
            worst = max(worst, check_merged(path, name, expected))
            continue
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            continue
        if name.startswith("seqcls_"):
            worst = max(worst, check_seqcls(path, name, expected))
            continue
        model = PeftModel.from_pretrained(base_model(base_dir), path)
        got = model(expected["x"]).detach()
        err = (got - expected["y_" + name]).abs().max().item()
        # every tensor of balora's file is a parameter of peft's model, with the same value
        saved = load_file(os.path.join(path, "adapter_model.safetensors"))
        loaded = get_peft_model_state_dict(model)
        if set(saved) != set(loaded):
            sys.exit(f"FAILED: {name}: keys only in balora's file {sorted(set(saved) - set(loaded))}, "
                     f"only in peft's model {sorted(set(loaded) - set(saved))}")
        err = max([err] + [(saved[k] - loaded[k]).abs().max().item() for k in saved])
        worst = max(worst, err)
        print(f"{name}: peft output and tensors vs balora max |Δ| = {err:.2e} ({len(saved)} tensors)")
    if worst > 1e-5:
        sys.exit(f"FAILED: max |Δ| = {worst:.2e}")
    print("peft reproduces balora's adapted outputs")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "make":
        make(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUT)
        make_seqcls(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUT)
        make_causal(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUT)
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
