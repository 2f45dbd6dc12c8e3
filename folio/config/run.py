"""The config tree of a run, presets, and the command-line flags made from it.

A run is `RunConfig(model, train)`: a typed model config (`GPTConfig` or
`BigramConfig`, from folio/models/config.py) and a `TrainConfig`. A preset is
a small TOML file in folio/config/presets/ with a [model] table (its `type` is
"bigram" or "gpt", the rest are that model's fields) and a [train] table.

Every field is a flag: `--train.learning_rate 3e-4`, `--model.n_layer 4`,
with the help text taken from the field's docstring, so a new setting is one
edit here. `--set section.field=value` does the same, and a few short flags
users already have (`--max-iters`, `--seed`, ...) come from one table,
SHORT_FLAGS. Values are parsed as TOML (`3e-4`, `true`, `"cosine"`), so types
stay honest, and no config file is ever executed.

The whole tree is validated, unknown keys included (with the nearest valid
name suggested), before any data or model is touched. Only the vocabulary
size comes later, from the dataset, in `RunConfig.resolve`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from folio.errors import FolioError
from folio.models.config import (
    BigramConfig,
    GPTConfig,
    ModelConfig,
    model_config_from_dict,
    unknown_key_error,
)
from folio.runtime import DTYPES

OPTIMIZERS = ("adamw", "muon")
"""What `train.optimizer` accepts (folio/train/optim.py builds them)."""
SCHEDULES = ("constant", "cosine", "wsd")
"""What `train.lr_schedule` accepts (folio/train/optim.py computes them)."""
CLOCKS = ("steps", "time")
"""What `train.schedule_clock` accepts."""

PRESET_DIR = Path(__file__).resolve().parent / "presets"


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
    schedule_clock: str = "steps"
    """What the cosine and wsd schedules run over: 'steps' (max_iters) or 'time' (max_time
    seconds of training, counted across resumes, so a fast CPU takes more steps and a slow
    one fewer, and every run ends decayed on time; warmup stays in steps). A 'time' run is
    not reproducible bit for bit: the clock decides the learning rate of each step."""
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
    """CPU threads for PyTorch (0: $OMP_NUM_THREADS if set, else the physical cores)."""
    max_time: float = 0.0
    """Stop (with a final eval and checkpoint) after this many seconds of training, counted
    across resumes; 0 = no limit."""
    patience: int = 0
    """Stop after this many evals without a new best val loss; 0 = never."""
    target_val_loss: float = 0.0
    """Stop after an eval whose val loss estimate is at or below this (a speedrun's finish line); 0 = never."""
    plot: bool = True
    """Redraw RUN/loss.png at every eval (matplotlib: about 0.6 s each time, a fixed cost the
    speedrun presets skip; metrics.jsonl holds the same numbers)."""
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
        for name in (
            "learning_rate", "min_lr", "weight_decay", "grad_clip", "max_time", "muon_lr",
            "target_val_loss",
        ):  # fmt: skip
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
        if self.schedule_clock not in CLOCKS:
            raise FolioError(
                f"train config: schedule_clock must be one of {CLOCKS}, got {self.schedule_clock!r}"
            )
        if self.schedule_clock == "time" and self.max_time <= 0:
            raise FolioError(
                "train config: schedule_clock 'time' needs a time budget: set train.max_time"
            )
        if self.lr_schedule not in SCHEDULES:
            raise FolioError(
                f"train config: lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.dtype not in DTYPES:
            raise FolioError(f"train config: dtype must be one of {DTYPES}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "train config") -> TrainConfig:
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise unknown_key_error(what, key, known)
        return cls(**d)


@dataclass
class RunConfig:
    """Everything a training run needs: the model's config and the training config."""

    model: ModelConfig
    train: TrainConfig
    preset: str = ""

    @property
    def model_type(self) -> str:
        return self.model.model_type

    def resolve(self, vocab_size: int) -> RunConfig:
        """This config with the vocabulary size filled in from the dataset (the one late field)."""
        if self.model.vocab_size not in (0, vocab_size):
            raise FolioError(
                f"model vocab_size {self.model.vocab_size} does not match the dataset's {vocab_size}"
            )
        return dataclasses.replace(
            self, model=dataclasses.replace(self.model, vocab_size=vocab_size)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "model_type": self.model_type,
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
        }


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset_dict(name_or_path: str) -> dict[str, Any]:
    """A preset by name (folio/config/presets/NAME.toml) or by path to a TOML file."""
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


def parse_value(raw: str) -> Any:
    """A command-line value as TOML ('3e-4' -> 0.0003, 'true' -> True); a bare word stays a string."""
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def parse_override(item: str) -> tuple[str, Any]:
    """'train.learning_rate=3e-4' -> ('train.learning_rate', 0.0003). Strings need no quotes."""
    if "=" not in item:
        raise FolioError(f"--set expects key=value, got {item!r}")
    key, raw = (s.strip() for s in item.split("=", 1))
    if not key:
        raise FolioError(f"--set expects key=value, got {item!r}")
    return key, parse_value(raw)


TRAIN_FIELDS = [f.name for f in fields(TrainConfig)]
MODEL_FIELDS = list(
    dict.fromkeys(
        [f.name for f in fields(GPTConfig)] + [f.name for f in fields(BigramConfig)] + ["type"]
    )
)


def _split_key(key: str) -> tuple[str, str]:
    """'train.seed' -> ('train', 'seed'); a bare name goes to the section that has it."""
    section, _, name = key.rpartition(".")
    if not section:
        section = "train" if name in TRAIN_FIELDS else "model"
    if section not in ("model", "train"):
        raise FolioError(f"--set {key}: section must be 'model' or 'train'")
    known = TRAIN_FIELDS if section == "train" else MODEL_FIELDS
    if name not in known:
        raise unknown_key_error(f"{section} config", name, known)
    return section, name


STAGE_SECTIONS = ("sft", "rl", "prefs")
"""Preset tables that a later stage reads into its own config with `stage_config` (`folio rl`
reads [rl]; `folio reward` and `folio dpo` read [prefs]); the run config ignores them and
their `--SECTION.FIELD` overrides."""


def build_run_config(
    preset: str, overrides: list[tuple[str, Any]], stages: tuple[str, ...] | None = None
) -> RunConfig:
    """A preset with `overrides` applied, every field validated (vocab_size may stay 0).

    `stages`: the STAGE_SECTIONS the calling command reads (with `stage_config`);
    an override of any other stage section is refused, since nothing would read
    it. None lets every stage section's overrides through unread.
    """
    d = load_preset_dict(preset)
    if stages is not None:
        check_stage_overrides(overrides, stages)
    unknown_sections = set(d) - {"model", "train", "description", *STAGE_SECTIONS}
    if unknown_sections:
        raise FolioError(
            f"preset {preset!r}: unknown section(s) {', '.join(sorted(unknown_sections))}"
        )
    tables = {"model": dict(d.get("model", {})), "train": dict(d.get("train", {}))}
    for key, value in overrides:
        if key.partition(".")[0] in STAGE_SECTIONS:
            continue
        section, name = _split_key(key)
        tables[section][name] = value
    model = tables["model"]
    model_type = model.pop("type", "gpt")
    return RunConfig(
        model=model_config_from_dict(model_type, model),
        train=TrainConfig.from_dict(tables["train"], f"preset {preset!r}, train config"),
        preset=preset,
    )


def check_stage_overrides(overrides: Iterable[tuple[str, Any]], stages: tuple[str, ...]) -> None:
    """Refuse an override of a stage section other than `stages` (one a command never reads)."""
    for key, _ in overrides:
        section = key.partition(".")[0]
        if "." in key and section in STAGE_SECTIONS and section not in stages:
            taken = ", ".join(["model", "train", *stages])
            raise FolioError(
                f"{key}: this command reads no [{section}] settings; it takes settings of "
                f"the sections {taken}"
            )


def preset_model_config(preset: str, vocab_size: int = 65) -> ModelConfig:
    """A preset's model config with a vocabulary size (tinyshakespeare's 65 by default)."""
    return build_run_config(preset, []).resolve(vocab_size).model


# ------------------------------------------------------ flags from the config


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (first sentence kept whole)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


SHORT_FLAGS: dict[str, str] = {
    "max_iters": "train.max_iters",
    "seed": "train.seed",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "eval_interval": "train.eval_interval",
    "dtype": "train.dtype",
    "device": "train.device",
    "threads": "train.threads",
    "max_time": "train.max_time",
    "patience": "train.patience",
    "compile": "train.compile",
    "fsdp": "train.fsdp",
}
"""The short flags `folio train` has always had: `--max-iters 5` is `--train.max_iters 5`."""


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not dataclasses.MISSING}


def add_config_flags(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """Add `--train.FIELD` and `--model.FIELD` for every field, plus SHORT_FLAGS and `--set`.

    model=False leaves out the model's flags (a stage whose model comes from a checkpoint).
    """
    group = parser.add_argument_group("training settings (override the preset)")
    train_docs, train_defaults = field_docs(TrainConfig), _defaults(TrainConfig)
    for name in TRAIN_FIELDS:
        group.add_argument(
            f"--train.{name}", dest=f"cfg:train.{name}", metavar="V", default=argparse.SUPPRESS,
            help=f"{train_docs.get(name, '')} (unless the preset says: {train_defaults[name]!r})",
        )  # fmt: skip
    group = parser.add_argument_group("model settings (override the preset)")
    docs = {**field_docs(BigramConfig), **field_docs(GPTConfig)}
    docs["type"] = "'gpt' or 'bigram'."
    for name in MODEL_FIELDS if model else ():
        group.add_argument(
            f"--model.{name}", dest=f"cfg:model.{name}", metavar="V", default=argparse.SUPPRESS,
            help=docs.get(name, ""),
        )  # fmt: skip
    group = parser.add_argument_group("short forms")
    for short, key in SHORT_FLAGS.items():
        flag = "--" + short.replace("_", "-")
        if TrainConfig.__dataclass_fields__[key.split(".")[1]].type == "bool":
            group.add_argument(
                flag, dest=f"cfg:{key}", action="store_const", const="true", help=f"= --{key} true"
            )
        else:
            group.add_argument(
                flag, dest=f"cfg:{key}", metavar="V", default=None, help=f"= --{key} V"
            )
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
        help="override any field, e.g. train.learning_rate=3e-4 or model.n_layer=4 (repeatable)",
    )  # fmt: skip


def add_stage_flags(parser: argparse.ArgumentParser, section: str, cls: type, title: str) -> None:
    """Add `--SECTION.FIELD` for every field of the dataclass `cls`, help from its docstrings."""
    group = parser.add_argument_group(title)
    docs, defaults = field_docs(cls), _defaults(cls)
    for f in fields(cls):
        group.add_argument(
            f"--{section}.{f.name}", dest=f"cfg:{section}.{f.name}", metavar="V",
            default=argparse.SUPPRESS,
            help=f"{docs.get(f.name, '')} (unless the preset says: {defaults[f.name]!r})",
        )  # fmt: skip


def stage_config(cls: type, preset: str, section: str, overrides: list[tuple[str, Any]]) -> Any:
    """The preset's [section] table, with the `section.FIELD` overrides applied, as a `cls`."""
    table = dict(load_preset_dict(preset).get(section, {}))
    for key, value in overrides:
        head, _, name = key.partition(".")
        if head == section:
            table[name] = value
    known = [f.name for f in fields(cls)]
    for key in table:
        if key not in known:
            raise unknown_key_error(f"{section} config", key, known)
    return cls(**table)


def config_overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The (key, value) overrides the flags of `add_config_flags` gave, `--set` first."""
    pairs = [parse_override(s) for s in getattr(args, "set", None) or []]
    for dest, raw in vars(args).items():
        if dest.startswith("cfg:") and raw is not None:
            pairs.append((dest[4:], parse_value(raw)))
    return pairs


def check_model_overrides(overrides: Iterable[tuple[str, Any]], init_from: str | None) -> None:
    """Refuse a model setting other than dropout when the model comes from `init_from`."""
    if init_from is None:
        return
    for key, _ in overrides:
        section, _, name = key.rpartition(".")
        section = section or ("train" if name in TRAIN_FIELDS else "model")
        if section == "model" and name != "dropout":
            raise FolioError(
                f"model.{name}: the model's shape comes from --init-from {init_from}; of the "
                f"model settings only model.dropout applies"
            )
