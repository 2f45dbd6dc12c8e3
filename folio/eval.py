"""Evaluation: loss, perplexity and bits per character on a dataset split.

Two estimates, both deterministic:
- `estimate_loss`: the periodic estimate during training, over a fixed set of
  random batches (the same batches at every eval, so curves are comparable);
- `evaluate_split`: one pass over the whole split, every token predicted once
  (what `folio eval` reports by default).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from folio.data.batches import get_batch, sequential_batches
from folio.errors import FolioError


def check_eval_limits(batch_size: object, max_batches: object = None) -> None:
    """Refuse (FolioError) a batch size below 1, or a batch limit that is set and below 1.

    A batch size of 0 or less or a limit of 0 batches evaluates nothing (or
    nonsense), and would report a loss of 0 and a perplexity of 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FolioError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise FolioError(
            f"--max-batches must be a positive integer (or unset for the whole split), "
            f"got {max_batches!r}"
        )


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    splits: dict[str, np.ndarray],
    batch_size: int,
    block_size: int,
    eval_iters: int,
    seed: int,
    device: torch.device,
    autocast_ctx,
) -> dict[str, float]:
    """Mean loss over `eval_iters` fixed random batches of each split."""
    was_training = model.training
    model.eval()
    out = {}
    for split, data in splits.items():
        g = torch.Generator().manual_seed(seed)  # the same batches every call
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = get_batch(data, batch_size, block_size, g)
            with autocast_ctx():
                _, loss = model(x.to(device), y.to(device))
            losses[k] = loss.float().item()
        out[split] = float(losses.mean())
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    data: np.ndarray,
    block_size: int,
    device: torch.device,
    autocast_ctx,
    n_bytes: int | None = None,
    batch_size: int = 32,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Loss over the whole split (or its first `max_batches` batches), every token once.

    Returns loss (nats per token), perplexity, bits per token and, when the
    split's UTF-8 byte count is known and the whole split was read, bits per
    byte (comparable across tokenizers). For a character tokenizer bits per
    token are bits per character. A batch size or batch limit below 1, or a
    split with nothing to predict, is refused (FolioError) rather than reported
    as a loss of 0.
    """
    check_eval_limits(batch_size, max_batches)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(sequential_batches(data, batch_size, block_size)):
        if max_batches is not None and i >= max_batches:
            break
        with autocast_ctx():
            logits, _ = model(x.to(device))
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        nll = -logp.gather(-1, y.to(device).unsqueeze(-1)).squeeze(-1)  # (B, T)
        total += float(nll.double().sum())
        count += y.numel()
    model.train(was_training)
    if count == 0:
        raise FolioError(f"nothing to evaluate: the split has {len(data)} token(s), fewer than 2")
    loss = total / count
    out = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_token": loss / math.log(2),
        "tokens": count,
        "complete": max_batches is None or count == len(data) - 1,
    }
    if n_bytes and out["complete"]:
        out["bits_per_byte"] = total / (n_bytes * math.log(2))
    return out
