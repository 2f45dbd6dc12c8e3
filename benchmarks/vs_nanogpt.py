"""Folio against nanoGPT, side by side on the machine at hand, in one command.

    python benchmarks/vs_nanogpt.py --nanogpt /path/to/nanoGPT
    python benchmarks/vs_nanogpt.py --nanogpt DIR --only train,sample --repeats 3
    python benchmarks/vs_nanogpt.py --nanogpt DIR --quick     # tiny shapes: the harness works

nanoGPT's own code runs, from the checkout `--nanogpt` names (nothing of it
is copied into this repository): its train.py, as its README runs it on a
CPU, in a temporary copy of the checkout whose data/shakespeare_char/ this
script fills from the local tinyshakespeare file, in nanoGPT's format
(train.bin and val.bin as uint16 character ids, the first 90% of the text for
training, and meta.pkl, the one file of its format that is a pickle); and its
model.py's `generate` for sampling. Three figures:

- train: training tokens/s of the video model (6 layers, 6 heads, 384 wide,
  block 256, batch 64, dropout 0.2; nanoGPT's config/train_shakespeare_char.py):
  nanoGPT's train.py on the CPU (fp32, eager, its AdamW; the mean time of its
  logged iterations after the first) against `folio bench train --preset
  video` (its best mode);
- sample: batch-1 sampling of the video model, 500 new tokens, random weights:
  nanoGPT's `generate` (no KV cache, temperature 0.8, top-k 200, as its
  sample.py) against `folio bench sample` (its fastest decode path; for a
  bfloat16 or int8 path, its greedy agreement with float32 over 300 steps and
  the max logit difference are kept beside it);
- speedrun: the whole `folio train --preset cpu-speedrun-188` command, scored on
  the whole val split (benchmarks/speedrun.py), against the whole command of
  nanoGPT's README CPU recipe, with its own final val estimate.

The sides alternate (nanoGPT, Folio, nanoGPT, Folio, ...) and each runs at
least twice, so a noisy neighbour shows as spread rather than as a false
ratio. Every side is a fresh subprocess. The table gives each side's best and
range; the ratio is best against best. Every repeat goes to the JSON
(`--json-out`). `--quick` shrinks everything (the tests' tiny shape, a few
steps and tokens) to check the harness, not to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import speedrun  # noqa: E402  (benchmarks/speedrun.py: prepare, time and score a preset)

from folio.runtime import cpu_info  # noqa: E402  (no torch: the harness itself stays light)

FIGURES = ("train", "sample", "speedrun")
GOALS = {
    "train": ">= 5x",
    "sample": ">= 30x, and >= 1,000 tok/s",
    "speedrun": ">= 8x, and <= 10 s where bf16 is native",
}
SPEEDRUN_PRESET = "cpu-speedrun-188"
NANOGPT_CPU_RECIPE = (
    "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
    "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
    "--lr_decay_iters=2000", "--dropout=0.0",
)  # fmt: skip
"""nanoGPT README's CPU command, after `python train.py config/train_shakespeare_char.py`."""


@dataclass(frozen=True)
class Shape:
    """The model both sides measure (nanoGPT gets it as flags, Folio as a preset)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    dropout: float
    preset: str
    """The Folio preset of this shape."""


VIDEO = Shape(6, 6, 384, 256, 64, 0.2, "video")
TINY = Shape(2, 2, 32, 16, 8, 0.0, "tiny")  # folio/config/presets/tiny.toml, for --quick


@dataclass(frozen=True)
class Plan:
    """How much each figure runs: the full measurement, or --quick's smoke test."""

    shape: Shape
    train_steps: int
    """Timed optimizer steps of each training-throughput side."""
    new_tokens: int
    """New tokens of each sampling side."""
    speedrun_folio: tuple[str, ...]
    """Extra flags of the Folio speedrun command."""
    speedrun_nanogpt: tuple[str, ...]
    """nanoGPT's CPU recipe, possibly shortened."""


FULL = Plan(VIDEO, 5, 500, (), NANOGPT_CPU_RECIPE)
QUICK = Plan(
    TINY, 2, 20, ("--max-iters", "4", "--eval-interval", "4"),
    (*NANOGPT_CPU_RECIPE, "--max_iters=4", "--lr_decay_iters=4", "--eval_interval=4",
     "--eval_iters=2", "--warmup_iters=1"),
)  # fmt: skip


