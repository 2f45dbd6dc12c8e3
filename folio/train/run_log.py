"""What a training run writes beside its checkpoints: metrics.jsonl, loss.png, NaN snapshots.

Every write goes through a temporary name (or appends whole lines), so a kill
leaves the previous file or a file with one cut last line, which the reader skips.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from folio.errors import FolioError
from folio.fsutil import atomic_write_json, atomic_write_text


class MetricsLog:
    """Appends JSON lines to RUN_DIR/metrics.jsonl and keeps them for the plot."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and path.exists():
            # Keep what happened up to the checkpoint; drop rows the resumed run will redo.
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if row.get("step", 0) <= resume_step:
                    self.rows.append(row)
            atomic_write_json_lines(path, self.rows)
        elif path.exists():
            path.unlink()

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # a full or read-only disk: one clear line, not a traceback
            raise FolioError(
                f"cannot write {self.path}: {e.strerror or e}; the previous checkpoint is intact"
            ) from None


def atomic_write_json_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class NoMetrics:
    """Ranks other than 0 write no metrics."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        pass


def nan_snapshot(out_dir: Path, model, model_config, tokenizer, step, x, y) -> None:
    """Weights and the offending batch, for a post-mortem of a NaN."""
    from folio.checkpoint import clean_state_dict, save_safetensors

    d = out_dir / f"nan-step-{step}"
    d.mkdir(parents=True, exist_ok=True)
    # through the checkpoint writer: the umask's permissions, and a full disk as an OSError
    save_safetensors(clean_state_dict(model), d / "model.safetensors")
    save_safetensors(
        {"x": x.cpu().contiguous(), "y": y.cpu().contiguous()}, d / "batch.safetensors"
    )
    atomic_write_json(
        d / "config.json",
        {
            "step": step,
            "model_type": model_config.model_type,
            "model": model_config.to_dict(),
            "tokenizer": tokenizer.to_dict(),
        },
    )


EVAL_KEYS = frozenset({"step", "tokens", "train_loss", "val_loss", "eval", "time"})
"""The fields every eval row has; any other number in it is a stage's own metric."""


def extra_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The names of the stage metrics (held-out pass@1, reward, KL...) the eval rows carry."""
    names: dict[str, None] = {}
    for r in rows:
        if r.get("eval"):
            for k, v in r.items():
                if k not in EVAL_KEYS and isinstance(v, int | float) and not isinstance(v, bool):
                    names[k] = None
    return list(names)


def plot_losses(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Train and val loss against step and against tokens seen, as RUN_DIR/loss.png.

    When the eval rows carry a stage's own metrics (RL's pass@1, reward, KL,
    ...), each gets a panel of its own against step, below the losses.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if r.get("eval")]
    if not steps and not evals:
        return
    extra = extra_metrics(evals)
    n_rows = 1 + (len(extra) + 1) // 2
    fig, grid = plt.subplots(n_rows, 2, figsize=(11, 4 * n_rows), squeeze=False)
    axes = grid[0]
    for ax, xkey, xlabel in ((axes[0], "step", "step"), (axes[1], "tokens", "tokens seen")):
        if steps:
            ax.plot(
                [r[xkey] for r in steps],
                [r["loss"] for r in steps],
                lw=0.8,
                alpha=0.6,
                label="train (batch)",
            )
        if evals:
            ax.plot(
                [r[xkey] for r in evals],
                [r["train_loss"] for r in evals],
                "o-",
                label="train (eval)",
            )
            ax.plot(
                [r[xkey] for r in evals], [r["val_loss"] for r in evals], "o-", label="val (eval)"
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    panels = list(grid[1:].flat)
    for ax, name in zip(panels, extra, strict=False):
        have = [r for r in evals if isinstance(r.get(name), int | float)]
        ax.plot([r["step"] for r in have], [r[name] for r in have], "o-", color="tab:green")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in panels[len(extra) :]:
        ax.axis("off")
    fig.tight_layout()
    tmp = out_dir / f".loss.png.tmp-{os.getpid()}"
    try:
        fig.savefig(tmp, format="png", dpi=90)
        tmp.replace(out_dir / "loss.png")
    except OSError as e:
        warnings.warn(f"could not write loss plot: {e}", stacklevel=2)
    finally:
        plt.close(fig)
