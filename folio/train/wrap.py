"""The module a training loss runs through: the model, wrapped for DDP, maybe compiled.

DDP wraps the model after its weights are final (it broadcasts rank 0's);
FSDP shards it in place instead (folio/train/distributed.py). `torch.compile`
compiles at once on an example batch, so a failure shows at the start of a run
and falls back to eager there, never mid-run.
"""

from __future__ import annotations

import torch
from torch import nn

from folio.train import distributed
from folio.train.objectives import Batch, Objective


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (the process group is already up)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        **distributed.no_buffer_sync_kwargs(),  # buffers (the causal mask) never change
    )


def maybe_compile(
    model: nn.Module, enabled: bool, objective: Objective, example: Batch | None, log
) -> nn.Module:
    """`torch.compile(model)` when enabled, compiled now on `example` (a failure: eager)."""
    if not enabled or example is None:
        return model
    device = example[0].device
    try:
        compiled = torch.compile(model)
        # Compile now, so a failure shows here and not mid-run; under fork_rng so the
        # warm-up's dropout masks leave the run's (and a resume's) random stream alone.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            objective.loss(compiled, example).backward()
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eager
        model.zero_grad(set_to_none=True)
        log(
            f"warning: torch.compile failed ({e.__class__.__name__}: {str(e).splitlines()[0][:100]}); running eager"
        )
        return model
