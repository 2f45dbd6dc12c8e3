"""Losses on logits beyond the plain next-token cross-entropy of pretraining.

Notation: B batch, T time, V vocabulary size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where mask is 1 (SFT: assistant tokens).

    loss = sum_t mask[t] * -log softmax(logits[t])[targets[t]] / sum_t mask[t],
    over every position of the batch, so each supervised token weighs the
    same whichever row it is in. logits (B, T, V), targets and mask (B, T).
    A batch with no supervised position gives 0 (with a gradient of zeros),
    never NaN.
    """
    if logits.shape[:-1] != targets.shape or targets.shape != mask.shape:
        raise ValueError(
            f"shapes do not line up: logits {tuple(logits.shape)}, targets "
            f"{tuple(targets.shape)}, mask {tuple(mask.shape)}"
        )
    V = logits.size(-1)
    nll = F.cross_entropy(
        logits.reshape(-1, V).float(), targets.reshape(-1), reduction="none"
    )  # (B*T,)
    weights = mask.reshape(-1).to(nll.dtype)  # (B*T,)
    return (nll * weights).sum() / weights.sum().clamp(min=1.0)
