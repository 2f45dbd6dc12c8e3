"""Run directories and checkpoints: save, find and load, without ever unpickling.

A run directory is self-describing:

    RUN_DIR/
      run.json                 the fully resolved config of the run
      metrics.jsonl            one JSON object per logged step and per eval
      loss.png                 the loss curves
      latest.json, best.json   pointers to checkpoint directories
      checkpoints/step-000500/
        config.json            format version, model type and model config
        tokenizer.json         the tokenizer, so samples decode without the dataset
        model.safetensors      the weights
        state.json             step, best val loss, data position, python/numpy RNG
        trainer.safetensors    optimizer tensors and torch RNG states (resume only)
        optimizer.json         the optimizer's name and non-tensor state (resume only)

A checkpoint directory is written under a temporary name, fsynced and renamed;
then a pointer file is replaced atomically. A kill at any instant therefore
leaves `latest.json` pointing at a complete checkpoint. Weights are
safetensors and metadata JSON: loading a checkpoint runs no code.

The file runs past 500 lines on purpose: the format's writer, its pointer files
and its reader are kept side by side, so that a change to what is written is
seen beside what reads it.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from folio.errors import FolioError
from folio.fsutil import (
    atomic_write_json,
    describe_entries,
    follow_umask,
    fsync_dir,
    fsync_file,
    read_json,
    scratch_dir,
)
from folio.memory import check_loading_memory, count_parameters
from folio.models import build_model, model_config_from_dict, parameter_shapes
from folio.tokenizers import tokenizer_from_dict

CHECKPOINT_FORMAT = "folio-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)(\.\d+)?$")


def clean_state_dict(
    weights: nn.Module | dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """A model's (or a state dict's) weights on the CPU, wrapper prefixes removed, tied tensors once.

    torch.compile and DDP prefix every name (`_orig_mod.`, `module.`); a tied
    matrix appears under two names and is kept under its first.
    """
    sd = {}
    seen: dict[int, str] = {}
    items = weights.state_dict() if isinstance(weights, nn.Module) else weights
    for k, v in items.items():
        stripped = True
        while stripped:  # in any order and nesting: DDP(compile(m)) gives module._orig_mod.
            stripped = False
            for prefix in ("_orig_mod.", "module."):
                if k.startswith(prefix):
                    k, stripped = k[len(prefix) :], True
        k = k.replace("._orig_mod.", ".")
        ptr = v.data_ptr()
        if ptr in seen and v.numel() > 0:  # a tied weight: safetensors refuses shared storage
            continue
        seen[ptr] = k
        sd[k] = v.detach().contiguous().cpu()
    return sd


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file, durably, with the permissions the umask gives.

    safetensors creates its files 0600 where everything else Folio writes
    follows the umask (0644 under the usual 022). It reports an I/O failure,
    a full disk included, as its own SafetensorError; one that names an OS
    error becomes that OSError, so callers handle it like any other write.
    """
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
    follow_umask(path)
    fsync_file(path)


def _optimizer_to_files(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = val.detach().contiguous().cpu()
            else:
                plain_state.setdefault(str(pid), {})[name] = val
    meta = {"optimizer": sd.get("optimizer"), "param_groups": sd["param_groups"]}
    return tensors, {**meta, "state": plain_state}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for pid, st in meta.get("state", {}).items():
        state.setdefault(int(pid), {}).update(st)
    out = {"state": state, "param_groups": meta["param_groups"]}
    if "optimizer" in meta:  # absent in checkpoints written before it was recorded
        out["optimizer"] = meta["optimizer"]
    return out


def save_checkpoint(
    run_dir: Path,
    weights: dict[str, torch.Tensor],
    model_config,
    tokenizer,
    state: dict[str, Any],
    *,
    optimizer_state: dict[str, Any] | None = None,
    rng_tensors: dict[str, torch.Tensor] | None = None,
    best: bool = False,
    keep_latest: bool = True,
) -> Path:
    """Write a checkpoint for `state['step']` and point latest.json (and best.json) at it.

    Everything comes as plain data: `weights` from `clean_state_dict`, the
    optimizer's from `optimizer_state` (None: a weights-only checkpoint that
    cannot be resumed), JSON-able `state`, and RNG tensors.
    """
    run_dir = Path(run_dir)
    step = int(state["step"])
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".step-{step:08d}.tmp-{os.getpid()}"
    failure = f"cannot write checkpoint in {run_dir}: {{why}}; the previous checkpoint is intact"
    # FolioError too: an atomic_write of a JSON file failed; SafetensorError: a tensor file did.
    with scratch_dir(tmp, failure, catch=(OSError, FolioError, SafetensorError)):
        config = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_type": model_config.model_type,
            "model": model_config.to_dict(),
        }
        atomic_write_json(tmp / "config.json", config)
        atomic_write_json(tmp / "tokenizer.json", tokenizer.to_dict())
        save_safetensors(weights, tmp / "model.safetensors", {"format": "pt"})
        if optimizer_state is not None:
            tensors, opt_meta = _optimizer_to_files(optimizer_state)
            tensors.update(rng_tensors or {})
            save_safetensors(tensors, tmp / "trainer.safetensors")
            atomic_write_json(tmp / "optimizer.json", opt_meta)
        atomic_write_json(tmp / "state.json", {"format_version": CHECKPOINT_VERSION, **state})
        fsync_dir(tmp)
        n = 1
        # The same step saved again gets a new name, so the one a pointer names stays whole.
        while final.exists():
            final = ckpt_root / f"step-{step:08d}.{n}"
            n += 1
        os.rename(tmp, final)
        fsync_dir(ckpt_root)
        pointer = {
            "checkpoint": f"checkpoints/{final.name}",
            "step": step,
            "val_loss": state.get("val_loss"),
        }
        if keep_latest:
            atomic_write_json(run_dir / "latest.json", pointer)
        if best:
            atomic_write_json(run_dir / "best.json", pointer)
    _prune(run_dir)
    return final


