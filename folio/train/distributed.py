"""Data-parallel training across processes: the few collectives the trainer needs.

The torchrun environment and the process group live in `folio.runtime`.

`torchrun --nproc-per-node N -m folio train ...` starts N copies of the trainer
with RANK, WORLD_SIZE and LOCAL_RANK set (and MASTER_ADDR/MASTER_PORT for the
rendezvous). Each copy holds the whole model (DistributedDataParallel, which
averages gradients in backward) or a shard of it (`--fsdp`, PyTorch's
fully_shard), draws its own batches, and all of them take the same optimizer
step. Without those variables every function here answers as a single process,
so `python -m folio train` is untouched.

Data order: rank r draws its micro-batches from a generator seeded with
`seed + r`, so rank 0's stream is exactly the single-process stream, and a
step of N ranks with batch b sees the union of the N ranks' batches.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Elementwise sum of a few floats over all ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_floats(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's floats on every rank, so decisions taken from them agree."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj` (picklable), in rank order; [obj] alone in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def resume_seed(seed: int, step: int, rank: int) -> int:
    """The data seed of a rank that has no saved stream (resume on more ranks than saved)."""
    return (seed + 1_000_003 * step + rank) % 2**63


def no_buffer_sync_kwargs() -> dict[str, bool]:
    """DDP's switch for not re-broadcasting buffers every forward, under this torch's name."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def to_float(t: torch.Tensor) -> float:
    """A scalar as a float; a sharded (DTensor) scalar, such as FSDP's gradient norm, whole."""
    full_tensor = getattr(t, "full_tensor", None)
    return float(full_tensor() if full_tensor is not None else t)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rank_rng_tensors(data_gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Ranks 1.. N-1's data and dropout RNG states, gathered for rank 0's checkpoint.

    A collective: every rank calls it. Rank 0's own states are the checkpoint's
    plain `rng.data` / `rng.torch`, as in a single process; a single process adds nothing.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return {}
    states = gather_objects((torch.get_rng_state(), data_gen.get_state()))
    out = {}
    for r, (torch_state, data_state) in enumerate(states):
        if r > 0:
            out[f"rng.torch.rank{r}"] = torch_state
            out[f"rng.data.rank{r}"] = data_state
    return out


def restore_rank_rng(
    rng: dict[str, torch.Tensor], data_gen: torch.Generator, seed: int, step: int, rank: int
) -> bool:
    """Restore this rank's data and dropout streams from a checkpoint's RNG tensors.

    Rank r takes the streams rank r saved; a rank the checkpoint has no stream for
    (resuming on more processes than wrote it) starts fresh ones from
    resume_seed(seed, step, rank). Returns False in that case.
    """
    torch_key, data_key = (
        ("rng.torch", "rng.data")
        if rank == 0
        else (f"rng.torch.rank{rank}", f"rng.data.rank{rank}")
    )
    if data_key in rng and torch_key in rng:
        torch.set_rng_state(rng[torch_key])
        data_gen.set_state(rng[data_key])
        return True
    data_gen.manual_seed(resume_seed(seed, step, rank))
    torch.manual_seed(resume_seed(seed + 1, step, rank))
    return False


def grad_sync(module: torch.nn.Module, sync: bool):
    """A context for one micro-step's backward: reduce gradients only when `sync`.

    DDP skips its all-reduce inside no_sync(); fully_shard skips its reduce-scatter
    when gradient sync is switched off. A single process needs neither.
    """
    import contextlib

    if sync:
        if hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if hasattr(module, "no_sync"):
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(False)
    return contextlib.nullcontext()


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Shard parameters, gradients and optimizer state across ranks (FSDP2's fully_shard).

    Each transformer block is its own unit (gathered just before its forward and
    freed after), then the root takes the rest (embeddings, final norm, head).
    """
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(getattr(model, "transformer", None), "h", None)
    for block in blocks or []:
        fully_shard(block)
    fully_shard(model)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's whole weights, on CPU, on rank 0 (empty elsewhere). A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