# ------------------------------------------------------------------ nanoGPT's data


def nanogpt_char_data(text: str) -> tuple[list[int], list[int], dict[str, Any]]:
    """(train ids, val ids, meta) as nanoGPT's data/shakespeare_char/prepare.py makes them.

    Characters sorted into ids, the first 90% of the text for training, meta with
    vocab_size, itos and stoi.
    """
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = dict(enumerate(chars))
    if len(chars) > 2**16:
        raise ValueError(f"{len(chars)} distinct characters do not fit nanoGPT's uint16 ids")
    cut = int(len(text) * 0.9)
    ids = [stoi[c] for c in text]
    return ids[:cut], ids[cut:], {"vocab_size": len(chars), "itos": itos, "stoi": stoi}


def write_nanogpt_data(text: str, data_dir: Path) -> int:
    """Write train.bin, val.bin (uint16) and meta.pkl into `data_dir`; returns the vocab size.

    meta.pkl is written (nanoGPT's train.py reads vocab_size from it), never read here.
    """
    import numpy as np

    train, val, meta = nanogpt_char_data(text)
    data_dir.mkdir(parents=True, exist_ok=True)
    np.array(train, dtype=np.uint16).tofile(data_dir / "train.bin")
    np.array(val, dtype=np.uint16).tofile(data_dir / "val.bin")
    (data_dir / "meta.pkl").write_bytes(pickle.dumps(meta))
    return meta["vocab_size"]


def nanogpt_copy(checkout: Path, work: Path, text: str) -> Path:
    """A temporary copy of the nanoGPT checkout with data/shakespeare_char/ filled from `text`."""
    missing = [
        f for f in ("model.py", "train.py", "configurator.py") if not (checkout / f).is_file()
    ]
    if missing:
        raise SystemExit(
            f"vs_nanogpt.py: error: {checkout} is no nanoGPT checkout (no {missing[0]})"
        )
    copy = work / "nanoGPT"
    shutil.copytree(
        checkout, copy, ignore=shutil.ignore_patterns(".git", "out*", "*.bin", "*.pkl", "*.pt")
    )
    write_nanogpt_data(text, copy / "data" / "shakespeare_char")
    return copy


def nanogpt_commit(checkout: Path) -> str | None:
    """The checkout's commit, when it is a git checkout."""
    r = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return r.stdout.strip() or None if r.returncode == 0 else None


# ------------------------------------------------------------------ running one side


def _run(cmd: Sequence[str], cwd: Path, what: str) -> tuple[str, float]:
    """Run a side as a subprocess; (stdout, wall seconds). A failure stops the harness."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"vs_nanogpt.py: error: {what} failed (exit {r.returncode}):\n{tail}")
    return r.stdout, wall


def _last_json(out: str) -> dict[str, Any]:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def _shape_flags(shape: Shape) -> list[str]:
    return [
        f"--n_layer={shape.n_layer}", f"--n_head={shape.n_head}", f"--n_embd={shape.n_embd}",
        f"--block_size={shape.block_size}", f"--batch_size={shape.batch_size}",
        f"--dropout={shape.dropout}",
    ]  # fmt: skip


ITER_LINE = re.compile(r"^iter (\d+): loss [\d.naif]+, time ([\d.]+)ms", re.MULTILINE)
STEP_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.MULTILINE)


def parse_nanogpt_iters(out: str) -> dict[int, float]:
    """nanoGPT train.py's log: {iteration: seconds} from its `iter N: loss L, time Tms` lines."""
    return {int(m[1]): float(m[2]) / 1000 for m in ITER_LINE.finditer(out)}


def parse_nanogpt_evals(out: str) -> list[tuple[int, float, float]]:
    """nanoGPT train.py's `step N: train loss A, val loss B` lines as (N, A, B)."""
    return [(int(m[1]), float(m[2]), float(m[3])) for m in STEP_LINE.finditer(out)]