def _pointed(run_dir: Path) -> set[str]:
    names = set()
    for which in ("latest", "best"):
        try:
            names.add(Path(read_json(run_dir / f"{which}.json", "pointer")["checkpoint"]).name)
        except (FolioError, KeyError, TypeError):
            pass
    return names


def _prune(run_dir: Path) -> None:
    """Remove checkpoint directories no pointer refers to, and stale temporaries."""
    keep = _pointed(run_dir)
    for d in (run_dir / "checkpoints").iterdir():
        if d.name in keep:
            continue
        if _STEP_DIR.match(d.name) or (
            d.name.startswith(".step-") and f"tmp-{os.getpid()}" not in d.name
        ):
            shutil.rmtree(d, ignore_errors=True)


def check_fresh_run_dir(run_dir: str | Path, restart: bool = False) -> None:
    """Refuse to start a new run in a directory that already holds something.

    A run started again from a shell's history must not wipe the run it
    names: the error says what is there and offers --resume, or --restart,
    which moves the old directory aside (see `move_run_aside`) rather than
    deleting it.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise FolioError(f"cannot create run directory {run_dir}: a file of that name exists")
    try:
        entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    except OSError as e:
        raise FolioError(f"--out {run_dir}: cannot read it ({e.strerror or e})") from None
    if not entries or restart or _never_checkpointed(run_dir, entries):
        return
    if (run_dir / "latest.json").exists():
        try:
            pointer = read_json(run_dir / "latest.json", "checkpoint pointer")
            held = f"a run at step {int(pointer['step'])}"
            if isinstance(pointer.get("val_loss"), (int, float)):
                held += f" (val loss {pointer['val_loss']:.4f})"
        except (FolioError, KeyError, TypeError, ValueError):
            held = "a run"
        raise FolioError(
            f"--out {run_dir}: already holds {held}; continue it with --resume, or start over "
            f"with --restart (the old run is moved aside, not deleted)"
        )
    raise FolioError(
        f"--out {run_dir}: is not empty ({describe_entries(entries)}); choose a new directory, or pass "
        f"--restart to move it aside and start over"
    )


LOCK_FILE = ".lock"
STARTED_ONLY = frozenset({"run.json", "metrics.jsonl", "loss.png", "pinned", "checkpoints"})
"""What a run writes before its first checkpoint: a directory holding only these is no run."""


def _never_checkpointed(run_dir: Path, entries: list[str]) -> bool:
    """Whether run_dir holds only what a run that stopped before its first checkpoint left
    (its config, metrics and plot): a fresh run may take it over, as nothing would be lost.
    A config error found after the directory was made then never blocks the corrected rerun."""
    if not set(entries) <= STARTED_ONLY or (run_dir / "latest.json").exists():
        return False
    checkpoints = run_dir / "checkpoints"
    return not checkpoints.exists() or not any(checkpoints.iterdir())


class RunLock:
    """An exclusive lock on a run directory, so two trainers never write one run.

    It is `flock` on RUN/.lock, which the kernel drops when the process dies,
    SIGKILL included: a lock never outlives its trainer. The file holds the
    PID of the holder, for the error the second trainer prints.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        try:
            self.file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        except OSError as e:
            raise FolioError(f"cannot lock {self.path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise FolioError(
                f"{self.path.parent}: another trainer (PID {holder}) is using this run directory; "
                "wait for it to finish, or choose another --out"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def move_run_aside(run_dir: str | Path) -> Path | None:
    """Rename a non-empty `run_dir` to a free sibling name `RUN.old-N`; return where it went.

    The old run's lock is taken first, so a run that a trainer is still
    writing is never moved.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return None
    RunLock(run_dir).release()
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.old-{n}")).exists():
        n += 1
    try:
        os.rename(run_dir, aside)
    except OSError as e:
        raise FolioError(f"cannot move {run_dir} aside: {e.strerror or e}") from None
    return aside


def run_dataset(path: str | Path) -> str:
    """The dataset a run trained on, as its run.json records it."""
    run_json = Path(path) / "run.json"
    if not run_json.exists():
        raise FolioError(f"{path}: no run.json naming the dataset; pass --data DATA_DIR")
    run_config = read_json(run_json, "run config")
    data = run_config.get("data") if isinstance(run_config, dict) else None
    if not isinstance(data, str):
        raise FolioError(f"{run_json}: names no dataset; pass --data DATA_DIR")
    return data


def resolve_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint directory from a run directory (following latest/best) or a checkpoint path.

    A pointer must resolve to a directory directly inside the run's checkpoints/.
    """
    path = Path(path)
    if not path.exists():
        raise FolioError(f"{path}: checkpoint or run directory not found")
    if (path / "model.safetensors").exists() or (path / "config.json").exists():
        return path
    pointer = path / f"{which}.json"
    if not pointer.exists():
        if which == "best" and (path / "latest.json").exists():
            return resolve_checkpoint(path, "latest")
        raise FolioError(f"{path}: no checkpoint in this run directory ({pointer.name} missing)")
    target = read_json(pointer, "checkpoint pointer")
    try:
        ckpt = path / target["checkpoint"]
    except (KeyError, TypeError):
        raise FolioError(f"{pointer}: checkpoint pointer is corrupt") from None
    # A pointer names a directory of this run's checkpoints/, never another run's (or
    # anything else): `..` and symbolic links are resolved before comparing.
    root = (path / "checkpoints").resolve()
    if ckpt.resolve().parent != root:
        raise FolioError(
            f"{pointer}: points to {target['checkpoint']!r}, outside this run's checkpoints/ "
            "directory; refusing to load it"
        )
    if not ckpt.is_dir():
        raise FolioError(f"{pointer}: points to {ckpt}, which is missing")
    return ckpt


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model ready to use, and what is needed to resume."""

    path: Path
    model: nn.Module
    model_config: Any
    tokenizer: Any
    state: dict[str, Any]

    def trainer_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Optimizer state dict and RNG tensors, for --resume."""
        f = self.path / "trainer.safetensors"
        if not f.exists():
            raise FolioError(
                f"{self.path}: this checkpoint holds weights only and cannot be resumed"
            )
        tensors = _load_safetensors(f)
        opt_meta = read_json(self.path / "optimizer.json", "optimizer state")
        rng = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
        return _optimizer_from_files(tensors, opt_meta), rng


def _not_safetensors(f: Path, e: BaseException) -> FolioError:
    return FolioError(f"{f}: not a valid safetensors file ({str(e).splitlines()[0][:120]})")


def _load_safetensors(f: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(f))
    except FileNotFoundError:
        raise FolioError(f"{f}: file missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(f, e) from None


_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2}


def read_safetensors_header(f: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's dtype and shape from a safetensors file's header, reading no tensor data."""
    try:
        with safe_open(str(f), framework="pt") as sf:
            header = {}
            for key in sf.keys():
                sl = sf.get_slice(key)
                header[key] = (str(sl.get_dtype()), tuple(int(d) for d in sl.get_shape()))
            return header
    except FileNotFoundError:
        raise FolioError(f"{f}: file missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(f, e) from None


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_weight_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: object
) -> None:
    """Refuse, in one line, weights whose names or shapes are not those a config gives.

    `expected` comes from the config (`folio.models.parameter_shapes`), `found`
    from the weights (a safetensors header, or tensors already read).
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    parts = []
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors of other shapes)" if len(wrong) > 1 else ""
        parts.append(
            f"{k} is {_shape(found[k])} in the weights but {_shape(expected[k])} by the config{more}"
        )
    if missing:
        parts.append(f"missing {some(missing)}")
    if unexpected:
        parts.append(f"unexpected {some(unexpected)}")
    raise FolioError(f"{where}: weights do not match the config ({'; '.join(parts)})")


def _check_weights_file(
    f: Path, model_config: Any, device: torch.device, check_memory: bool = True
) -> None:
    """The config against the weights' header, then the memory guard, before any allocation.

    The parameter counts are compared first: arithmetic only, so a config.json
    claiming a thousand layers is refused at once, without even building the
    model on the meta device (which takes seconds for such a model).
    """
    header = read_safetensors_header(f)
    in_file = sum(math.prod(shape) for _, shape in header.values())
    in_config = count_parameters(model_config)
    if in_file != in_config:
        raise FolioError(
            f"{f}: weights do not match the config (the file holds {in_file:,} parameters, "
            f"config.json describes {in_config:,})"
        )
    check_weight_shapes(
        parameter_shapes(model_config), {k: shape for k, (_, shape) in header.items()}, f
    )
    file_bytes = sum(
        math.prod(shape) * _DTYPE_BYTES.get(dtype, 4) for dtype, shape in header.values()
    )
    if check_memory:
        check_loading_memory(model_config, file_bytes, device, where=f)


def require_language_model(ck: Any, wanted: str) -> None:
    """Refuse a reward model where a command generates text: `wanted` says what it wants
    ("folio chat wants a language model ..."), after the checkpoint's path."""
    if ck.model_config.model_type == "reward":
        raise FolioError(
            f"{ck.path}: this is a reward model (it scores replies, it writes none); {wanted}"
        )


def load_checkpoint(
    path: str | Path,
    which: str = "latest",
    device: str | torch.device = "cpu",
    *,
    check_memory: bool = True,
) -> Checkpoint:
    """Load a checkpoint (or a run directory's latest/best) into a fresh model.

    Nothing is allocated before the config has been compared with the
    weights' header and the memory guard has passed (`check_memory=False`,
    the commands' --force: try anyway), and the tokenizer must have exactly
    the model's vocabulary.
    """
    ckpt = resolve_checkpoint(path, which)
    config = read_json(ckpt / "config.json", "checkpoint config")
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise FolioError(f"{ckpt / 'config.json'}: not a Folio checkpoint")
    version = config.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise FolioError(
            f"{ckpt / 'config.json'}: checkpoint format version {version!r} is newer than this "
            f"Folio reads ({CHECKPOINT_VERSION}); upgrade Folio"
        )
    try:
        model_config = model_config_from_dict(config["model_type"], dict(config["model"]))
    except (KeyError, TypeError, ValueError):
        raise FolioError(f"{ckpt / 'config.json'}: model config is missing or malformed") from None
    except FolioError as e:
        raise FolioError(f"{ckpt / 'config.json'}: {e}") from None
    try:
        tokenizer = tokenizer_from_dict(read_json(ckpt / "tokenizer.json", "tokenizer"))
    except FolioError as e:
        msg = str(e)
        raise FolioError(msg if str(ckpt) in msg else f"{ckpt / 'tokenizer.json'}: {msg}") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise FolioError(
            f"{ckpt / 'tokenizer.json'}: the tokenizer has {tokenizer.vocab_size:,} tokens but the "
            f"model's vocab_size is {model_config.vocab_size:,}; they do not belong together"
        )
    state = read_json(ckpt / "state.json", "training state")
    if not isinstance(state, dict):
        raise FolioError(f"{ckpt / 'state.json'}: training state is not a JSON object")
    device = torch.device(device)
    _check_weights_file(ckpt / "model.safetensors", model_config, device, check_memory)
    weights = _load_safetensors(ckpt / "model.safetensors")
    model = build_model(model_config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # the header said otherwise: the file changed under us
        raise FolioError(
            f"{ckpt / 'model.safetensors'}: weights do not match the config "
            f"({str(e).splitlines()[-1].strip()[:160]})"
        ) from None
    tied = {"lm_head.weight"} if getattr(model_config, "tie_weights", False) else set()
    if set(missing) - tied or unexpected:
        raise FolioError(
            f"{ckpt / 'model.safetensors'}: weights do not match the config "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    for name, t in weights.items():
        if not torch.isfinite(t).all():
            raise FolioError(f"{ckpt / 'model.safetensors'}: tensor {name} holds NaN or Inf values")
    return Checkpoint(ckpt, model.to(device), model_config, tokenizer, state)
