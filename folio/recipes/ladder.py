"""`folio ladder`: the video's build-up, rung by rung, as one table.

Each rung adds one idea to the one before and is trained from scratch on the
same data with the same seed; the table puts its measured val loss beside the
figure the video shows. The small rungs use the video's small config
(n_embd 32, block 8, batch 32, learning rate 1e-3, 5000 iterations) and its
teaching form of attention (a list of Heads); the scale-up is the `video`
preset, hours on a CPU, so it runs only when asked.

Val loss here is one pass over the whole val split (every token predicted
once), not an estimate over random batches.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from folio.checkpoint import load_checkpoint
from folio.config.run import build_run_config
from folio.data.batches import Dataset
from folio.eval.loss import evaluate_split
from folio.fsutil import atomic_write_json, atomic_write_text
from folio.stages.pretrain import train

SMALL = {
    "model.type": "gpt",
    "model.block_size": 8,
    "model.n_embd": 32,
    "model.dropout": 0.0,
    "model.attention": "heads",
    "model.init": "pytorch",  # the video's small stages use PyTorch's default initialisation
    "train.batch_size": 32,
    "train.learning_rate": 1e-3,
    "train.max_iters": 5000,
}
ONE_HEAD = {**SMALL, "model.n_layer": 1, "model.n_head": 1, "model.feed_forward": False,
            "model.residual": False, "model.layer_norm": False}  # fmt: skip

# (rung, preset, overrides, the video's val loss)
RUNGS: list[tuple[str, str, dict[str, Any], float]] = [
    ("bigram", "bigram", {}, 2.49),
    ("+ one self-attention head", "small", ONE_HEAD, 2.5),
    ("+ multi-head (4 heads of 8)", "small", {**ONE_HEAD, "model.n_head": 4}, 2.28),
    ("+ feed-forward", "small",
     {**ONE_HEAD, "model.n_head": 4, "model.feed_forward": True, "model.mlp_ratio": 1}, 2.24),
    ("+ residual connections (3 blocks)", "small",
     {**SMALL, "model.n_layer": 3, "model.n_head": 4, "model.layer_norm": False}, 2.08),
    ("+ LayerNorm", "small", {**SMALL, "model.n_layer": 3, "model.n_head": 4}, 2.06),
    ("scale-up (video preset)", "video", {}, 1.48),
]  # fmt: skip


@dataclass
class Rung:
    rung: str
    val_loss: float
    video_val_loss: float
    params: int
    seconds: float


def run_ladder(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    scale_up: bool = False,
    seed: int = 1337,
    max_iters: int | None = None,
    eval_iters: int | None = None,
    log=print,
) -> list[Rung]:
    """Train every rung (the scale-up only if asked) and measure its val loss on the whole val
    split; `max_iters` and `eval_iters` override every rung's (a quick look)."""
    out_dir = Path(out_dir)
    ds = Dataset.open(data_dir)
    rows: list[Rung] = []
    for i, (name, preset, overrides, video) in enumerate(RUNGS):
        if preset == "video" and not scale_up:
            continue
        pairs = [(k, v) for k, v in overrides.items() if k != "model.type"]
        pairs.append(("train.seed", seed))
        pairs.append(("train.eval_at_start", False))
        if max_iters is not None:
            pairs.append(("train.max_iters", max_iters))
        if eval_iters is not None:
            pairs.append(("train.eval_iters", eval_iters))
        run = build_run_config(preset, pairs)
        log(f"[{i + 1}/{len(RUNGS)}] {name}")
        result = train(run, data_dir, out_dir / f"rung-{i}", progress=False, log=lambda *_: None)
        ck = load_checkpoint(out_dir / f"rung-{i}")
        ev = evaluate_split(
            ck.model, ds.tokens("val"), ck.model_config.block_size, torch.device("cpu"),
            contextlib.nullcontext, batch_size=256,
        )  # fmt: skip
        rows.append(
            Rung(name, round(ev["loss"], 4), video, result.n_params, round(result.seconds, 1))
        )
        log(
            f"    val loss {ev['loss']:.4f} (video {video}), {result.n_params:,} params, {result.seconds:.1f} s"
        )
    write_outputs(rows, out_dir)
    return rows


def markdown_table(rows: list[Rung]) -> str:
    lines = [
        "| rung | val loss | video | params | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.rung} | {r.val_loss:.4f} | {r.video_val_loss:.2f} | {r.params:,} | {r.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Rung], out_dir: Path) -> None:
    """ladder.md (the table), ladder.json (the rows) and ladder.png (a bar chart)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "ladder.md", markdown_table(rows))
    atomic_write_json(out_dir / "ladder.json", [asdict(r) for r in rows])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r.val_loss for r in rows], 0.4, label="Folio (measured)")
    ax.bar([x + 0.2 for x in xs], [r.video_val_loss for r in rows], 0.4, label="the video")
    ax.set_xticks(
        list(xs), [r.rung.replace(" (", "\n(") for r in rows], rotation=20, ha="right", fontsize=8
    )
    ax.set_ylabel("val loss (nats/char)")
    lo = min(min(r.val_loss for r in rows), min(r.video_val_loss for r in rows))
    ax.set_ylim(max(0.0, math.floor(lo * 10) / 10 - 0.2), None)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = out_dir / ".ladder.png.tmp"
    fig.savefig(tmp, format="png", dpi=90)
    tmp.replace(out_dir / "ladder.png")
    plt.close(fig)


def rows_json(rows: list[Rung]) -> str:
    return json.dumps([asdict(r) for r in rows])
