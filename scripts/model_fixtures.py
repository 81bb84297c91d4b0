#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers for balora's model tests.

    scripts/model_fixtures.py [OUT]        (default OUT = tests/fixtures/models)

Writes, each as small safetensors files:
  * tiny random checkpoints saved by transformers (tiny-llama, tiny-llama3-rope, tiny-qwen2,
    tiny-mistral, tiny-gemma, tiny-gpt2, tiny-bert-cls, tiny-roberta-cls, tiny-deberta-v3-cls,
    tiny-deberta-v2-cls) with
    `reference.safetensors`: `input_ids`/`attention_mask` [2, 7] (row 1 right-padded by 3) and
    the model's `logits`; tiny-gemma also greedy ids (`gen_prompt`, `gen_output`: 8 new tokens,
    no stop token);
  * smollm2/: reference logits (top-50 per position, full last row of prompt 0) of the real
    SmolLM2-135M-Instruct for three prompts and a right-padded batch of two, plus greedy
    generations of three chat prompts (`gen_prompt.i`, `gen_output.i`), and prompts.json;
  * minilm/: all-MiniLM-L6-v2 [CLS], mean-pooled and pooler outputs of four sentences;
  * smollm2/sft.json: SFT tokenisation of SmolLM2-135M-Instruct — single-turn and multi-turn
    chat rows rendered with transformers' `apply_chat_template` and tokenised at once (labels
    on the assistant turns only: tokens whose offset starts inside an assistant turn's text),
    and Alpaca rows as the PiSSA/BA-LoRA reference tokenises them (`prompt + response` with
    special tokens, EOS appended, the first `len(tokenize(prompt))` labels masked).

    scripts/model_fixtures.py [OUT] [--only tiny|minilm|smollm2|sft]    (one part only)

The real checkpoints come from scripts/fetch-assets ($BALORA_ASSETS, default .cache/assets).
Pinned: torch==2.15.0 transformers==5.23.0 safetensors==0.8.0 (CPU):
    python3 -m venv .venv && .venv/bin/pip install torch==2.15.0 transformers==5.23.0 safetensors==0.8.0
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (AutoModel, AutoModelForCausalLM, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, DebertaV2Config,
                          DebertaV2ForSequenceClassification, GemmaConfig, GemmaForCausalLM,
                          GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, RobertaConfig,
                          RobertaForSequenceClassification)

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.environ.get("BALORA_ASSETS", os.path.join(HERE, "..", ".cache", "assets"))
torch.set_num_threads(2)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            vocab_size=128, max_position_embeddings=64, initializer_range=0.2)


def tiny_batch(pad_id, avoid=()):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (2, 7), generator=g)
    for a in avoid:
        ids[ids == a] = a + 2
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    ids[1, 4:] = pad_id
    return ids, mask


def save_tiny(out, name, model, pad_id=0, avoid=(), extra=None):
    d = os.path.join(out, name)
    model.eval()
    model.save_pretrained(d, safe_serialization=True)
    gen = os.path.join(d, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    ids, mask = tiny_batch(pad_id, avoid)
    tensors = {"input_ids": ids, "attention_mask": mask}
    kwargs = {}
    if extra == "types":
        types = torch.zeros_like(ids)
        types[0, 4:] = 1
        tensors["token_type_ids"] = types
        kwargs["token_type_ids"] = types
    with torch.no_grad():
        tensors["logits"] = model(input_ids=ids, attention_mask=mask, **kwargs).logits.float()
        if extra == "generate":
            prompt = torch.tensor([[3, 100, 7, 64, 12]])
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                 min_new_tokens=8, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
            tensors["gen_prompt"] = prompt[0]
            tensors["gen_output"] = out[0, prompt.shape[1]:]
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "reference.safetensors"))
    print(f"{name}: logits {tuple(tensors['logits'].shape)}")


