"""The optimizer and the learning-rate schedules.

AdamW decays only tensors of 2 or more dimensions (matmul weights and
embeddings); biases and LayerNorm gains are left alone, as in GPT-2 and
nanoGPT. Schedules are pure functions of the step, so resuming needs no
scheduler state beyond the step itself.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The names a config may give live in the config, which the CLI imports without torch.
from folio.config.run import OPTIMIZERS as OPTIMIZERS
from folio.config.run import SCHEDULES as SCHEDULES
from folio.errors import FolioError


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
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device_type: str,
    kind: str = "adamw",
    muon_lr: float = 0.02,
    muon_momentum: float = 0.95,
) -> torch.optim.Optimizer:
    """AdamW over the two groups (the fused kernel where this PyTorch offers it), or MuonAdamW.

    With kind="muon", the matrices inside the blocks follow Muon at peak rate
    `muon_lr`; the rest follows AdamW at `lr`. Both follow the same schedule.
    """
    if kind == "muon":
        groups = muon_param_groups(model, lr, muon_lr, weight_decay)
        return MuonAdamW(groups, lr=lr, betas=betas, momentum=muon_momentum)
    kwargs = {}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in (
        "cuda",
        "cpu",
    ):
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, **kwargs)


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The `train.optimizer` setting that builds an optimizer of this kind ('adamw', 'muon')."""
    if isinstance(optimizer, MuonAdamW):
        return "muon"
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    return type(optimizer).__name__.lower()


def make_optimizer_for(model: nn.Module, train_config, device_type: str) -> torch.optim.Optimizer:
    """`make_optimizer` with every setting taken from a TrainConfig (passed untyped: config imports us)."""
    tc = train_config
    return make_optimizer(
        model,
        tc.learning_rate,
        tc.weight_decay,
        (tc.beta1, tc.beta2),
        device_type,
        kind=tc.optimizer,
        muon_lr=tc.muon_lr,
        muon_momentum=tc.muon_momentum,
    )


def learning_rate(
    step: int,
    *,
    schedule: str,
    max_lr: float,
    min_lr: float,
    warmup_iters: int,
    max_iters: int,
    decay_fraction: float = 0.2,
    time_fraction: float | None = None,
) -> float:
    """Learning rate at `step` (0-based).

    - constant: linear warmup, then max_lr.
    - cosine: linear warmup, then a cosine from max_lr down to min_lr at max_iters.
    - wsd (warmup-stable-decay): warmup, hold max_lr, then decay linearly to
      min_lr over the last `decay_fraction` of the run.

    With `time_fraction` (the share of the time budget spent, `schedule_clock = 'time'`)
    the cosine and wsd schedules run over time instead of steps: the cosine's progress
    is that fraction, and wsd decays over its last `decay_fraction`. Warmup stays in steps.
    """
    if warmup_iters > 0 and step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if schedule == "constant":
        return max_lr
    if schedule == "cosine":
        if time_fraction is not None:
            progress = min(1.0, max(0.0, time_fraction))
        else:
            progress = min(1.0, (step - warmup_iters) / max(1, max_iters - warmup_iters))
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    if schedule == "wsd":
        if time_fraction is not None:
            progress = (time_fraction - (1.0 - decay_fraction)) / max(decay_fraction, 1e-9)
        else:
            decay_start = max_iters - int(decay_fraction * max_iters)
            progress = (step - decay_start) / max(1, max_iters - decay_start)
        if progress <= 0:
            return max_lr
        return max_lr + min(1.0, progress) * (min_lr - max_lr)
    raise ValueError(f"unknown schedule {schedule!r}")


