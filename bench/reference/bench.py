#!/usr/bin/env python3
"""The PyTorch + PEFT side of balora's benchmark (`examples/bench`).

    python bench/reference/bench.py '<job json>' [--threads N] [--device cpu|cuda]

runs one job and prints one JSON line: {"seconds": [...], "loss": [...], "peak_rss_mb": ...,
"trainable": ..., "versions": "...", "tokens": [...]}. The job is the JSON the Rust orchestrator
writes (`examples/bench/job.rs`): "train" (warm-up + measured optimizer steps of a method on a
fixed batch), "gemm" (x·W forward + both gradients), "pissa_init" (peft's PiSSA on every
linear) or "decode" (transformers' greedy `generate` with its KV cache).

BA-LoRA here is what its official code does on top of PEFT: a second copy of the pretrained
model, loaded with from_pretrained, gives the teacher logits under no_grad. The terms follow
docs/methods.md, "BA-LoRA regularisers" and "Presets" (`paper`: NLG, per-sample SVD; `iclr2026`).
Pinned versions: requirements.txt beside this file. On `--device cuda` (a GPU machine,
`scripts/gpu-check`) each step ends with a device synchronisation before its time is read
(peak memory stays the process's resident host memory).
"""
import json
import math
import resource
import sys
import time

import peft
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

QV = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}
ALL = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def arch(model):
    return "gpt2" if model.config.model_type == "gpt2" else "llama"


DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def load(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(DEVICE)
    # GPT-2 configs default to 0.1 dropout; balora's models have none, so neither side pays
    # for it and both compute the same losses
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def lora_config(model, rank, targets, **kw):
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=targets,
        fan_in_fan_out=arch(model) == "gpt2",
        **kw,
    )


def token(b, t, vocab):
    return (b * 131 + t * 7919 + 17) % vocab


# ---- BA-LoRA terms (NLG) ----------------------------------------------------------------


def paper_terms(zf, zp):
    """Preset `paper`, NLG: KL(P‖F) batchmean, −mean entropy, per-sample top-3 SVD ratio."""
    b = zf.shape[0]
    pf = F.softmax(zf, dim=-1)
    pp = F.softmax(zp, dim=-1)
    consistency = F.kl_div(torch.log(pf), pp, reduction="sum") / b
    diversity = -(-(pf * torch.log(pf + 1e-10)).sum(-1)).mean()
    s = torch.linalg.svdvals(zf)
    svd = -(s[:, :3].sum(-1) / (s.sum(-1) + 1e-10)).mean()
    return consistency, diversity, svd


def iclr_terms(zf, zp, tau=2.0, top_k=20, k=10):
    """Preset `iclr2026`, every position a response token (the benchmark labels all tokens)."""
    v = zf.shape[-1]
    rows = zf.reshape(-1, v)
    q = F.softmax(zp.reshape(-1, v) / tau, dim=-1)
    logp = F.log_softmax(rows / tau, dim=-1)
    kl = (q * (torch.log(q.clamp_min(1e-30)) - logp)).sum(-1)
    consistency = tau * tau * kl.mean()
    top = F.log_softmax(rows.topk(top_k, dim=-1).values, dim=-1)
    diversity = -(-(top.exp() * top).sum(-1)).mean()
    n = rows.shape[0]
    kk = min(k, n, v)
    if v > 4096 and kk < min(n, v):
        _, s, _ = torch.svd_lowrank(rows.float(), q=min(min(n, v), kk + 5), niter=2)
        denom = rows.float().norm()
    else:
        s = torch.linalg.svdvals(rows.float())
        denom = (s * s).sum().sqrt()
    svd = -s[:kk].sum() / denom
    return consistency, diversity, svd


def iclr_lambdas(t, total):
    l1 = 0.025 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / total)))
    w, ramp = int(0.2 * total), max(int(0.05 * total), 1)
    phase = 0.0 if t < w else min((t - w) / ramp, 1.0)
    return l1, 0.005 * phase, 0.005 * phase


# ---- jobs ------------------------------------------------------------------------------


