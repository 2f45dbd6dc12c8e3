"""Evaluation: loss, perplexity and bits per character on a dataset split.

Two estimates, both deterministic:
- `estimate_loss`: the periodic estimate during training, over a fixed set of
  random batches (the same batches at every eval, so curves are comparable);
- `evaluate_split`: one pass over the whole split, every token predicted once
  (what `folio eval` reports by default).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from folio.checkpoint import load_checkpoint, run_dataset
from folio.data.batches import Dataset, get_batch, remapped, sequential_batches
from folio.errors import FolioError
from folio.runtime import autocast
from folio.tokenizers.extend import token_id_map


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
def estimate_objective(
    model: nn.Module,
    loss_of: Callable[[Any], torch.Tensor],
    draw: Callable[[str, torch.Generator], Any],
    splits: Iterable[str],
    eval_iters: int,
    seed: int,
    autocast_ctx,
) -> dict[str, float]:
    """Each split's mean `loss_of(batch)` over `eval_iters` batches `draw(split, g)` with g seeded
    by `seed`: the same batches at every call. `model` is put in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    out = {}
    for split in splits:
        g = torch.Generator().manual_seed(seed)  # the same batches every call
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            batch = draw(split, g)
            with autocast_ctx():
                loss = loss_of(batch)
            losses[k] = loss.float().item()
        out[split] = float(losses.mean())
    model.train(was_training)
    return out


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
    """Mean next-token loss over `eval_iters` fixed random batches of each split."""
    return estimate_objective(
        model,
        lambda b: model(b[0].to(device), b[1].to(device))[1],
        lambda split, g: get_batch(splits[split], batch_size, block_size, g),
        splits,
        eval_iters,
        seed,
        autocast_ctx,
    )


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
    progress: str | None = None,
) -> dict[str, Any]:
    """Loss over the whole split (or its first `max_batches` batches), every token once.

    Returns loss (nats per token), perplexity, bits per token and, when the
    split's UTF-8 byte count is known and the whole split was read, bits per
    byte (comparable across tokenizers). For a character tokenizer bits per
    token are bits per character. A batch size or batch limit below 1, or a
    split with nothing to predict, is refused (FolioError) rather than reported
    as a loss of 0. `progress` names a bar shown on stderr while it runs (where stderr is a
    terminal).
    """
    check_eval_limits(batch_size, max_batches)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    pairs = max(0, len(data) - 1)  # as sequential_batches: full windows, then the rest
    n_batches = -(-(pairs // block_size) // batch_size) + (1 if pairs % block_size else 0)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    bar = _progress_bar(progress, n_batches)
    for i, (x, y) in enumerate(sequential_batches(data, batch_size, block_size)):
        if max_batches is not None and i >= max_batches:
            break
        bar.update(1)
        with autocast_ctx():
            logits, _ = model(x.to(device))
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        nll = -logp.gather(-1, y.to(device).unsqueeze(-1)).squeeze(-1)  # (B, T)
        total += float(nll.double().sum())
        count += y.numel()
    bar.close()
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


def _progress_bar(name: str | None, total: int) -> Any:
    """A tqdm bar on stderr named `name`, shown only where stderr is a terminal (None: never)."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=name or "", unit="batch", file=sys.stderr, leave=False,
        disable=None if name else True,
    )  # fmt: skip


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None = None,
    *,
    splits: Iterable[str] = ("val",),
    which: str = "latest",
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """`folio eval`: a checkpoint's figures on each split of a dataset (default: the run's own;
    the val split unless `splits` asks for more; `progress`: a bar per split on a terminal).

    Returns, per split: loss, perplexity, bits per char (char) or per token
    (BPE), bits per byte when the whole split was read, and tokens counted.
    A checkpoint whose tokenizer extends the dataset's (a fine-tuned model with
    added characters or chat tokens) reads the dataset through an id map.
    """
    device = device or torch.device("cpu")
    ck = load_checkpoint(checkpoint, which, device)
    data = data if data is not None else run_dataset(checkpoint)
    ds = Dataset.open(data)
    lut = None
    if ck.tokenizer.to_dict() != ds.tokenizer.to_dict():
        try:
            lut = token_id_map(ds.tokenizer, ck.tokenizer)
        except FolioError:
            raise FolioError(
                f"{ck.path}: the checkpoint's tokenizer does not match the dataset {data}"
            ) from None
    out: dict[str, Any] = {"checkpoint": str(ck.path), "step": ck.state.get("step")}
    per_token = "bits_per_char" if ck.tokenizer.kind == "char" else "bits_per_token"
    for split in splits:
        r = evaluate_split(
            ck.model, remapped(ds.tokens(split), lut), ck.model_config.block_size, device,
            lambda: autocast(device, dtype), n_bytes=ds.meta.get(f"{split}_bytes"),
            batch_size=batch_size, max_batches=max_batches,
            progress=f"eval {split}" if progress else None,
        )  # fmt: skip
        out[f"{split}_loss"] = r["loss"]
        out[f"{split}_perplexity"] = r["perplexity"]
        out[f"{split}_{per_token}"] = r["bits_per_token"]
        if "bits_per_byte" in r:
            out[f"{split}_bits_per_byte"] = r["bits_per_byte"]
        out[f"{split}_tokens"] = r["tokens"]
    return out
