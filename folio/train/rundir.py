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
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from folio.checkpoint import RunLock, check_fresh_run_dir, move_run_aside
from folio.errors import FolioError
from folio.fsutil import file_digest, read_json
from folio.train.init import RUN_PREFIX

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


RESUMABLE = frozenset({
    "max_iters", "max_time", "eval_interval", "eval_iters", "eval_at_start", "log_interval",
    "patience", "target_val_loss", "threads", "device", "plot", "save_checkpoints", "compile",
    "optimizer",
})  # fmt: skip
"""Training settings a resume may change: how long, how often to evaluate and where to run.
Everything else (batch, learning rate, schedule, seed, precision) is the run's. The optimizer
is checked against the checkpoint's own state instead (folio.train.optim), naming the one used."""


def check_resume_settings(out_dir: Path, train: dict[str, Any]) -> None:
    """A resume continues the run as recorded: refuse, in one line, a training setting that
    differs from run.json's (a flag left off takes the preset's default, not the run's)."""
    path = Path(out_dir) / "run.json"
    if not path.exists():
        return
    saved = read_json(path, "run config")
    recorded = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(recorded, dict):
        return
    changed = [
        (key, recorded[key], value)
        for key, value in train.items()
        if key not in RESUMABLE and key in recorded and recorded[key] != value
    ]
    if changed:
        key, was, now = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise FolioError(
            f"{out_dir}: --resume continues the run as recorded, but train.{key} was {was!r} "
            f"and would be {now!r}{more}; pass the recorded value, or start a new run"
        )


def check_same_settings(out_dir: Path, meta: dict[str, Any]) -> None:
    """A resumed run must keep what `meta` records: its models, prompts and RL settings.
    ("pinned" is `Pins`' to check: runs from before pins have none.)"""
    path = out_dir / "run.json"
    if not path.exists():
        return
    saved = read_json(path, "run config")
    for key in (k for k in meta if k != "pinned"):
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


class Pins:
    """The checkpoints a run starts from and compares against, pinned for the run's life.

    `run:DIR` names a run's latest checkpoint, which moves on (and whose older
    checkpoints are pruned) if DIR trains on. A fresh run keeps a frozen copy
    of each model it loaded in OUT/pinned/ROLE (hard links where the file
    system allows, so no extra space) and records under run.json's "pinned"
    the spec given, the checkpoint it came from and the SHA-256 of its
    weights. A resumed run loads each from that copy, never DIR's latest
    again, and refuses in one line a copy that is gone or whose weights
    changed: a frozen reference stays the one the run began with.
    """

    def __init__(self, out_dir: str | Path, resume: bool) -> None:
        self.out_dir = Path(out_dir)
        self.recorded: dict[str, dict[str, Any]] = {}
        if resume and (self.out_dir / "run.json").exists():
            saved = read_json(self.out_dir / "run.json", "run config")
            pinned = saved.get("pinned") if isinstance(saved, dict) else None
            self.recorded = pinned if isinstance(pinned, dict) else {}
        self.pinned: dict[str, dict[str, Any]] = {}

    def spec(self, role: str, given: str) -> str:
        """What to load for `role` ("init_from", "reference", "reward_model"): `given`, or on
        resume the checkpoint the run pinned (the same spec must be given again)."""
        check_not_inside(self.out_dir, given, role)
        pin = self.recorded.get(role)
        if not isinstance(pin, dict):
            return given
        if pin.get("spec") != given:
            raise FolioError(
                f"{self.out_dir}: the run started with {role} {pin.get('spec')!r}, not {given!r}; "
                f"resume it with the same flags"
            )
        return RUN_PREFIX + str(self.out_dir / PINNED / role)

    def pin(self, role: str, given: str, checkpoint: str | Path) -> dict[str, Any]:
        """Record (or, on resume, check) the checkpoint `role` was loaded from."""
        checkpoint = Path(checkpoint)
        weights = checkpoint / "model.safetensors"
        digest = file_digest(weights) if weights.exists() else None
        pin = self.recorded.get(role)
        if isinstance(pin, dict) and pin.get("sha256") != digest:
            raise FolioError(
                f"{checkpoint}: its weights changed since the run in {self.out_dir} pinned them "
                f"as its {role}; restore them, or start a new run"
            )
        if not isinstance(pin, dict):
            self.pinned[role] = {"spec": given, "checkpoint": str(checkpoint), "sha256": digest}
        else:  # resumed: the record stays as the run began
            self.pinned[role] = pin
        return self.pinned[role]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Freeze a copy of each pinned checkpoint in OUT/pinned (once the run owns OUT);
        the records for run.json."""
        for role, pin in self.pinned.items():
            target = self.out_dir / PINNED / role
            if role not in self.recorded:  # a fresh run: a copy a stopped start left is replaced
                shutil.rmtree(target, ignore_errors=True)
            if not target.exists():
                _link_tree(Path(pin["checkpoint"]), target)
        return self.pinned


PINNED = "pinned"
"""The folder of a run directory that holds its frozen copies of the models it compares against."""


def _link_tree(source: Path, target: Path) -> None:
    """A copy of the checkpoint directory `source` at `target`: hard links where possible,
    built under a temporary name and renamed, so a crash leaves no half copy."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for path in source.iterdir():
            if path.is_file():
                try:
                    os.link(path, tmp / path.name)
                except OSError:  # another file system, or links not allowed
                    shutil.copy2(path, tmp / path.name)
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FolioError(f"cannot keep a copy of {source} in {target}: {e.strerror or e}") from None


def check_not_inside(out_dir: Path, spec: str, role: str) -> None:
    """Refuse a model spec that points into the run directory being written: a restart would
    move it aside, and the run would compare against its own earlier weights."""
    if not spec.startswith(RUN_PREFIX):
        return
    source = Path(os.path.abspath(spec[len(RUN_PREFIX) :]))
    out = Path(os.path.abspath(out_dir))
    if source == out or out in source.parents:
        flag = "--" + role.replace("_", "-")
        raise FolioError(f"--out {out_dir} is where {flag} {spec} lives; give another --out")
