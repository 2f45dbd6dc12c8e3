"""Training configuration, presets and command-line overrides.

A preset is a small TOML file in folio/configs/ with a [model] table (its
`type` is "bigram" or "gpt", the rest are that model's config fields) and a
[train] table (TrainConfig fields). `--set section.field=value` overrides any
field; values are parsed as TOML (`3e-4`, `true`, `"cosine"`), so types stay
honest. No config file is ever executed.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from folio.errors import FolioError
from folio.train.device import DTYPES
from folio.train.optim import OPTIMIZERS, SCHEDULES

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TrainConfig:
    """How a model is trained. Separate from the model's own config."""

    batch_size: int = 32
    """Sequences per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the loss of each is divided by this."""
    max_iters: int = 3000
    """Optimizer steps in the run."""
    learning_rate: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """Floor of the cosine and wsd schedules."""
    lr_schedule: str = "constant"
    """'constant', 'cosine' (warmup then cosine to min_lr) or 'wsd' (warmup-stable-decay)."""
    warmup_iters: int = 0
    """Steps of linear warmup from 0 to learning_rate."""
    decay_fraction: float = 0.2
    """wsd only: the final fraction of the run spent decaying to min_lr."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.99
    """AdamW second-moment decay."""
    optimizer: str = "adamw"
    """'adamw', or 'muon' (Muon on the matrices inside the blocks, AdamW on the rest)."""
    muon_lr: float = 0.02
    """muon only: the peak learning rate of the Muon matrices (learning_rate is AdamW's)."""
    muon_momentum: float = 0.95
    """muon only: Muon's (Nesterov) momentum."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping; the norm is logged anyway)."""
    eval_interval: int = 500
    """Estimate train and val loss (and checkpoint) every this many steps, and at the end."""
    eval_iters: int = 200
    """Batches per split in each estimate; the same fixed batches every time."""
    eval_at_start: bool = True
    """Also estimate the loss before the first step (the curve's starting point)."""
    log_interval: int = 10
    """Write a metrics line every this many steps."""
    seed: int = 1337
    """Seed for initialisation, batches and dropout."""
    dtype: str = "auto"
    """'auto', 'float32', 'bfloat16' or 'float16' (autocast; master weights stay fp32)."""
    device: str = "auto"
    """'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    compile: bool = False
    """Wrap the model with torch.compile (falls back to eager with a warning on failure)."""
    threads: int = 0
    """CPU threads for PyTorch (0 = the number of physical cores)."""
    max_time: float = 0.0
    """Stop (with a final eval and checkpoint) after this many seconds of training; 0 = no limit."""
    patience: int = 0
    """Stop after this many evals without a new best val loss; 0 = never."""
    save_checkpoints: bool = True
    """Write checkpoints (latest at every eval, best when val improves)."""
    fsdp: bool = False
    """Under torchrun: shard weights, gradients and optimizer state across ranks (fully_shard)
    instead of replicating them (DDP). Checkpoints then hold weights only."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise FolioError(f"train config: {f.name} must be an integer, got {v!r}")
            if f.type == "float":
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise FolioError(f"train config: {f.name} must be a finite number, got {v!r}")
                setattr(self, f.name, float(v))
            if f.type == "bool" and not isinstance(v, bool):
                raise FolioError(f"train config: {f.name} must be true or false, got {v!r}")
            if f.type == "str" and not isinstance(v, str):
                raise FolioError(f"train config: {f.name} must be a string, got {v!r}")
        if not 0 <= self.seed < 2**63:  # what torch.manual_seed accepts (with seed + 1 for evals)
            raise FolioError(f"train config: seed must be in [0, 2**63), got {self.seed}")
        if self.threads > 1024:  # torch.set_num_threads overflows on huge values
            raise FolioError(f"train config: threads must be at most 1024, got {self.threads}")
        for name in ("batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) <= 0:
                raise FolioError(
                    f"train config: {name} must be positive, got {getattr(self, name)}"
                )
        for name in ("max_iters", "warmup_iters", "threads", "patience"):
            if getattr(self, name) < 0:
                raise FolioError(
                    f"train config: {name} must not be negative, got {getattr(self, name)}"
                )
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "max_time", "muon_lr"):
            if getattr(self, name) < 0:
                raise FolioError(
                    f"train config: {name} must not be negative, got {getattr(self, name)}"
                )
        if self.learning_rate == 0:
            raise FolioError("train config: learning_rate must be positive")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise FolioError(
                    f"train config: {name} must be in [0, 1), got {getattr(self, name)}"
                )
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise FolioError(
                f"train config: decay_fraction must be in [0, 1], got {self.decay_fraction}"
            )
        if not 0.0 <= self.muon_momentum < 1.0:
            raise FolioError(
                f"train config: muon_momentum must be in [0, 1), got {self.muon_momentum}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise FolioError(
                f"train config: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.lr_schedule not in SCHEDULES:
            raise FolioError(
                f"train config: lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.dtype not in DTYPES:
            raise FolioError(f"train config: dtype must be one of {DTYPES}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunConfig:
    """Everything a training run needs: the model (type and fields) and the training config."""

    model_type: str
    model: dict[str, Any]
    train: TrainConfig
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "model_type": self.model_type,
            "model": self.model,
            "train": self.train.to_dict(),
        }


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset_dict(name_or_path: str) -> dict[str, Any]:
    """A preset by name (folio/configs/NAME.toml) or by path to a TOML file."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise FolioError(
                f"unknown preset {name_or_path!r} (available: {', '.join(list_presets())})"
            )
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise FolioError(f"{path}: invalid preset TOML ({e})") from None


def parse_override(item: str) -> tuple[str, Any]:
    """'train.learning_rate=3e-4' -> ('train.learning_rate', 0.0003). Strings need no quotes."""
    if "=" not in item:
        raise FolioError(f"--set expects key=value, got {item!r}")
    key, raw = (s.strip() for s in item.split("=", 1))
    if not key:
        raise FolioError(f"--set expects key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as cosine
    return key, value


def build_run_config(preset: str, overrides: list[tuple[str, Any]]) -> RunConfig:
    """Load a preset, apply overrides, validate the training part (the model part is
    validated once the vocabulary size is known)."""
    d = load_preset_dict(preset)
    model = dict(d.get("model", {}))
    train = dict(d.get("train", {}))
    unknown_sections = set(d) - {"model", "train", "description"}
    if unknown_sections:
        raise FolioError(
            f"preset {preset!r}: unknown section(s) {', '.join(sorted(unknown_sections))}"
        )
    train_fields = {f.name for f in fields(TrainConfig)}
    for key, value in overrides:
        section, _, name = key.rpartition(".")
        if not section:
            section = "train" if name in train_fields else "model"
        if section == "train":
            if name not in train_fields:
                raise FolioError(f"unknown training setting {name!r}")
            train[name] = value
        elif section == "model":
            model[name] = value
        else:
            raise FolioError(f"--set {key}: section must be 'model' or 'train'")
    unknown = set(train) - train_fields
    if unknown:
        raise FolioError(
            f"preset {preset!r}: unknown training setting(s) {', '.join(sorted(unknown))}"
        )
    model_type = model.pop("type", "gpt")
    return RunConfig(model_type=model_type, model=model, train=TrainConfig(**train), preset=preset)
