"""The training loop: batches -> loss -> gradients -> AdamW step, with everything
a long run needs to be trusted.

One optimizer step: `grad_accum` micro-batches, each loss divided by
grad_accum so the summed gradient equals that of one big batch; clip the
global norm; set the scheduled learning rate; step. Every `eval_interval`
steps: estimate train/val loss on fixed batches, write metrics and the loss
plot, checkpoint (latest; best when val improved). Resume restores weights,
optimizer, the data sampler's and dropout's random states and the step, so a
resumed run continues exactly as if never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from folio.checkpoint import (
    check_fresh_run_dir,
    load_checkpoint,
    load_optimizer_state,
    move_run_aside,
    save_checkpoint,
)
from folio.data.batches import Dataset, get_batch
from folio.errors import FolioError
from folio.eval import estimate_loss
from folio.fsutil import atomic_write_json
from folio.models import build_model, model_config_from_dict
from folio.train import distributed
from folio.train.config import RunConfig
from folio.train.device import (
    autocast,
    flops_per_token,
    peak_flops,
    physical_cores,
    pick_device,
    resolve_dtype,
)
from folio.train.memory import check_training_memory
from folio.train.optim import learning_rate, make_optimizer_for
from folio.train.run_log import MetricsLog, NoMetrics, nan_snapshot, plot_losses


@dataclass
class TrainResult:
    """What a run ended with."""

    run_dir: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    seconds: float
    tokens_per_s: float
    n_params: int
    stopped: str
    """Why the run ended: 'max_iters', 'max_time', 'patience' or 'interrupted'."""
    history: list[dict[str, Any]] = field(default_factory=list)


class _StopFlag:
    """Ctrl-C asks the loop to stop at the next step boundary; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def _rng_tensors(data_gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state(), "rng.data": data_gen.get_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    return out


def _py_np_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python_rng": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def _restore_py_np_rng(state: dict[str, Any]) -> None:
    if "python_rng" in state:
        v, internal, gauss = state["python_rng"]
        random.setstate((v, tuple(internal), gauss))
    if "numpy_rng" in state:
        name, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _maybe_compile(
    model: nn.Module, enabled: bool, example: tuple[torch.Tensor, torch.Tensor], log
) -> nn.Module:
    if not enabled:
        return model
    device = example[0].device
    try:
        compiled = torch.compile(model)
        # Compile now, so a failure shows here and not mid-run; under fork_rng so the
        # warm-up's dropout masks leave the run's (and a resume's) random stream alone.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            _, loss = compiled(*example)
            loss.backward()
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eager
        model.zero_grad(set_to_none=True)
        log(
            f"warning: torch.compile failed ({e.__class__.__name__}: {str(e).splitlines()[0][:100]}); running eager"
        )
        return model


def train(
    run: RunConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log=print,
    init_from: str | None = None,
    force: bool = False,
    restart: bool = False,
) -> TrainResult:
    """Train the model `run` describes on the dataset in `data_dir`, writing the run to `out_dir`.

    `init_from="hf:DIR"` starts from a local Hugging Face GPT-2's weights; the model's
    shape then comes from DIR and, of `run.model`, only dropout applies. A fresh
    run refuses a non-empty `out_dir` unless `restart`, which moves it aside.
    """
    tc = run.train
    out_dir = Path(out_dir)
    if resume and restart:
        raise FolioError("--resume continues a run and --restart starts it over: choose one")
    ds = Dataset.open(data_dir)
    tokenizer = ds.tokenizer
    model_fields = dict(run.model)
    init_weights = None
    if init_from is not None:
        from folio.hf import pretrained_for_training

        model_config, init_weights = pretrained_for_training(
            init_from, model_fields, ds.vocab_size, data_dir
        )
        run = dataclasses.replace(run, model_type=model_config.model_type)
    else:
        model_fields.setdefault("vocab_size", ds.vocab_size)
        if model_fields["vocab_size"] != ds.vocab_size:
            raise FolioError(
                f"model vocab_size {model_fields['vocab_size']} does not match the dataset's {ds.vocab_size}"
            )
        model_config = model_config_from_dict(run.model_type, model_fields)
    block_size = model_config.block_size
    ds.check_block_size(block_size)

    device = pick_device(tc.device)
    # Under torchrun: join the group, one GPU per process; only rank 0 logs and writes.
    denv = distributed.init(device.type)
    device = distributed.device_for(device, denv)
    main = denv.is_main
    if not main:
        log, progress = (lambda *a, **k: None), False
    if main and not resume:
        check_fresh_run_dir(out_dir, restart)  # before anything slow: nothing is touched yet
    if tc.fsdp and not denv.enabled:
        raise FolioError(
            "--fsdp shards the model across processes: launch with torchrun --nproc-per-node 2 or more"
        )
    if tc.fsdp and tc.optimizer == "muon":
        raise FolioError(
            "--fsdp shards each matrix, and Muon needs whole matrices: use DDP or AdamW"
        )
    if tc.fsdp and resume:
        raise FolioError("--fsdp checkpoints hold weights only: --resume needs a DDP or single run")
    dtype = resolve_dtype(tc.dtype, device)
    # Refuse a config that cannot fit before allocating anything (force=True: try anyway).
    check_training_memory(model_config, tc, device, force=force)
    if device.type == "cpu":
        torch.set_num_threads(tc.threads or max(1, physical_cores() // denv.local_world_size))
    random.seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    torch.manual_seed(tc.seed)
    data_gen = torch.Generator().manual_seed(tc.seed + denv.rank)  # rank 0: the single stream

    model = build_model(model_config).to(device)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    if denv.rank:
        torch.manual_seed(tc.seed + denv.rank)  # the same init everywhere, its own dropout
    if tc.fsdp:
        distributed.shard_model(model)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    optimizer = make_optimizer_for(model, tc, device.type)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    step, best_val, tokens_seen, evals_since_best = 0, math.inf, 0, 0
    if resume:
        if not (out_dir / "latest.json").exists():
            raise FolioError(
                f"{out_dir}: nothing to resume (no latest.json); drop --resume to start fresh"
            )
        ck = load_checkpoint(out_dir, "latest")
        if ck.model_config != model_config:
            raise FolioError(
                f"{ck.path}: the checkpoint's model config differs from this run's; resume with the same preset"
            )
        if ck.tokenizer.to_dict() != tokenizer.to_dict():
            raise FolioError(
                f"{ck.path}: the checkpoint's tokenizer does not match the dataset {data_dir}"
            )
        model.load_state_dict(ck.model.state_dict())
        opt_state, rng = ck.trainer_state()
        load_optimizer_state(optimizer, opt_state, ck.path)
        try:
            step = int(ck.state["step"])
            best_val = float(ck.state.get("best_val_loss") or math.inf)
            evals_since_best = int(ck.state.get("evals_since_best", 0))
        except (KeyError, TypeError, ValueError):
            raise FolioError(f"{ck.path / 'state.json'}: training state is malformed") from None
        tokens_seen = int(ck.state.get("tokens_seen", 0))
        distributed.restore_rank_rng(rng, data_gen, tc.seed, step, denv.rank)
        if "rng.cuda" in rng and device.type == "cuda" and main:
            torch.cuda.set_rng_state(rng["rng.cuda"], device)
        _restore_py_np_rng(ck.state)
        log(f"resuming from {ck.path} at step {step}")
    elif main:
        if restart and (aside := move_run_aside(out_dir)) is not None:
            log(f"moved the old run to {aside}")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FolioError(f"cannot create run directory {out_dir}: {e.strerror or e}") from None
    if main:
        atomic_write_json(
            out_dir / "run.json",
            {
                **run.to_dict(),
                "model": model_config.to_dict(),
                "data": str(data_dir),
                "init_from": init_from,
            },
        )
    metrics = (
        MetricsLog(out_dir / "metrics.jsonl", step if resume else None) if main else NoMetrics()
    )

    train_data, val_data = ds.tokens("train"), ds.tokens("val")
    tokens_per_step = tc.batch_size * tc.grad_accum * block_size * denv.world_size
    ac = lambda: autocast(device, dtype)  # noqa: E731
    example = tuple(
        t.to(device)
        for t in get_batch(train_data, tc.batch_size, block_size, torch.Generator().manual_seed(0))
    )
    ddp = None
    if denv.enabled and not tc.fsdp:  # after the weights are final: DDP broadcasts rank 0's
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            **distributed.no_buffer_sync_kwargs(),  # buffers (the causal mask) never change
        )
    fwd = _maybe_compile(ddp or model, tc.compile, example, log)
    flops_tok = flops_per_token(
        n_params,
        getattr(model_config, "n_layer", 0),
        getattr(model_config, "n_embd", 0),
        block_size,
    )
    peak = None

    if denv.enabled:
        log(
            f"{denv.world_size} processes ({'FSDP' if tc.fsdp else 'DDP'}), "
            f"global batch {tc.batch_size} x {tc.grad_accum} x {denv.world_size} sequences"
        )
    log(
        f"{run.model_type} model, {n_params / 1e6:.2f}M parameters | device {device}, "
        f"{'fp32' if dtype == torch.float32 else str(dtype).split('.')[-1] + ' autocast'}, "
        f"{torch.get_num_threads() if device.type == 'cpu' else ''} threads | {tokens_per_step} tokens/step"
    )

    def evaluate() -> dict[str, float]:
        # Every rank evaluates the same fixed batches on the unwrapped model (no DDP
        # collectives to deadlock); rank 0's numbers decide best/patience for all.
        losses = estimate_loss(
            model if denv.enabled else fwd,
            {"train": train_data, "val": val_data},
            tc.batch_size,
            block_size,
            tc.eval_iters,
            tc.seed + 1,
            device,
            ac,
        )
        if denv.enabled:
            values = distributed.broadcast_floats(list(losses.values()), device)
            losses = dict(zip(losses, values, strict=True))
        return losses

    history: list[dict[str, Any]] = []
    last_eval: dict[str, float] = {}
    stop_flag = _StopFlag()
    old_handler = signal.signal(signal.SIGINT, stop_flag) if _main_thread() else None
    stopped = "max_iters"
    t_start = time.perf_counter()
    train_time = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=tc.max_iters,
            initial=step,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def do_eval_and_checkpoint(final: bool) -> None:
        nonlocal best_val, evals_since_best, last_eval
        losses = evaluate()
        last_eval = losses
        # The step-0 estimate is only the curve's starting point: it has no
        # checkpoint, so it must not become the "best" that best.json points to.
        improved = step > 0 and losses["val"] < best_val
        if improved:
            best_val, evals_since_best = losses["val"], 0
        elif step > 0:
            evals_since_best += 1
        row = {
            "step": step,
            "tokens": tokens_seen,
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "eval": True,
            "time": time.perf_counter() - t_start,
        }
        history.append(row)
        metrics.write(row)
        msg = f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
        (bar.write if bar else log)(msg)
        if tc.save_checkpoints and step > 0:
            state = {
                "step": step,
                "tokens_seen": tokens_seen,
                "val_loss": losses["val"],
                "train_loss": losses["train"],
                "best_val_loss": best_val,
                "evals_since_best": evals_since_best,
                **_py_np_rng(),
                "world_size": denv.world_size,
            }
            # Collectives first (every rank), then rank 0 writes.
            rng_tensors = {
                **_rng_tensors(data_gen, device),
                **distributed.rank_rng_tensors(data_gen),
            }
            weights = _FullWeights(distributed.full_state_dict(model)) if tc.fsdp else model
            if main:
                save_checkpoint(
                    out_dir,
                    weights,
                    model_config,
                    tokenizer,
                    state,
                    optimizer=None if tc.fsdp else optimizer,
                    rng_tensors=rng_tensors,
                    best=improved,
                )
        if main:
            plot_losses(out_dir, metrics.rows)

    try:
        if tc.eval_at_start and step == 0:
            do_eval_and_checkpoint(final=False)
        model.train()
        while step < tc.max_iters:
            t0 = time.perf_counter()
            lr = learning_rate(
                step,
                schedule=tc.lr_schedule,
                max_lr=tc.learning_rate,
                min_lr=tc.min_lr,
                warmup_iters=tc.warmup_iters,
                max_iters=tc.max_iters,
                decay_fraction=tc.decay_fraction,
            )
            for group in optimizer.param_groups:  # Muon's matrices have their own peak rate
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum = 0.0
            for micro in range(tc.grad_accum):
                x, y = get_batch(train_data, tc.batch_size, block_size, data_gen)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                # Ranks reduce gradients only after the last micro-batch.
                with distributed.grad_sync(ddp or model, micro == tc.grad_accum - 1):
                    with ac():
                        _, loss = fwd(x, y)
                    loss = loss / tc.grad_accum
                    (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.detach().float().item()
            if denv.enabled:  # the global batch's loss, the same on every rank
                loss_sum = distributed.all_reduce_sum([loss_sum], device)[0] / denv.world_size
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = distributed.to_float(
                torch.nn.utils.clip_grad_norm_(
                    model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf
                )
            )
            if not math.isfinite(loss_sum) or (not math.isfinite(grad_norm) and scaler is None):
                if main and not tc.fsdp:
                    nan_snapshot(out_dir, model, model_config, tokenizer, step, x, y)
                what = "loss" if not math.isfinite(loss_sum) else "gradient norm"
                raise FolioError(
                    f"step {step}: the {what} became {loss_sum if what == 'loss' else grad_norm} "
                    f"(likely causes: learning rate {lr:g} too high, float16 overflow, or bad data); "
                    f"a diagnostic snapshot is in {out_dir / f'nan-step-{step}'}"
                )
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            dt = time.perf_counter() - t0
            train_time += dt
            tok_s = tokens_per_step / dt
            if step % tc.log_interval == 0 or step == tc.max_iters:
                if peak is None and flops_tok:
                    peak = peak_flops(device, dtype)
                mfu = flops_tok * tok_s / (peak * denv.world_size) if peak else None
                row = {
                    "step": step,
                    "tokens": tokens_seen,
                    "loss": loss_sum,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tok_s,
                    "mfu": mfu,
                    "time": time.perf_counter() - t_start,
                }
                metrics.write(row)
            if bar:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", refresh=False
                )
            elapsed = time.perf_counter() - t_start
            out_of_time = tc.max_time > 0 and elapsed >= tc.max_time
            if denv.enabled:  # stop together: any rank's clock or Ctrl-C stops every rank
                flags = distributed.all_reduce_sum(
                    [float(out_of_time), float(stop_flag.requested)], device
                )
                out_of_time, stop_flag.requested = flags[0] > 0, flags[1] > 0
            if (
                step % tc.eval_interval == 0
                or step == tc.max_iters
                or out_of_time
                or stop_flag.requested
            ):
                do_eval_and_checkpoint(final=step == tc.max_iters)
                if tc.patience and evals_since_best >= tc.patience:
                    stopped = "patience"
                    log(
                        f"early stop: val loss has not improved for {tc.patience} evals (best {best_val:.4f})"
                    )
                    break
            if out_of_time:
                stopped = "max_time"
                log(f"time budget of {tc.max_time:g} s reached at step {step}")
                break
            if stop_flag.requested:
                stopped = "interrupted"
                log(f"interrupted: checkpoint saved at step {step}; continue with --resume")
                break
    finally:
        if bar:
            bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    seconds = time.perf_counter() - t_start
    distributed.teardown()
    return TrainResult(
        run_dir=out_dir,
        step=step,
        train_loss=last_eval.get("train"),
        val_loss=last_eval.get("val"),
        best_val_loss=best_val if math.isfinite(best_val) else None,
        seconds=seconds,
        tokens_per_s=(tokens_seen / train_time) if train_time else 0.0,
        n_params=n_params,
        stopped=stopped,
        history=history,
    )


class _FullWeights(nn.Module):
    """A sharded model's gathered weights, in the shape save_checkpoint reads."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.weights = weights

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return dict(self.weights)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
