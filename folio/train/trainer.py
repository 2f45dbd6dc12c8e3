"""The one training loop: an objective's batches -> loss -> gradients -> optimizer step,
with everything a long run needs to be trusted.

Every stage (pretraining, SFT, a reward model, DPO, RL) is a `Trainer` with
its own objective (folio/train/objectives.py); none copies the loop. Reading
order: `TrainState` (what resume restores), then `Trainer.__init__` (setup),
`train_step`, `evaluate`, `save`, and `fit`, the loop itself.

One optimizer step: `grad_accum` micro-batches, each loss divided by
grad_accum so the summed gradient equals that of one big batch; clip the
global norm; set the scheduled learning rate; step. Every `eval_interval`
steps: estimate each split's loss on fixed batches, write metrics and the
loss plot, checkpoint (latest; best when val improved). Resume restores
weights, optimizer, the data sampler's and dropout's random states and the
counters, so a resumed run continues exactly as if never stopped. Ctrl-C and
SIGTERM stop at the next step boundary with a checkpoint.

The file runs a little past 500 lines: the loop is one class, read top to
bottom (set up, step, evaluate, save, stop); the run directory and the reports
are already their own modules (rundir.py, report.py).
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from folio.checkpoint import (
    RunLock,
    clean_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from folio.config.run import RunConfig
from folio.errors import FolioError
from folio.eval.loss import estimate_objective
from folio.fsutil import atomic_write_json
from folio.memory import check_training_memory
from folio.models import build_model
from folio.runtime import (
    autocast,
    device_for,
    flops_per_token,
    init_distributed,
    keep_freed_memory,
    pick_device,
    resolve_dtype,
    set_threads,
    teardown_distributed,
)
from folio.tokenizers import check_same_tokenizer
from folio.train import distributed
from folio.train.objectives import Batch, Objective
from folio.train.optim import (
    learning_rate,
    load_optimizer_state,
    make_optimizer_for,
    optimizer_state,
)
from folio.train.report import MFU, progress_bar, setup_line, show_step, stop_message
from folio.train.run_log import MetricsLog, NoMetrics, nan_snapshot, plot_losses
from folio.train.rundir import Pins, check_resume_settings, check_run_dir, claim_run_dir
from folio.train.state import StopFlag, TrainState, seed_everything
from folio.train.wrap import maybe_compile, wrap_ddp


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
    """Tokens trained in this session over this session's training time."""
    n_params: int
    stopped: str
    """Why the run ended: 'max_iters', 'max_time', 'patience', 'target', 'interrupted' or 'terminated'."""
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains `run.model` on `objective`, writing the run directory `out_dir`.

    `run` must be resolved (its vocab_size set). `init_weights` start the model
    from pretrained weights; `meta` is recorded in run.json beside the config
    (the dataset, where the weights came from); `init` (folio/train/init.py:
    the base a fine-tune started from) is recorded in every checkpoint's
    state.json too. A fresh run refuses a non-empty
    `out_dir` unless `restart`, which moves it aside; `resume` continues the
    run's latest checkpoint.
    """

    def __init__(
        self,
        run: RunConfig,
        objective: Objective,
        out_dir: str | Path,
        tokenizer: Any,
        *,
        init_weights: dict[str, torch.Tensor] | None = None,
        meta: dict[str, Any] | None = None,
        init: dict[str, Any] | None = None,
        resume: bool = False,
        restart: bool = False,
        force: bool = False,
        progress: bool = True,
        log=print,
        pins: Pins | None = None,
    ) -> None:
        tc = self.tc = run.train
        self.run, self.objective, self.tokenizer = run, objective, tokenizer
        self.out_dir, self.resumed = Path(out_dir), resume
        self.init = init
        self._check_flags(resume, restart)
        # Runtime: device, the torchrun group (one GPU per process), precision.
        self.device = pick_device(tc.device)
        self.denv = init_distributed(self.device.type)
        self.device = device_for(self.device, self.denv)
        self.main = self.denv.is_main
        self.log = log if self.main else (lambda *a, **k: None)
        self.progress = progress and self.main
        self.stage = str((meta or {}).get("stage", "pretrain"))
        if self.main:  # before anything slow: a fresh directory, or a run of this stage
            check_run_dir(self.out_dir, self.stage, resume=resume, restart=restart)
            if resume:
                check_resume_settings(self.out_dir, tc.to_dict())
        self.dtype = resolve_dtype(tc.dtype, self.device)
        # Refuse a config that cannot fit before allocating anything (force: try anyway).
        check_training_memory(run.model, tc, self.device, force=force)
        if self.device.type == "cpu":
            set_threads(tc.threads, self.denv.local_world_size)
            keep_freed_memory()  # reuse each step's freed buffers: no page faults (runtime.py)
        # Seeds, then the model: its initialisation draws from the global generator.
        self.state = TrainState(seed_everything(tc.seed, self.denv.rank))
        self.model = self._build_model(init_weights)
        objective.bind(self.model)  # an on-policy stage samples its batches from the model
        self.optimizer = make_optimizer_for(self.model, tc, self.device.type)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.lock = self._claim_run_dir(restart)
        try:
            if resume:
                self._resume()
            meta = dict(meta or {})
            if pins is not None and self.main:  # frozen copies of the models it compares against
                meta["pinned"] = pins.snapshot()
            self._write_run_json(meta)
            self.metrics = (
                MetricsLog(self.out_dir / "metrics.jsonl", self.state.step if resume else None)
                if self.main
                else NoMetrics()
            )
            self.ddp, self.fwd = self._wrap()
        except BaseException:
            self._release()
            raise
        self.history: list[dict[str, Any]] = []
        self.last_eval: dict[str, float] = {}
        self.stop = StopFlag()
        self.train_time = 0.0
        self.session_tokens = 0
        self.t_start, self.elapsed_before = time.perf_counter(), self.state.elapsed  # fit() resets
        self.tokens_per_step = objective.tokens_per_batch * tc.grad_accum * self.denv.world_size
        cfg = run.model
        self.mfu = MFU(
            flops_per_token(
                self.n_params, getattr(cfg, "n_layer", 0), getattr(cfg, "n_embd", 0), cfg.block_size
            ),
            self.device,
            self.dtype,
            self.denv.world_size,
        )
        self._log_setup()

    # ------------------------------------------------------------------ setup

    def _check_flags(self, resume: bool, restart: bool) -> None:
        tc = self.tc
        if resume and restart:
            raise FolioError("--resume continues a run and --restart starts it over: choose one")
        if tc.fsdp and tc.optimizer == "muon":
            raise FolioError(
                "--fsdp shards each matrix, and Muon needs whole matrices: use DDP or AdamW"
            )
        if tc.fsdp and resume:
            raise FolioError(
                "--fsdp checkpoints hold weights only: --resume needs a DDP or single run"
            )

    def _build_model(self, init_weights: dict[str, torch.Tensor] | None) -> nn.Module:
        model = build_model(self.run.model).to(self.device)
        if init_weights is not None:
            model.load_state_dict(init_weights)
        if self.tc.fsdp and not self.denv.enabled:
            raise FolioError(
                "--fsdp shards the model across processes: launch with torchrun "
                "--nproc-per-node 2 or more"
            )
        if self.denv.rank:
            torch.manual_seed(
                self.tc.seed + self.denv.rank
            )  # the same init everywhere, its own dropout
        if self.tc.fsdp:
            distributed.shard_model(model)
        self.n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        return model

    def _claim_run_dir(self, restart: bool) -> RunLock | None:
        """Rank 0 locks the run directory (moving an old run aside first with --restart)."""
        return claim_run_dir(self.out_dir, self.resumed, restart, self.log) if self.main else None

    def _resume(self) -> None:
        ck = load_checkpoint(self.out_dir, "latest")
        if ck.model_config != self.run.model:
            raise FolioError(
                f"{ck.path}: the checkpoint's model config differs from this run's; resume with the same preset"
            )
        check_same_tokenizer(
            ck.tokenizer,
            self.tokenizer,
            f"{ck.path}: the checkpoint's tokenizer does not match the data",
        )
        self.model.load_state_dict(ck.model.state_dict())
        opt_state, rng = ck.trainer_state()
        load_optimizer_state(self.optimizer, opt_state, ck.path)
        self.state.load_state_dict(
            ck.state, rng, seed=self.tc.seed, rank=self.denv.rank, device=self.device, where=ck.path
        )
        prefix = "objective."  # e.g. RL's rollout being learned from
        self.objective.load_state_dict(
            {k[len(prefix) :]: v for k, v in rng.items() if k.startswith(prefix)}
        )
        val = ck.state.get("val_loss")
        shown = f" (val loss {val:.4f})" if isinstance(val, float) else ""
        if self.state.step >= self.tc.max_iters:
            raise FolioError(
                f"{self.out_dir}: the run is already complete at step {self.state.step}{shown}; "
                f"to train further, resume with a larger --max-iters"
            )
        if self.tc.max_time > 0 and self.state.elapsed >= self.tc.max_time:
            raise FolioError(
                f"{self.out_dir}: the run used its time budget of {self.tc.max_time:g} s (it "
                f"counts across resumes) and stopped at step {self.state.step}{shown}; to train "
                f"further, resume with a larger --max-time"
            )
        self.log(f"resuming from {ck.path} at step {self.state.step}")

    def _write_run_json(self, meta: dict[str, Any]) -> None:
        if self.main:
            atomic_write_json(self.out_dir / "run.json", {**self.run.to_dict(), **meta})

    def _wrap(self) -> tuple[nn.Module | None, nn.Module]:
        """(the DDP wrapper or None, the module the loss runs through: maybe compiled)."""
        ddp = wrap_ddp(self.model, self.device) if self.denv.enabled and not self.tc.fsdp else None
        example = None
        if self.tc.compile:  # drawn like an eval batch: the training stream stays untouched
            draw = self.objective.eval_batch
            example = self._to_device(draw("train", torch.Generator().manual_seed(0)))
        fwd = maybe_compile(ddp or self.model, self.tc.compile, self.objective, example, self.log)
        return ddp, fwd

    def _log_setup(self) -> None:
        tc = self.tc
        if self.denv.enabled:
            self.log(
                f"{self.denv.world_size} processes ({'FSDP' if tc.fsdp else 'DDP'}), "
                f"global batch {tc.batch_size} x {tc.grad_accum} x {self.denv.world_size} sequences"
            )
        self.log(
            setup_line(
                self.run.model_type, self.n_params, self.device, self.dtype, self.tokens_per_step
            )
        )

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------ the parts

    def _to_device(self, batch: Batch) -> Batch:
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def autocast(self):
        return autocast(self.device, self.dtype)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over grad_accum micro-batches; returns what the metrics log."""
        tc, st = self.tc, self.state
        t0 = time.perf_counter()
        by_time = tc.schedule_clock == "time"
        lr = learning_rate(
            st.step, schedule=tc.lr_schedule, max_lr=tc.learning_rate, min_lr=tc.min_lr,
            warmup_iters=tc.warmup_iters, max_iters=tc.max_iters, decay_fraction=tc.decay_fraction,
            time_fraction=self.clock() / tc.max_time if by_time else None,
        )  # fmt: skip
        for group in self.optimizer.param_groups:  # Muon's matrices have their own peak rate
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss_sum = 0.0
        for micro in range(tc.grad_accum):
            batch = self._to_device(self.objective.batch("train", st.data_gen))
            # Ranks reduce gradients only after the last micro-batch: one all-reduce a step.
            with distributed.grad_sync(self.ddp or self.model, micro == tc.grad_accum - 1):
                with self.autocast():
                    loss = self.objective.loss(self.fwd, batch)
                loss = loss / tc.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.detach().float().item()
        if self.denv.enabled:  # the global batch's loss, the same on every rank
            loss_sum = distributed.all_reduce_sum([loss_sum], self.device)[0] / self.denv.world_size
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = tc.grad_clip if tc.grad_clip > 0 else math.inf
        grad_norm = distributed.to_float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        )
        self._check_finite(loss_sum, grad_norm, lr, batch)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.tokens_seen += self.tokens_per_step
        self.session_tokens += self.tokens_per_step
        dt = time.perf_counter() - t0
        self.train_time += dt
        return {
            "loss": loss_sum,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": self.tokens_per_step / dt,
        }

    def _check_finite(self, loss: float, grad_norm: float, lr: float, batch: Batch) -> None:
        """The NaN guard: stop with a diagnostic snapshot instead of training on garbage."""
        if math.isfinite(loss) and (math.isfinite(grad_norm) or self.scaler is not None):
            return  # (with a gradient scaler an inf norm only means: skip this step)
        step = self.state.step
        if self.main and not self.tc.fsdp and len(batch) >= 2:
            nan_snapshot(self.out_dir, self.model, self.run.model, self.tokenizer, step, *batch[:2])
        what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
        raise FolioError(
            f"step {step}: the {what} became {value} (likely causes: learning rate {lr:g} too "
            f"high, float16 overflow, or bad data); a diagnostic snapshot is in "
            f"{self.out_dir / f'nan-step-{step}'}"
        )

    def evaluate(self) -> dict[str, float]:
        """Each split's mean loss over eval_iters fixed batches (the same batches every time)."""
        # Every rank evaluates the same batches on the unwrapped model (no DDP collectives
        # to deadlock); rank 0's numbers decide best and patience for all.
        model = self.model if self.denv.enabled else self.fwd
        losses = estimate_objective(
            self.model,
            lambda batch: self.objective.loss(model, self._to_device(batch)),
            self.objective.eval_batch,
            self.objective.splits,
            self.tc.eval_iters,
            self.tc.seed + 1,
            self.autocast,
        )
        # a stage's own figures (held-out pass@1, reward, KL, ...), in eval mode
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self.autocast():
            losses.update(self.objective.metrics(self.model))
        self.model.train(was_training)
        if self.denv.enabled:
            values = distributed.broadcast_floats(list(losses.values()), self.device)
            losses = dict(zip(losses, values, strict=True))
        return losses

    def save(self, losses: dict[str, float], best: bool) -> None:
        """Checkpoint this step (latest; best too when `best`). Collectives first, then rank 0 writes."""
        self.state.elapsed = self.clock()
        plain, rng = self.state.state_dict(self.device)
        rng.update({f"objective.{k}": v for k, v in self.objective.state_dict().items()})
        weights = (
            clean_state_dict(distributed.full_state_dict(self.model))
            if self.tc.fsdp
            else (clean_state_dict(self.model) if self.main else {})
        )
        if not self.main:
            return
        state = {
            **plain,
            "val_loss": losses["val"],
            "train_loss": losses["train"],
            "world_size": self.denv.world_size,
            **({"init": self.init} if self.init else {}),
        }
        save_checkpoint(
            self.out_dir, weights, self.run.model, self.tokenizer, state,
            optimizer_state=None if self.tc.fsdp else optimizer_state(self.optimizer),
            rng_tensors=rng, best=best,
        )  # fmt: skip

    def evaluate_and_save(self, bar) -> None:
        """Evaluate, log, checkpoint and plot: what every eval_interval steps brings."""
        st = self.state
        losses = self.last_eval = self.evaluate()
        # The step-0 estimate is only the curve's starting point: it has no
        # checkpoint, so it must not become the "best" that best.json points to.
        improved = st.step > 0 and losses["val"] < st.best_val
        if improved:
            st.best_val, st.evals_since_best = losses["val"], 0
        elif st.step > 0:
            st.evals_since_best += 1
        row = {
            "step": st.step,
            "tokens": st.tokens_seen,
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            **{k: v for k, v in losses.items() if k not in ("train", "val")},
            "eval": True,
            "time": time.perf_counter() - self.t_start,
        }
        self.history.append(row)
        self.metrics.write(row)
        msg = f"step {st.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
        msg += "".join(f", {k} {v:.4f}" for k, v in losses.items() if k not in ("train", "val"))
        (bar.write if bar is not None else self.log)(msg)
        if self.tc.save_checkpoints and st.step > 0:
            self.save(losses, improved)
        if self.main and self.tc.plot:
            plot_losses(self.out_dir, self.metrics.rows)

    def _log_step(self, stats: dict[str, float], bar) -> None:
        st, tc = self.state, self.tc
        if st.step % tc.log_interval == 0 or st.step == tc.max_iters:
            mfu = self.mfu.of(stats["tokens_per_s"])
            self.metrics.write(
                {"step": st.step, "tokens": st.tokens_seen, **stats, "mfu": mfu,
                 "time": time.perf_counter() - self.t_start}
            )  # fmt: skip
        if bar is not None:
            show_step(bar, stats)

    def clock(self) -> float:
        """Seconds of training so far, earlier sessions included (what max_time counts)."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def _stop_reason(self) -> str | None:
        """Why to stop after this step, agreed by every rank: the clock or a signal."""
        out_of_time = self.tc.max_time > 0 and self.clock() >= self.tc.max_time
        signum = float(self.stop.signum or 0)
        if self.denv.enabled:  # any rank's clock or signal stops every rank
            flags = distributed.all_reduce_sum([float(out_of_time), signum], self.device)
            out_of_time, signum = flags[0] > 0, flags[1]
        if out_of_time:
            return "max_time"
        if signum:
            return "terminated" if signum == signal.SIGTERM else "interrupted"
        return None

    # --------------------------------------------------------------- the loop

    def fit(self) -> TrainResult:
        """Train until max_iters, the time budget, patience, the target val loss or a stop signal."""
        tc, st = self.tc, self.state
        self.t_start, self.elapsed_before = time.perf_counter(), st.elapsed
        stopped = "max_iters"
        try:
            # a run the clock ends has no step count to show a percentage of
            total = None if tc.schedule_clock == "time" else tc.max_iters
            with self.stop.installed(), progress_bar(self.progress, total, st.step) as bar:
                # The curve's starting point: an estimate before the first step.
                if tc.eval_at_start and st.step == 0:
                    self.evaluate_and_save(bar)
                self.model.train()
                while st.step < tc.max_iters:
                    # One optimizer step, then its metrics.
                    self._log_step(self.train_step(), bar)
                    # Decide (all ranks together) whether the clock or a signal stops us here.
                    reason = self._stop_reason()
                    # Evaluate and checkpoint on schedule, at the end, and before any stop.
                    if st.step % tc.eval_interval == 0 or st.step == tc.max_iters or reason:
                        self.evaluate_and_save(bar)
                        if tc.patience and st.evals_since_best >= tc.patience:
                            stopped = "patience"
                            self.log(
                                f"early stop: val loss has not improved for {tc.patience} evals "
                                f"(best {st.best_val:.4f})"
                            )
                            break
                        if tc.target_val_loss and self.last_eval["val"] <= tc.target_val_loss:
                            stopped = "target"
                            self.log(
                                f"target reached: val loss {self.last_eval['val']:.4f} <= "
                                f"{tc.target_val_loss:g} at step {st.step}"
                            )
                            break
                    if reason:
                        stopped = reason
                        self.log(stop_message(reason, st.step, tc.max_time))
                        break
        finally:
            self._release()
        seconds = time.perf_counter() - self.t_start
        teardown_distributed()
        return TrainResult(
            run_dir=self.out_dir,
            step=st.step,
            train_loss=self.last_eval.get("train"),
            val_loss=self.last_eval.get("val"),
            best_val_loss=st.best_val if math.isfinite(st.best_val) else None,
            seconds=seconds,
            tokens_per_s=self.session_tokens / self.train_time if self.train_time else 0.0,
            n_params=self.n_params,
            stopped=stopped,
            history=self.history,
        )


def run_dir_meta(data_dir: str | Path, init_from: str | None) -> dict[str, Any]:
    """What run.json records beside the config: the absolute dataset path and the initial weights."""
    return {"stage": "pretrain", "data": os.path.abspath(data_dir), "init_from": init_from}
