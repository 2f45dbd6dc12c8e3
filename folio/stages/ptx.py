"""PPO-ptx's extra term, shared by PPO and DPO: the SFT loss on conversations, mixed in.

InstructGPT (Ouyang et al. 2022) found that PPO against a reward model pays an
"alignment tax": trained on one kind of prompt, the policy loses abilities the
reward model never asks about. Its cure, PPO-ptx, adds the pretraining
loss to every step. Folio adds the SFT loss (the masked next-token loss on
the assistant's tokens, `masked_lm_loss`) on rows of conversations the user
gives, the task conversations SFT learned from, say, weighted by `ptx_coef`:

    loss = stage_loss + ptx_coef * masked_lm_loss(policy(x), y, mask)

Demonstrations of a Folio task with no checker (`line`: the prompts the
preference stages are teaching the policy to answer better) are left out, so
the extra term never pulls the policy back to the replies being improved on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from folio.data.conversations import read_conversations, sft_rows
from folio.data.tasks import is_demonstration
from folio.errors import FolioError
from folio.train.losses import masked_lm_loss

PtxRows = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Packed conversation rows: inputs x, targets y and the loss mask, (N, block_size) each."""


def ptx_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The SFT loss of the model's language-model head on conversation rows, (B, T) each."""
    logits = model.lm_head(model.hidden_states(x))  # (B, T, V)
    return masked_lm_loss(logits, y, mask)


def ptx_rows(path: str | Path, tokenizer: Any, block_size: int) -> tuple[PtxRows, int, int]:
    """The packed rows of `path` (a JSONL file, or a directory's train.jsonl as `folio tasks
    make` writes), demonstrations left out. Returns the rows, the conversations kept and the
    conversations left out."""
    p = Path(path).expanduser()
    convs = read_conversations(p / "train.jsonl" if (p / "train.jsonl").is_file() else p)
    kept = [c for c in convs if c.task is None or not is_demonstration(c.task)]
    if not kept:
        raise FolioError(f"--ptx-data {path}: holds demonstrations only; nothing to mix in")
    return sft_rows(kept, tokenizer, block_size), len(kept), len(convs) - len(kept)


def draw_ptx(rows: PtxRows, n: int, generator: torch.Generator) -> PtxRows:
    """n rows drawn uniformly with `generator` (so a resumed run draws the same ones)."""
    pick = torch.randint(len(rows[0]), (n,), generator=generator)
    return rows[0][pick], rows[1][pick], rows[2][pick]
