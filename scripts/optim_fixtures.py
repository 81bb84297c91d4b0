#!/usr/bin/env python3
"""Reference numbers for balora's AdamW (crates/balora-train/tests/optimizer.rs).

Runs torch.optim.AdamW for a few steps on two small float64 parameters with given gradients,
a per-step learning rate and torch.nn.utils.clip_grad_norm_, and writes every input and the
parameters after each step to tests/fixtures/optim/adamw.json.

    python3 scripts/optim_fixtures.py [OUT]

Pinned: torch==2.15.0 (CPU); see scripts/peft_fixtures.py for the environment.
"""
import json
import math
import sys

import torch

torch.set_default_dtype(torch.float64)


def values(n, seed):
    """Deterministic values in [-1, 1) (no RNG: the same on every machine)."""
    return [math.sin(1.7 * i + 0.3 * seed) * math.cos(0.37 * i * seed + 1.0) for i in range(n)]


def case(name, weight_decay, max_norm, eps, betas, steps=6):
    shapes = {"a": [3, 2], "b": [4]}
    init = {k: values(math.prod(s), 11 + i) for i, (k, s) in enumerate(shapes.items())}
    params = {k: torch.nn.Parameter(torch.tensor(init[k]).reshape(s)) for k, s in shapes.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=1.0, betas=betas, eps=eps,
                            weight_decay=weight_decay)
    out = {"name": name, "weight_decay": weight_decay, "max_norm": max_norm, "eps": eps,
           "betas": list(betas), "shapes": shapes, "init": init, "steps": []}
    for t in range(steps):
        lr = 1e-2 * (1.0 + 0.5 * math.cos(t))
        # gradients large enough at some steps that clipping engages
        scale = 3.0 if t % 2 == 0 else 0.2
        grads = {k: [scale * v for v in values(math.prod(s), 100 + 7 * t + i)]
                 for i, (k, s) in enumerate(shapes.items())}
        for k, s in shapes.items():
            params[k].grad = torch.tensor(grads[k]).reshape(s)
        norm = None
        if max_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        out["steps"].append({
            "lr": lr,
            "grads": grads,
            "grad_norm": norm,
            "after": {k: params[k].detach().reshape(-1).tolist() for k in shapes},
        })
    return out


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/optim/adamw.json"
    cases = [
        case("defaults", 0.0, None, 1e-8, (0.9, 0.999)),
        case("decay_and_clipping", 0.1, 1.0, 1e-6, (0.8, 0.95)),
    ]
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