# --- Muon: orthogonalised momentum for the hidden matrices --------------------------------


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""(a, b, c) of the quintic Newton-Schulz step x <- a x + (b A + c A^2) x, A = x x^T."""


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximation of U V^T, where g = U S V^T: g with every singular value pushed towards 1.

    A quintic Newton-Schulz iteration (the coefficients of Keller Jordan's Muon),
    tuned to raise small singular values fast rather than to converge exactly:
    the result's singular values land roughly in [0.7, 1.2], which is all the
    optimizer needs. Works on (rows, cols) matrices of either orientation, and on
    a stack of same-shaped matrices (batch, rows, cols), each on its own.
    """
    a, b, c = NS_COEFFICIENTS
    x = g / (torch.linalg.vector_norm(g, dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT  # iterate on the smaller Gram matrix
    mm = torch.addmm if x.dim() == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT  # (r, c) @ (c, r) -> (r, r)
        poly = mm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2, one kernel
        x = mm(x, poly, x, beta=a)  # a x + poly @ x, one kernel
    return x.mT if tall else x


def orthogonalize_many(grads: list[torch.Tensor], steps: int = 5) -> list[torch.Tensor]:
    """`orthogonalize` of each matrix, computed as one batch per shape.

    A small model's matrices are too small to keep the CPU busy one at a time:
    stacking the layers' same-shaped matrices turns each iteration's many small
    products into a few batched ones. Each matrix is still orthogonalised on its own.
    """
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, g in enumerate(grads):
        by_shape.setdefault(tuple(g.shape), []).append(i)
    out: list[torch.Tensor] = [grads[0]] * len(grads)
    for indices in by_shape.values():
        if len(indices) == 1:
            out[indices[0]] = orthogonalize(grads[indices[0]], steps)
            continue
        stacked = orthogonalize(torch.stack([grads[i] for i in indices]), steps)
        for i, o in zip(indices, stacked.unbind(0), strict=True):
            out[i] = o
    return out


def _undecorated(method: Any) -> Any:
    """`method` without the decorators functools.wraps recorded (itself if it has none)."""
    return inspect.unwrap(method)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the matrices inside the blocks, AdamW for everything else, as one optimizer.

    Muon ("MomentUm Orthogonalized by Newton-Schulz") keeps SGD momentum per
    matrix and steps along the orthogonalised momentum, so every direction of
    the update moves by a similar amount instead of a few dominant ones. It
    suits 2-D weights that transform hidden states; embeddings, the output
    head, biases and LayerNorm gains stay on AdamW. A parameter group with
    `muon=True` uses Muon. Groups carry `lr_scale` (their peak rate over the
    schedule's), which the trainer multiplies into the scheduled rate.

    One optimizer (not two) so that checkpoints, resume and the trainer's
    learning-rate loop treat it like AdamW.
    """

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        ns_steps: int = 5,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            momentum=momentum,
            weight_decay=weight_decay,
            eps=eps,
            ns_steps=ns_steps,
            muon=False,
            lr_scale=1.0,
        )
        super().__init__(groups, defaults)

    # torch.optim.Optimizer wraps these four in `torch._disable_dynamo`, which imports
    # torch._dynamo (about 1.3 s, sympy included) the first time one is called. That guard
    # matters only when the optimizer itself is traced by torch.compile, which Folio never
    # does, so MuonAdamW calls the undecorated methods and a short run does not pay the import.

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        return _undecorated(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)

    def _muon_step(self, group: dict) -> None:
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        torch._foreach_mul_(bufs, mom)
        torch._foreach_add_(bufs, grads)
        nesterov = torch._foreach_add(grads, bufs, alpha=mom)
        updates = orthogonalize_many(nesterov, group["ns_steps"])
        if wd:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        for p, update in zip(params, updates, strict=True):
            # An orthogonal (r, c) matrix has entries of size ~1/sqrt(max(r, c));
            # rescale tall matrices so their update's RMS matches square ones.
            scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            p.add_(update, alpha=-lr * scale)

    def _adamw_step(self, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        ms, vs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            ms.append(state["exp_avg"])
            vs.append(state["exp_avg_sq"])
            steps.append(float(state["step"]))
        torch._foreach_lerp_(ms, grads, 1.0 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
        if wd:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        denom = torch._foreach_div(vs, [1.0 - beta2**t for t in steps])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, ms, denom, [-lr / (1.0 - beta1**t) for t in steps])


def muon_param_groups(
    model: nn.Module, lr: float, muon_lr: float, weight_decay: float
) -> list[dict]:
    """Hidden matrices (2-D weights inside the blocks) on Muon; embeddings, head and vectors on AdamW."""
    seen: set[int] = set()
    hidden, other_matrices, vectors = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() == 2 and ".h." in f".{name}":
            hidden.append(p)
        elif p.dim() >= 2:
            other_matrices.append(p)
        else:
            vectors.append(p)
    return [
        {"params": hidden, "muon": True, "lr_scale": muon_lr / lr, "weight_decay": 0.0},
        {"params": other_matrices, "weight_decay": weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with its kind ('adamw', 'muon') recorded, as checkpoints take it."""
    return {**opt.state_dict(), "optimizer": optimizer_name(opt)}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fits(saved: Any, current: Any) -> bool:
    """Whether a saved hyperparameter can stand where this optimizer has `current`.

    Numbers must stay finite numbers and tuples (betas) keep their length;
    flags may differ (fused depends on the device) but stay flags or None.
    """
    if isinstance(current, bool):
        return saved is None or isinstance(saved, bool)
    if current is None:
        return saved is None or isinstance(saved, bool | str)
    if _number(current):
        return _number(saved)
    if isinstance(current, list | tuple):
        return (
            isinstance(saved, list | tuple)
            and len(saved) == len(current)
            and all(_fits(a, b) for a, b in zip(saved, current, strict=True))
        )
    return isinstance(saved, type(current))


def _optimizer_mismatch(optimizer: torch.optim.Optimizer, state: Any) -> str | None:
    """Why a saved optimizer state cannot be loaded into `optimizer`, or None if it can."""
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
        return "it has no list of parameter groups"
    saved_groups, groups = state["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups):
        return f"it has {len(saved_groups)} parameter groups, this optimizer {len(groups)}"
    params: dict[int, torch.Tensor] = {}  # saved id -> the parameter it stands for
    for i, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        ids = saved.get("params") if isinstance(saved, dict) else None
        if not isinstance(ids, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in ids
        ):
            return f"parameter group {i} is malformed"
        if len(ids) != len(group["params"]):
            return (
                f"parameter group {i} holds {len(ids)} tensors, this optimizer's "
                f"{len(group['params'])}"
            )
        params.update(zip(ids, group["params"], strict=True))
        for key, value in group.items():
            if key != "params" and key in saved and not _fits(saved[key], value):
                return f"parameter group {i} has {key} = {saved[key]!r}"
    if len(params) != sum(len(g["params"]) for g in groups):
        return "a parameter id appears twice"
    per_param = state.get("state")
    if not isinstance(per_param, dict):
        return "its per-parameter state is not a mapping"
    for pid, entries in per_param.items():
        if pid not in params or not isinstance(entries, dict):
            return f"it holds state for an unknown parameter {pid!r}"
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                if value.dim() and value.shape != params[pid].shape:
                    return (
                        f"{name} of parameter {pid} is {_dims(tuple(value.shape))}, the "
                        f"parameter {_dims(tuple(params[pid].shape))}"
                    )
            elif not _number(value):
                return f"{name} of parameter {pid} is {value!r}"
    return None


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], path: str | Path
) -> None:
    """Load a checkpoint's optimizer state (from `Checkpoint.trainer_state`) into `optimizer`.

    Refuses, in one FolioError line, a state saved by another optimizer ("this
    run was trained with adamw") or one whose groups, hyperparameters or tensor
    shapes do not fit (a tampered optimizer.json or trainer.safetensors), rather
    than failing inside PyTorch now or at the first step.
    """
    where = Path(path) / "optimizer.json"
    saved_name = state.get("optimizer") if isinstance(state, dict) else None
    name = optimizer_name(optimizer)
    if isinstance(saved_name, str) and saved_name != name:
        raise FolioError(
            f"{where}: this run was trained with {saved_name}; resume with the same optimizer "
            f"(--set train.optimizer={saved_name}), not {name}"
        )
    why = _optimizer_mismatch(optimizer, state)
    if why is None:
        try:
            optimizer.load_state_dict({k: v for k, v in state.items() if k != "optimizer"})
            return
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    raise FolioError(
        f"{where}: the saved optimizer state does not fit this {name} optimizer ({why}); "
        "resume with the optimizer and model the run was trained with"
    )


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
