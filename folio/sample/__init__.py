"""Sampling: a trained model and a prompt -> generated text, step by step or all at once."""

from __future__ import annotations

from pathlib import Path

import torch

from folio.sample.sampler import Sampler, SamplingConfig, Step, filter_logits


def load_sampler(
    checkpoint: str | Path,
    which: str = "latest",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    check_memory: bool = True,
    decode: str = "auto",
    weights: str = "float32",
) -> Sampler:
    """A sampler over a checkpoint's model and tokenizer (`dtype`: None or float32 = fp32;
    `check_memory`: refuse a call whose memory estimate does not fit; `decode` and
    `weights`: the decode path, as in `Sampler`)."""
    from folio.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint, which, device, check_memory=check_memory)
    return Sampler(
        ck.model,
        ck.tokenizer,
        device=device,
        dtype=dtype,
        check_memory=check_memory,
        decode=decode,
        weights=weights,
    )


__all__ = ["Sampler", "SamplingConfig", "Step", "filter_logits", "load_sampler"]
