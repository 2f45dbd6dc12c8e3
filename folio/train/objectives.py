"""What a training stage optimises: its batches and its loss, plugged into the one `Trainer`.

Pretraining, fine-tuning on conversations, a reward model and RL differ only
in where their batches come from and how a batch becomes a loss. Everything
else (accumulation, clipping, the NaN guard, evals, checkpoints, exact
resume, DDP, metrics) is the `Trainer`'s and is shared. An objective is a
subclass of `Objective` with:

- `splits`: the names evaluated at every eval ("train" and "val" here);
- `tokens_per_batch`: tokens one batch trains on, for tokens/s and the
  `tokens` axis of the loss plot;
- `batch(split, generator)`: one batch of CPU tensors, drawn with
  `generator` only (so the trainer can checkpoint and restore the stream);
- `loss(model, batch)`: a scalar loss, the batch already on the model's device;
- `metrics(model)`: more figures for each eval row (a held-out pass@1, a
  reward), computed with the model in eval mode, under no_grad (none by default).

An on-policy stage (RL) samples its batches from the model being trained and
learns from each sample for several steps; it overrides the hooks whose
defaults do nothing:

- `bind(model)`: called once with the model being trained, before any batch;
- `eval_batch(split, generator)`: the batches `evaluate` scores, when they
  must not come from (and disturb) the training stream of `batch`;
- `state_dict()` / `load_state_dict(tensors)`: CPU tensors saved with each
  checkpoint and restored on resume (the rollout being learned from), so a
  resumed run continues exactly.

`LMObjective` is the video's next-token loss on random windows of a token
stream; `MaskedLMObjective` is the same loss counted only where a mask is 1
(SFT's "learn what the assistant says"); `MixedObjective` is the masked one
with some rows of every training batch taken from pretraining text instead
(mask 1 everywhere), so a fine-tuned model keeps what it knew.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from folio.data.batches import get_batch
from folio.train.losses import masked_lm_loss

Batch = tuple[torch.Tensor, ...]


class Objective:
    """A stage's batches and loss, and the optional hooks' defaults (see the module docstring)."""

    splits: tuple[str, ...] = ("train", "val")
    tokens_per_batch: int

    def batch(self, split: str, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, model: nn.Module) -> None:
        """Called once with the model being trained, before any batch (nothing by default)."""

    def eval_batch(self, split: str, generator: torch.Generator) -> Batch:
        """The batches `evaluate` scores: by default the training stream's kind."""
        return self.batch(split, generator)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """More figures for an eval row (none by default)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """CPU tensors to checkpoint with the run, restored on resume (none by default)."""
        return {}

    def load_state_dict(self, tensors: dict[str, Any]) -> None:
        """Restore what `state_dict` gave (nothing by default)."""


class LMObjective(Objective):
    """Next-token prediction on random windows of each split's token stream (pretraining)."""

    splits = ("train", "val")

    def __init__(self, data: dict[str, np.ndarray], batch_size: int, block_size: int) -> None:
        self.data, self.batch_size, self.block_size = data, batch_size, block_size
        self.tokens_per_batch = batch_size * block_size

    def batch(self, split: str, generator: torch.Generator) -> Batch:
        return get_batch(self.data[split], self.batch_size, self.block_size, generator)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        _, loss = model(x, y)
        return loss


class MaskedLMObjective(Objective):
    """Next-token loss on fixed rows, counted only where the loss mask is 1.

    `rows[split]` is `(x, y, mask)`, each (N, T): inputs, next-token targets and
    which targets are learned. A batch is `batch_size` rows drawn at random.
    """

    splits = ("train", "val")

    def __init__(
        self, rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], batch_size: int
    ) -> None:
        self.rows, self.batch_size = rows, batch_size
        self.tokens_per_batch = batch_size * rows["train"][0].shape[1]

    def batch(self, split: str, generator: torch.Generator) -> Batch:
        x, y, mask = self.rows[split]
        ix = torch.randint(len(x), (self.batch_size,), generator=generator)  # (B,)
        return x[ix], y[ix], mask[ix]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y, mask = batch
        logits, _ = model(x)  # (B, T, V)
        return masked_lm_loss(logits, y, mask)


class MixedObjective(MaskedLMObjective):
    """`MaskedLMObjective` whose training batches mix in windows of plain text.

    Of each training batch's `batch_size` rows, `n_text = round(fraction *
    batch_size)` (at least 1 when fraction > 0) are random windows of
    `text["train"]` with a mask of ones: next-token prediction at every
    position, as in pretraining. The loss is `masked_lm_loss` over the whole
    batch, so every supervised token weighs the same: a text row supervises
    all T positions, a conversation row only its assistant tokens.

    The "val" split is the masked rows alone (held-out conversations), the
    figure fine-tuning is judged by; `metrics` adds `text_val_loss`, the loss
    on `eval_batches` fixed windows of `text["val"]`, which shows whether the
    model keeps its pretraining text. With `text` None (or fraction 0) this is
    `MaskedLMObjective`.
    """

    def __init__(
        self,
        rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        batch_size: int,
        text: dict[str, np.ndarray] | None = None,
        fraction: float = 0.0,
        eval_batches: int = 8,
    ) -> None:
        super().__init__(rows, batch_size)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"the text fraction must be in [0, 1), got {fraction}")
        self.text, self.block_size = text, rows["train"][0].shape[1]
        self.n_text = 0 if text is None or fraction == 0 else max(1, round(fraction * batch_size))
        self.n_text = min(self.n_text, batch_size - 1)  # at least one conversation row
        self.eval_batches = eval_batches

    def batch(self, split: str, generator: torch.Generator) -> Batch:
        n_rows = self.batch_size - (self.n_text if split == "train" else 0)
        x, y, mask = self.rows[split]
        ix = torch.randint(len(x), (n_rows,), generator=generator)  # (B - n_text,)
        x, y, mask = x[ix], y[ix], mask[ix]
        if n_rows == self.batch_size:
            return x, y, mask
        tx, ty = get_batch(self.text["train"], self.n_text, self.block_size, generator)  # type: ignore[index]
        ones = torch.ones_like(ty)  # (n_text, T): every next token is learned
        return torch.cat([x, tx]), torch.cat([y, ty]), torch.cat([mask, ones])  # (B, T) each

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """`text_val_loss`: next-token loss on fixed windows of the text's val split."""
        if self.text is None or self.n_text == 0:
            return {}
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(0)  # the same windows at every eval
        total = 0.0
        for _ in range(self.eval_batches):
            x, y = get_batch(self.text["val"], self.batch_size, self.block_size, generator)
            _, loss = model(x.to(device), y.to(device))
            total += float(loss)
        return {"text_val_loss": total / self.eval_batches}