def tiny_models(out):
    torch.manual_seed(0)
    save_tiny(out, "tiny-llama", LlamaForCausalLM(LlamaConfig(
        **TINY, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, attn_implementation="eager")))
    torch.manual_seed(0)
    save_tiny(out, "tiny-llama3-rope", LlamaForCausalLM(LlamaConfig(
        **TINY, num_key_value_heads=4, head_dim=8, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        attn_implementation="eager")))
    torch.manual_seed(0)
    save_tiny(out, "tiny-qwen2", Qwen2ForCausalLM(Qwen2Config(
        **TINY, num_key_value_heads=2, tie_word_embeddings=True, attn_implementation="eager")))
    torch.manual_seed(0)
    # transformers' eager Mistral applies the sliding window through its mask: key j is
    # visible from query i when i - window < j <= i.
    save_tiny(out, "tiny-mistral", MistralForCausalLM(MistralConfig(
        **TINY, num_key_value_heads=2, sliding_window=4, attn_implementation="eager")))
    torch.manual_seed(0)
    # Gemma: multi-query attention, head_dim 16 ≠ 32 / 4, the GELU-tanh MLP, a tied head; the
    # norms' weights (zeros at init: a scale of 1 + 0) are drawn, so `1 + w` is tested
    gemma = GemmaForCausalLM(GemmaConfig(
        **TINY, num_key_value_heads=1, head_dim=16, hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, attn_implementation="eager"))
    with torch.no_grad():
        for name, p in gemma.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    save_tiny(out, "tiny-gemma", gemma, extra="generate")
    torch.manual_seed(0)
    save_tiny(out, "tiny-gpt2", GPT2LMHeadModel(GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=128,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, initializer_range=0.2,
        attn_implementation="eager")))
    torch.manual_seed(0)
    save_tiny(out, "tiny-bert-cls", BertForSequenceClassification(BertConfig(
        **TINY, num_labels=3, hidden_act="gelu", type_vocab_size=2, pad_token_id=0,
        attn_implementation="eager")), extra="types")
    torch.manual_seed(0)
    save_tiny(out, "tiny-roberta-cls", RobertaForSequenceClassification(RobertaConfig(
        **{**TINY, "max_position_embeddings": 72}, num_labels=2, pad_token_id=1,
        type_vocab_size=1, attn_implementation="eager")), pad_id=1, avoid=(1,))
    # DeBERTa-v3: shared position projections after the relative embeddings' LayerNorm, no
    # absolute positions or token types; 4 buckets (exact distances up to 2, log-bucketed
    # beyond) so the 7-token batch reaches the log buckets
    torch.manual_seed(0)
    save_tiny(out, "tiny-deberta-v3-cls", deberta(DebertaV2Config(
        **TINY, num_labels=3, relative_attention=True, position_buckets=4,
        max_relative_positions=-1, pos_att_type="p2c|c2p", share_att_key=True,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0,
        pad_token_id=0)))
    # DeBERTa-v2: separate pos_key_proj / pos_query_proj, distances clamped at 4 without
    # buckets, absolute positions and token types
    torch.manual_seed(0)
    save_tiny(out, "tiny-deberta-v2-cls", deberta(DebertaV2Config(
        **TINY, num_labels=2, relative_attention=True, max_relative_positions=4,
        pos_att_type=["c2p", "p2c"], share_att_key=False, position_biased_input=True,
        type_vocab_size=2, pad_token_id=0)), extra="types")


def deberta(config):
    """A DeBERTa classifier whose LayerNorms are drawn (ones at init), so their weights count."""
    model = DebertaV2ForSequenceClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def topk(logits, k=50):
    v, i = torch.topk(logits, k, dim=-1)
    return v.float().contiguous(), i.contiguous()


def smollm2(out):
    d = os.path.join(ASSETS, "models", "SmolLM2-135M-Instruct")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    texts = [
        "The quick brown fox",
        "Gradient descent updates every parameter a little at a time, in the direction that lowers the loss.",
        "Low-rank adaptation freezes the pretrained weights of a language model and trains two small "
        "matrices per layer whose product is added to each frozen weight. Because only the small "
        "matrices are trained, the optimizer state and the saved checkpoints stay tiny, and many "
        "adapters can share one base model in memory.",
    ]
    tensors = {}
    ids = []
    with torch.no_grad():
        for i, t in enumerate(texts):
            x = tok(t, add_special_tokens=False, return_tensors="pt").input_ids
            ids.append(x[0])
            logits = model(input_ids=x).logits[0]
            tensors[f"ids.{i}"] = x[0].contiguous()
            tensors[f"top50_values.{i}"], tensors[f"top50_indices.{i}"] = topk(logits)
            if i == 0:
                tensors["last_logits.0"] = logits[-1].float().contiguous()
        t = max(len(ids[0]), len(ids[1]))
        batch = torch.full((2, t), 2, dtype=torch.long)
        mask = torch.zeros((2, t), dtype=torch.long)
        for r in range(2):
            batch[r, :len(ids[r])] = ids[r]
            mask[r, :len(ids[r])] = 1
        logits = model(input_ids=batch, attention_mask=mask).logits
        tensors["batch_input_ids"], tensors["batch_attention_mask"] = batch, mask
        tensors["batch_top50_values"], tensors["batch_top50_indices"] = topk(logits)
        chats = [[{"role": "user", "content": q}] for q in
                 ["What is the capital of France?", "Name three primary colors.", "What is 12 plus 30?"]]
        rendered = []
        for i, messages in enumerate(chats):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            rendered.append(text)
            x = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=24, eos_token_id=2, pad_token_id=2)
            tensors[f"gen_prompt.{i}"] = x[0].contiguous()
            tensors[f"gen_output.{i}"] = y[0, x.shape[1]:].contiguous()
            print(f"chat {i}: {tok.decode(y[0, x.shape[1]:])!r}")
    os.makedirs(os.path.join(out, "smollm2"), exist_ok=True)
    save_file(tensors, os.path.join(out, "smollm2", "reference.safetensors"))
    with open(os.path.join(out, "smollm2", "prompts.json"), "w") as f:
        json.dump({"texts": texts, "chats": chats, "rendered": rendered,
                   "notes": "ids without special tokens; batch right-padded with id 2"}, f, indent=2)


