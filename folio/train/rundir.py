"""Which run a directory holds: a run belongs to the stage that made it.

Every training command (`folio train`, `sft`, `reward`, `dpo`, `rl`) writes a
run directory with a `run.json` naming its stage. Before anything slow (data,
models), a command checks the directory it was given:

- a fresh run needs an empty or missing directory, or `--restart`, which moves
  the old run aside rather than deleting it (`folio.checkpoint`);
- `--resume` needs a run of the same stage: `folio dpo --resume` on an SFT run
  would otherwise train DPO on the SFT weights and leave only DPO checkpoints.

Runs written before run.json named its stage are told apart by what they do
record: an RL run its `algo`, a pretraining run neither.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from folio.checkpoint import RunLock, check_fresh_run_dir, move_run_aside
from folio.errors import FolioError
from folio.fsutil import read_json

STAGES = ("pretrain", "sft", "reward", "dpo", "grpo", "ppo")
"""Every training stage, as run.json's "stage" names it."""

COMMANDS = {
    "pretrain": "folio train",
    "sft": "folio sft",
    "reward": "folio reward",
    "dpo": "folio dpo",
    "grpo": "folio rl --algo grpo",
    "ppo": "folio rl --algo ppo",
}
"""The command that makes (and resumes) each stage's runs."""


def stage_of(record: dict[str, Any]) -> str:
    """The stage a run.json records: its "stage", an RL run's "algo", else pretraining."""
    stage = record.get("stage") or record.get("algo") or "pretrain"
    return str(stage)


def recorded_stage(out_dir: Path) -> str | None:
    """The stage of the run in out_dir, or None when it holds no run.json."""
    path = out_dir / "run.json"
    if not path.exists():
        return None
    record = read_json(path, "run config")
    if not isinstance(record, dict):
        raise FolioError(f"{path}: not a run config (a JSON object expected)")
    return stage_of(record)


def check_run_dir(out_dir: str | Path, stage: str, *, resume: bool, restart: bool) -> None:
    """Refuse, in one line and before anything is loaded or written, a directory that this
    command must not train in: see the module docstring."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    out_dir = Path(out_dir)
    if resume and restart:
        raise FolioError("--resume continues a run and --restart starts it over: choose one")
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone owns the directory
        return
    if not resume:
        check_fresh_run_dir(out_dir, restart)
        return
    if not (out_dir / "latest.json").exists():
        raise FolioError(
            f"{out_dir}: nothing to resume (no latest.json); drop --resume to start fresh"
        )
    held = recorded_stage(out_dir)
    if held is not None and held != stage:
        raise FolioError(
            f"{out_dir}: holds a {held} run, not a {stage} run; resume it with "
            f"`{COMMANDS.get(held, held)} --resume`, or give {COMMANDS[stage]} another --out"
        )


def check_same_settings(out_dir: Path, meta: dict[str, Any]) -> None:
    """A resumed run must keep what `meta` records: its models, prompts and RL settings."""
    path = out_dir / "run.json"
    if not path.exists():
        return
    saved = read_json(path, "run config")
    for key in meta:
        if isinstance(saved, dict) and saved.get(key) != meta[key]:
            raise FolioError(
                f"{path}: the run was started with another {key} ({saved.get(key)!r}); "
                f"resume it with the same flags"
            )


def claim_run_dir(
    out_dir: Path, resumed: bool, restart: bool, log: Callable[[str], None]
) -> RunLock:
    """Create and lock `out_dir` for a trainer: a restart moves the old run aside first, and a
    fresh run checks again, under the lock, that no other trainer has just begun there."""
    if resumed:
        if not (out_dir / "latest.json").exists():
            raise FolioError(
                f"{out_dir}: nothing to resume (no latest.json); drop --resume to start fresh"
            )
    elif restart and (aside := move_run_aside(out_dir)) is not None:
        log(f"moved the old run to {aside}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FolioError(f"cannot create run directory {out_dir}: {e.strerror or e}") from None
    lock = RunLock(out_dir)
    if not resumed:
        try:
            check_fresh_run_dir(out_dir)
        except FolioError:
            lock.release()
            raise
    return lock