def train(job):
    torch.manual_seed(job["seed"])
    model = load(job["model_dir"])
    a = arch(model)
    method, rank = job["method"], job["rank"]
    pissa = "pissa_niter_4"
    kw = {
        "lora": dict(targets=QV[a]),
        "lora-all": dict(targets=ALL[a]),
        "pissa": dict(targets=QV[a], init_lora_weights=pissa),
        "balora-paper": dict(targets=QV[a], init_lora_weights=pissa),
        "balora-iclr2026": dict(targets=QV[a], init_lora_weights=pissa),
        "monteclora": dict(targets=QV[a]),
    }[method]
    if method == "monteclora":
        from peft import MontecloraConfig  # peft ≥ 0.18 only: the other rows run without it

        kw["monteclora_config"] = MontecloraConfig()
    targets = kw.pop("targets")
    model = get_peft_model(model, lora_config(model, rank, targets, **kw)).to(DEVICE)
    teacher = None
    if method.startswith("balora"):
        # the official BA-LoRA code: a second pretrained model as the teacher
        teacher = load(job["model_dir"]).eval().requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    vocab = model.config.vocab_size
    ids = torch.tensor(
        [[token(b, t, vocab) for t in range(job["seq"])] for b in range(job["batch"])],
        device=DEVICE,
    )
    total = job["warmup"] + job["steps"]
    seconds, losses = [], []
    for step in range(total):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        loss = out.loss
        if teacher is not None:
            if method == "balora-paper":
                lambdas = (1e-4, 3e-4, 1e-4)
            else:
                lambdas = iclr_lambdas(step, total)
            zp = None
            if lambdas[0] > 0:
                with torch.no_grad():
                    zp = teacher(input_ids=ids).logits
            if method == "balora-paper":
                terms = paper_terms(out.logits, zp)
            else:
                terms = iclr_terms(out.logits, zp if zp is not None else out.logits.detach())
            for lam, term in zip(lambdas, terms):
                if lam > 0:
                    loss = loss + lam * term
        if method == "monteclora":
            loss = loss + model.base_model._get_monteclora_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync()
        elapsed = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= job["warmup"]:
            seconds.append(elapsed)
    return {"seconds": seconds, "loss": losses, "trainable": trainable}


def gemm(job):
    m, k, n = job["m"], job["k"], job["n"]
    x = torch.rand(m, k, device=DEVICE, requires_grad=True)
    w = torch.rand(k, n, device=DEVICE, requires_grad=True)
    seconds = []
    for rep in range(job["warmup"] + job["reps"]):
        t0 = time.perf_counter()
        x.grad, w.grad = None, None
        (x @ w).sum().backward()
        _ = float(x.grad[0, 0]) + float(w.grad[0, 0])
        if rep >= job["warmup"]:
            seconds.append(time.perf_counter() - t0)
    return {"seconds": seconds}


def pissa_init(job):
    model = load(job["model_dir"])
    init = "pissa" if job["niter"] == 0 else f"pissa_niter_{job['niter']}"
    config = lora_config(model, job["rank"], ALL[arch(model)], init_lora_weights=init)
    sync()
    t0 = time.perf_counter()
    get_peft_model(model, config)
    sync()
    return {"seconds": [time.perf_counter() - t0]}


def decode(job):
    model = load(job["model_dir"]).eval()
    model.generation_config.eos_token_id = None
    vocab = model.config.vocab_size
    ids = torch.tensor(
        [[token(b, t, vocab) for t in range(job["prompt"])] for b in range(job["batch"])],
        device=DEVICE,
    )
    n = job["new_tokens"]
    seconds, tokens = [], []
    for rep in range(job["warmup"] + job["reps"]):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            # exactly n greedy tokens: no stop token (min_new_tokens would instead forbid the
            # end-of-sequence token, which balora's side may pick)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        sync()
        if rep >= job["warmup"]:
            seconds.append(time.perf_counter() - t0)
        tokens = out[:, ids.shape[1] :].tolist()
    return {"seconds": seconds, "tokens": tokens}


def main():
    args = sys.argv[1:]
    threads = 2
    if "--threads" in args:
        i = args.index("--threads")
        threads = int(args[i + 1])
        del args[i : i + 2]
    if "--device" in args:
        i = args.index("--device")
        global DEVICE
        DEVICE = torch.device(args[i + 1])
        del args[i : i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    torch.set_num_threads(threads)
    job = json.loads(args[0])
    kinds = {"train": train, "gemm": gemm, "pissa_init": pissa_init, "decode": decode}
    result = kinds[job["kind"]](job)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["versions"] = (
        f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