def minilm(out):
    d = os.path.join(ASSETS, "models", "all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d, attn_implementation="eager").eval()
    sentences = ["A man is playing a guitar.", "Someone is strumming a guitar.",
                 "The stock market fell sharply today.",
                 "Parameter-efficient fine-tuning adapts a large pretrained model by training "
                 "only a small number of extra weights."]
    # the shipped tokenizer.json pads to 128; pad dynamically instead
    enc = tok(sentences, padding="longest", return_tensors="pt")
    with torch.no_grad():
        o = model(**enc)
    h = o.last_hidden_state
    m = enc.attention_mask.unsqueeze(-1).float()
    mean = (h * m).sum(1) / m.sum(1)
    cos = torch.nn.functional.cosine_similarity
    print(f"minilm cos(0,1) = {cos(mean[0], mean[1], dim=0):.3f}, cos(0,2) = {cos(mean[0], mean[2], dim=0):.3f}")
    os.makedirs(os.path.join(out, "minilm"), exist_ok=True)
    save_file({"input_ids": enc.input_ids.contiguous(), "attention_mask": enc.attention_mask.contiguous(),
               "token_type_ids": enc.token_type_ids.contiguous(), "cls": h[:, 0].contiguous(),
               "mean_pooled": mean.contiguous(), "pooler_output": o.pooler_output.contiguous()},
              os.path.join(out, "minilm", "reference.safetensors"))
    with open(os.path.join(out, "minilm", "sentences.json"), "w") as f:
        json.dump({"sentences": sentences}, f, indent=2)


ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{}\n\n### Response:")
SFT_ROWS = [
    {"query": "What is 3 + 4?", "response": "3 + 4 = 7. The answer is 7."},
    {"query": "A box holds 12 eggs. How many eggs are in 3 boxes?",
     "response": "3 boxes hold 3 * 12 = 36 eggs.\nThe answer is 36."},
    {"messages": [{"role": "system", "content": "You answer in one sentence."},
                  {"role": "user", "content": "Name a prime number."},
                  {"role": "assistant", "content": "Seven is prime."},
                  {"role": "user", "content": "And an even one?"},
                  {"role": "assistant", "content": "Two is the only even prime."}]},
]


def sft(out):
    d = os.path.join(ASSETS, "models", "SmolLM2-135M-Instruct")
    tok = AutoTokenizer.from_pretrained(d)
    cases = []
    for row in SFT_ROWS:
        messages = row.get("messages") or [{"role": "user", "content": row["query"]},
                                           {"role": "assistant", "content": row["response"]}]
        full = tok.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                start = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                end = tok.apply_chat_template(messages[:i + 1], tokenize=False)
                assert full.startswith(start) and full.startswith(end)
                spans.append((len(start.encode()), len(end.encode())))
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        # offsets are character offsets into `full`; compare in bytes as the Rust side does
        starts = [len(full[:a].encode()) for a, _ in enc.offset_mapping]
        labels = [t if any(a <= s < b for a, b in spans) else -100
                  for t, s in zip(enc.input_ids, starts)]
        case = {"row": row, "format": "chat", "ids": enc.input_ids, "labels": labels}
        cases.append(case)
        if "query" in row:
            prompt = ALPACA.format(row["query"])
            source = len(tok(prompt).input_ids)
            ids = tok(prompt + row["response"]).input_ids + [tok.eos_token_id]
            cases.append({"row": row, "format": "alpaca", "ids": ids,
                          "labels": [-100 if i < source else t for i, t in enumerate(ids)]})
    with open(os.path.join(out, "smollm2", "sft.json"), "w") as f:
        json.dump({"eos_token_id": tok.eos_token_id, "cases": cases}, f, indent=1)
    print(f"sft: {len(cases)} cases")


if __name__ == "__main__":
    argv = sys.argv[1:]
    only = None
    if "--only" in argv:
        i = argv.index("--only")
        only = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    out = argv[0] if argv else os.path.join(HERE, "..", "tests", "fixtures", "models")
    os.makedirs(out, exist_ok=True)
    parts = {"tiny": tiny_models, "minilm": minilm, "smollm2": smollm2, "sft": sft}
    for name, make in parts.items():
        if only in (None, name):
            make(out)