def nanogpt_train(copy: Path, plan: Plan) -> dict[str, Any]:
    """nanoGPT's train.py on the CPU for train_steps + 1 iterations; tokens/s after the first."""
    s = plan.shape
    cmd = [
        sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
        "--compile=False", "--eval_iters=1", "--eval_interval=1000000", "--log_interval=1",
        f"--max_iters={plan.train_steps}", *_shape_flags(s),
    ]  # fmt: skip
    out, wall = _run(cmd, copy, "nanoGPT train.py (throughput)")
    iters = parse_nanogpt_iters(out)
    timed = [dt for i, dt in sorted(iters.items()) if i >= 1]  # iter 0 includes an eval
    if not timed:
        raise SystemExit(f"vs_nanogpt.py: error: no timed iterations in nanoGPT's log:\n{out}")
    per_step = sum(timed) / len(timed)
    return {
        "tokens_per_s": s.batch_size * s.block_size / per_step,
        "seconds_per_step": per_step,
        "steps": len(timed),
        "wall_s": wall,
        "how": "train.py, fp32 eager, its AdamW",
    }


def folio_train(plan: Plan, quick: bool) -> dict[str, Any]:
    """`folio bench train --preset P --json`: its best mode's tokens/s."""
    cmd = [
        sys.executable, "-m", "folio", "bench", "train", "--preset", plan.shape.preset,
        "--steps", str(plan.train_steps), "--warmup", "1", "--json",
        *(["--no-compile"] if quick else []),
    ]  # fmt: skip
    out, wall = _run(cmd, ROOT, "folio bench train")
    r = _last_json(out)
    return {
        "tokens_per_s": r["tokens_per_s"],
        "mode": r["best_mode"],
        "modes": {m["mode"]: m.get("tokens_per_s") for m in r["modes"]},
        "wall_s": wall,
        "how": f"folio bench train, best mode: {r['best_mode']}",
    }


NANOGPT_SAMPLE = """
import json, sys, time
import torch
from model import GPT, GPTConfig
n_layer, n_head, n_embd, block_size, dropout, new_tokens = json.loads(sys.argv[1])
torch.manual_seed(0)
model = GPT(GPTConfig(block_size=block_size, vocab_size=65, n_layer=n_layer, n_head=n_head,
                      n_embd=n_embd, dropout=dropout, bias=False)).eval()
idx = torch.zeros((1, 1), dtype=torch.long)
with torch.no_grad():
    model.generate(idx, 8, temperature=0.8, top_k=200)
    start = time.perf_counter()
    out = model.generate(idx, new_tokens, temperature=0.8, top_k=200)
    seconds = time.perf_counter() - start
assert out.shape == (1, 1 + new_tokens)
print(json.dumps({"tokens_per_s": new_tokens / seconds, "threads": torch.get_num_threads()}))
"""
"""Driver run with nanoGPT's directory as the working directory: its model.py, its generate."""


def nanogpt_sample(copy: Path, plan: Plan) -> dict[str, Any]:
    """nanoGPT's `generate` (no KV cache) at batch 1, random weights, temperature 0.8, top-k 200."""
    s = plan.shape
    args = json.dumps([s.n_layer, s.n_head, s.n_embd, s.block_size, s.dropout, plan.new_tokens])
    out, wall = _run([sys.executable, "-c", NANOGPT_SAMPLE, args], copy, "nanoGPT generate")
    return {**_last_json(out), "wall_s": wall, "how": "model.generate, no cache, fp32"}


def folio_sample(plan: Plan, quick: bool) -> dict[str, Any]:
    """`folio bench sample` at batch 1: the default (exact, float32) path and the fastest path;
    for a lower-precision path, its greedy agreement with float32 and max logit difference."""
    paths = [
        "static",
        "compiled",
        "compiled-bf16",
        "compiled-int8",
        "aot-bf16",
        "aot-int8",
        "aot-w8a8",
    ]
    cmd = [
        sys.executable, "-m", "folio", "bench", "sample", "--preset", plan.shape.preset,
        "--batch-sizes", "1", "--new-tokens", str(plan.new_tokens), "--paths", *paths,
        "--repeats", "1" if quick else "2", "--json",
    ]  # fmt: skip
    if quick:
        cmd += ["--agreement-steps", "8"]
    out, wall = _run(cmd, ROOT, "folio bench sample")
    r = _last_json(out)
    by_path = {g["path"]: g["tokens_per_s"] for g in r["grid"] if g["batch"] == 1}
    fastest = r["fastest_path"]
    precision = r["precision"].get(fastest)
    return {
        "tokens_per_s": r["tokens_per_s_fastest"],
        "path": fastest,
        "precision": precision,
        "default_path": r["default_path"],
        "tokens_per_s_default": by_path.get(r["default_path"]),
        "by_path": by_path,
        "compile_s": r["compile_s"],
        "wall_s": wall,
        "how": f"folio bench sample, fastest path: {fastest}",
    }


