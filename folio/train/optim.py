"""The optimizer and the learning-rate schedules.

AdamW decays only tensors of 2 or more dimensions (matmul weights and
embeddings); biases and LayerNorm gains are left alone, as in GPT-2 and
nanoGPT. Schedules are pure functions of the step, so resuming needs no
scheduler state beyond the step itself.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

SCHEDULES = ("constant", "cosine", "wsd")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and vectors (not decayed). Tied tensors appear once."""
    seen: set[int] = set()
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], device_type: str
) -> torch.optim.AdamW:
    """AdamW over the two groups; the fused kernel where this PyTorch offers it for the device."""
    kwargs = {}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in (
        "cuda",
        "cpu",
    ):
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, **kwargs)


def learning_rate(
    step: int,
    *,
    schedule: str,
    max_lr: float,
    min_lr: float,
    warmup_iters: int,
    max_iters: int,
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate at `step` (0-based).

    - constant: linear warmup, then max_lr.
    - cosine: linear warmup, then a cosine from max_lr down to min_lr at max_iters.
    - wsd (warmup-stable-decay): warmup, hold max_lr, then decay linearly to
      min_lr over the last `decay_fraction` of the run.
    """
    if warmup_iters > 0 and step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if schedule == "constant":
        return max_lr
    if schedule == "cosine":
        span = max(1, max_iters - warmup_iters)
        progress = min(1.0, (step - warmup_iters) / span)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    if schedule == "wsd":
        decay_start = max_iters - int(decay_fraction * max_iters)
        if step < decay_start:
            return max_lr
        progress = min(1.0, (step - decay_start) / max(1, max_iters - decay_start))
        return max_lr + progress * (min_lr - max_lr)
    raise ValueError(f"unknown schedule {schedule!r}")