def nanogpt_speedrun(copy: Path, plan: Plan) -> dict[str, Any]:
    """The whole command of nanoGPT's README CPU recipe, timed; its last val estimate."""
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *plan.speedrun_nanogpt]
    shutil.rmtree(copy / "out-shakespeare-char", ignore_errors=True)
    out, wall = _run(cmd, copy, "nanoGPT train.py (CPU recipe)")
    evals = parse_nanogpt_evals(out)
    if not evals:
        raise SystemExit(f"vs_nanogpt.py: error: no eval line in nanoGPT's log:\n{out[-2000:]}")
    step, _, val = evals[-1]
    return {
        "seconds": wall, "val_loss": val, "step": step,
        "how": "README CPU recipe, val: its 20-batch estimate",
    }  # fmt: skip


def folio_speedrun(data: Path, work: Path, logs: Path, plan: Plan, seed: int) -> dict[str, Any]:
    """The whole `folio train --preset cpu-speedrun-188` command, timed; the whole val split scored."""
    work.mkdir(parents=True, exist_ok=True)
    row = speedrun.run_seed(SPEEDRUN_PRESET, seed, data, work, logs, plan.speedrun_folio)
    return {
        "seconds": row["wall_s"], "val_loss": row["val_loss"], "step": row["step"],
        "how": f"{SPEEDRUN_PRESET}, val: the whole split",
    }  # fmt: skip


# ------------------------------------------------------------------ the table


def _spread(values: list[float], fmt: Callable[[float], str]) -> str:
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(values[0])} ({fmt(min(values))}-{fmt(max(values))})"


def summarize(figure: str, nanogpt: list[dict], folio: list[dict]) -> dict[str, Any]:
    """Best of each side (the most tokens/s, or the fewest seconds) and their ratio."""
    if figure == "speedrun":
        n_best = min(nanogpt, key=lambda r: r["seconds"])
        f_best = min(folio, key=lambda r: r["seconds"])
        ratio = n_best["seconds"] / f_best["seconds"]
    else:
        n_best = max(nanogpt, key=lambda r: r["tokens_per_s"])
        f_best = max(folio, key=lambda r: r["tokens_per_s"])
        ratio = f_best["tokens_per_s"] / n_best["tokens_per_s"]
    return {"nanogpt_best": n_best, "folio_best": f_best, "ratio": ratio}


def _cell(figure: str, runs: list[dict], best: dict) -> str:
    if figure == "speedrun":
        times = [best["seconds"]] + [r["seconds"] for r in runs if r is not best]
        return f"{_spread(times, lambda v: f'{v:.1f} s')} (val {best['val_loss']:.4f})"
    rates = [best["tokens_per_s"]] + [r["tokens_per_s"] for r in runs if r is not best]
    return f"{_spread(rates, lambda v: f'{v:,.0f}')} tok/s"


FIGURE_NAMES = {
    "train": "training the `{preset}` model, tokens/s",
    "sample": "batch-1 sampling, `{preset}` model, {tokens} new tokens",
    "speedrun": f"`{SPEEDRUN_PRESET}`: whole command to val <= 1.88",
}


def markdown(report: dict[str, Any]) -> str:
    """The ratio table, with the machine under it."""
    lines = ["| figure | nanoGPT | Folio | ratio | goal |", "|---|---:|---:|---:|---:|"]
    for figure, entry in report["figures"].items():
        s = entry["summary"]
        name = FIGURE_NAMES[figure].format(
            preset=report["plan"]["shape"]["preset"], tokens=report["plan"]["new_tokens"]
        )
        lines.append(
            f"| {name} | {_cell(figure, entry['nanogpt'], s['nanogpt_best'])} "
            f"| {_cell(figure, entry['folio'], s['folio_best'])} | {s['ratio']:.2f}x "
            f"| {GOALS[figure]} |"
        )
    m = report["machine"]
    lines += [
        "",
        "Each side: best (range over its repeats); ratio: best against best.",
        f"{m['cpu']}, {m['cores']} physical cores, flags {' '.join(m['flags']) or '-'}; "
        f"{report['date']}; load average {m['load_before']} before, {m['load_after']} after; "
        f"{report['repeats']} repeats per side, alternating; nanoGPT {report['nanogpt_commit']}"
        f"{'; QUICK: a smoke test, not a measurement' if report['quick'] else ''}.",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def parse_only(value: str) -> list[str]:
    """`--only train,sample` -> ['train', 'sample'], in the order given, each known."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown figure {unknown[0] if unknown else value!r} (choose from {', '.join(FIGURES)})"
        )
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--nanogpt",
        type=Path,
        required=True,
        help="a nanoGPT checkout (read, not copied into the repo)",
    )
    p.add_argument(
        "--only",
        type=parse_only,
        default=list(FIGURES),
        help="figures, comma-separated: train,sample,speedrun (default: all)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each side, alternating (at least 2; --quick allows 1)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and step counts: checks the harness, measures nothing",
    )
    p.add_argument(
        "--input",
        type=Path,
        default=None,
        help="tinyshakespeare's input.txt (default: $FOLIO_TINYSHAKESPEARE, else beside the repo)",
    )
    p.add_argument("--seed", type=int, default=1337, help="seed of the Folio speedrun")
    p.add_argument(
        "--json-out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "vs_nanogpt.json",
        help="where every repeat is written",
    )
    args = p.parse_args(argv)  # fmt: skip
    if args.repeats < (1 if args.quick else 2):
        p.error("--repeats must be at least 2 (each side twice, alternating), or 1 with --quick")
    text_path = args.input or Path(
        os.environ.get("FOLIO_TINYSHAKESPEARE")
        or ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    )
    if not text_path.is_file():
        p.error(f"tinyshakespeare not found at {text_path}; give --input or FOLIO_TINYSHAKESPEARE")
    plan = QUICK if args.quick else FULL
    info = cpu_info()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpu": info.name,
            "cores": info.physical_cores,
            "flags": info.notable_flags(),
            "load_before": _load(),
        },  # fmt: skip
        "nanogpt_dir": str(args.nanogpt.resolve()),
        "nanogpt_commit": nanogpt_commit(args.nanogpt),
        "quick": args.quick,
        "repeats": args.repeats,
        "plan": asdict(plan),
        "figures": {},
    }
    with tempfile.TemporaryDirectory(prefix="folio-vs-nanogpt-") as tmp:
        work = Path(tmp)
        copy = nanogpt_copy(args.nanogpt, work, text_path.read_text(encoding="utf-8"))
        if "speedrun" in args.only:
            speedrun.prepare(work / "folio-data", str(text_path))
        (work / "logs").mkdir()

        def run_side(figure: str, side: str, repeat: int) -> dict[str, Any]:
            if figure == "train":
                return (
                    nanogpt_train(copy, plan)
                    if side == "nanogpt"
                    else folio_train(plan, args.quick)
                )
            if figure == "sample":
                return (
                    nanogpt_sample(copy, plan)
                    if side == "nanogpt"
                    else folio_sample(plan, args.quick)
                )
            if side == "nanogpt":
                return nanogpt_speedrun(copy, plan)
            run_dir = work / f"folio-run-{repeat}"
            return folio_speedrun(work / "folio-data", run_dir, work / "logs", plan, args.seed)

        for figure in args.only:
            entry: dict[str, list] = {"nanogpt": [], "folio": []}
            for i in range(args.repeats):
                for side in ("nanogpt", "folio"):  # alternating: noise shows as spread
                    row = {"repeat": i, "load": _load(), **run_side(figure, side, i)}
                    entry[side].append(row)
                    shown = (
                        f"{row['seconds']:.1f} s, val {row['val_loss']:.4f}"
                        if figure == "speedrun"
                        else f"{row['tokens_per_s']:,.0f} tok/s"
                    )
                    print(f"{figure} {side} #{i + 1}: {shown} ({row['how']})", flush=True)
            report["figures"][figure] = {
                **entry,
                "summary": summarize(figure, entry["nanogpt"], entry["folio"]),
            }
    report["machine"]["load_after"] = _load()
    table = markdown(report)
    print("\n" + table)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.json_out.with_name(args.json_out.name + ".tmp")
    tmp_out.write_text(json.dumps({**report, "table": table}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_out, args.json_out)
    print(f"every repeat: {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
