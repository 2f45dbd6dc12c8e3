"""Val loss against wall-clock time: a Folio speedrun beside nanoGPT's CPU recipe for the same minutes.

Both sides get the same time budget on the same machine, one after the other (never
together: two trainings on two cores slow each other down):

- nanoGPT: its own train.py and model.py from a local checkout (`--nanogpt DIR`, not
  vendored), README's CPU recipe (4 layers, 128 wide, block 64, batch 12, AdamW). A
  short first run measures its iterations per second, so that its max_iters and
  lr_decay_iters can be set to what fits the budget: its cosine then ends on time, as
  a step-counted recipe stretched to the same minutes would be tuned. Its val loss is
  its own estimate (`--eval_iters` batches), each eval line timestamped as it prints.
- Folio: `folio train --preset PRESET` (default cpu-speedrun-148, whose schedule runs on
  the clock: `train.schedule_clock = "time"`), evals every `--folio-eval-interval`
  steps; the final checkpoint is then scored on the whole val split by `folio eval`.

Prints both curves as a table, writes every point as JSON and, with matplotlib, a
figure. The exit status is 0 even when a target is missed: a measurement, not a test.

    python benchmarks/frontier.py --nanogpt /path/to/nanoGPT --minutes 14.5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speedrun  # noqa: E402
import vs_nanogpt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEP_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
ITER_LINE = re.compile(r"^iter (\d+): loss [\d.naif]+, time ([\d.]+)ms", re.MULTILINE)


def _nanogpt_cmd(iters: int, eval_interval: int, eval_iters: int) -> list[str]:
    recipe = [
        a for a in vs_nanogpt.NANOGPT_CPU_RECIPE
        if not a.startswith(("--max_iters", "--lr_decay_iters", "--eval_iters", "--log_interval"))
    ]  # fmt: skip
    return [
        sys.executable, "train.py", "config/train_shakespeare_char.py", *recipe,
        f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={eval_interval}",
        f"--eval_iters={eval_iters}", "--log_interval=50",
    ]  # fmt: skip


def nanogpt_rate(copy: Path) -> float:
    """nanoGPT's iterations per second at its CPU recipe, from a 300-iteration run."""
    cmd = _nanogpt_cmd(300, 1_000_000, 1)
    cmd[-1] = "--log_interval=1"
    r = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, check=True)
    times = [float(m[2]) / 1000 for m in ITER_LINE.finditer(r.stdout) if int(m[1]) >= 20]
    return len(times) / sum(times)


def nanogpt_curve(copy: Path, seconds: float, eval_iters: int, points: int) -> dict[str, Any]:
    """nanoGPT's recipe stretched to `seconds`; its eval lines as (seconds, step, val)."""
    rate = nanogpt_rate(copy)
    # Its evals take time too: aim a little short so the run ends inside the budget.
    iters = int(rate * seconds * 0.93)
    cmd = _nanogpt_cmd(iters, max(1, iters // points), eval_iters)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    curve = []
    assert proc.stdout is not None
    for line in proc.stdout:
        m = STEP_LINE.match(line)
        if m:
            curve.append({"seconds": time.perf_counter() - start, "step": int(m[1]),
                          "val": float(m[3])})  # fmt: skip
    proc.wait()
    return {
        "iters_per_s": rate, "max_iters": iters, "wall_s": time.perf_counter() - start,
        "curve": curve, "how": f"README CPU recipe, max_iters = lr_decay_iters = {iters}, "
        f"val: its {eval_iters}-batch estimate",
    }  # fmt: skip


def folio_curve(
    data: Path, work: Path, preset: str, seed: int, eval_interval: int, extra: list[str]
) -> dict[str, Any]:
    """The whole `folio train` command; its evals as (seconds, step, val); the whole split at the end."""
    run_dir = work / f"{preset}-frontier"
    cmd = [
        sys.executable, "-m", "folio", "train", "--data", str(data), "--preset", preset,
        "--seed", str(seed), "--out", str(run_dir), "--quiet",
        "--set", f"train.eval_interval={eval_interval}", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("eval")]
    # metrics.jsonl times count from the first step; shift every point by all the rest of
    # the command (start-up, and the checkpoint and plot after the last eval), which
    # charges Folio more than its start-up alone: the comparison errs against it.
    shift = wall - evals[-1]["time"]
    curve = [{"seconds": r["time"] + shift, "step": r["step"], "val": r["val_loss"]} for r in evals]
    ev = subprocess.run(
        [sys.executable, "-m", "folio", "eval", "--checkpoint", str(run_dir), "--splits", "val",
         "--json"], capture_output=True, text=True, check=True,
    )  # fmt: skip
    final = json.loads(ev.stdout)
    return {
        "wall_s": wall, "curve": curve, "val_whole_split": final["val_loss"],
        "step": final["step"], "how": f"folio train --preset {preset}; val: 20-batch estimates, "
        "the last one also on the whole split",
    }  # fmt: skip


def figure(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for side, label in (("nanogpt", "nanoGPT CPU recipe"), ("folio", report["preset"])):
        pts = report[side]["curve"]
        ax.plot([p["seconds"] for p in pts], [p["val"] for p in pts], marker="o", label=label)
    ax.axhline(1.48, color="grey", linestyle=":", label="1.48 (the video's result)")
    ax.set_xlabel("wall-clock seconds (the whole command)")
    ax.set_ylabel("val loss")
    ax.set_title(f"tinyshakespeare, {report['machine']}, {report['date']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout")
    p.add_argument("--minutes", type=float, default=14.5, help="the budget of each side")
    p.add_argument("--preset", default="cpu-speedrun-148")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--folio-eval-interval", type=int, default=500)
    p.add_argument("--nanogpt-eval-iters", type=int, default=100)
    p.add_argument("--points", type=int, default=10, help="nanoGPT evals in its run")
    p.add_argument("--set", action="append", default=[], help="extra Folio overrides")
    p.add_argument("--only", choices=("folio", "nanogpt"), help="run one side")
    p.add_argument("--input", type=Path, default=None)
    p.add_argument("--json-out", type=Path, default=ROOT / "benchmarks/results/frontier.json")
    p.add_argument("--figure", type=Path, default=None, help="a PNG of both curves")
    args = p.parse_args(argv)
    text_path = args.input or Path(
        os.environ.get("FOLIO_TINYSHAKESPEARE")
        or ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    )
    info = vs_nanogpt.cpu_info()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": info.name,
        "flags": info.notable_flags(), "minutes": args.minutes, "preset": args.preset,
        "nanogpt_commit": vs_nanogpt.nanogpt_commit(args.nanogpt),
    }  # fmt: skip
    extra = [a for s in args.set for a in ("--set", s)]
    with tempfile.TemporaryDirectory(prefix="folio-frontier-") as tmp:
        work = Path(tmp)
        if args.only != "folio":
            copy = vs_nanogpt.nanogpt_copy(args.nanogpt, work, text_path.read_text())
            report["nanogpt"] = nanogpt_curve(
                copy, args.minutes * 60, args.nanogpt_eval_iters, args.points
            )
            print(f"nanoGPT: {report['nanogpt']['curve'][-1]}", flush=True)
        if args.only != "nanogpt":
            speedrun.prepare(work / "data", str(text_path))
            report["folio"] = folio_curve(
                work / "data", work, args.preset, args.seed, args.folio_eval_interval,
                ["--set", f"train.max_time={args.minutes * 60 - 30:g}", *extra],
            )  # fmt: skip
            f = report["folio"]
            print(f"Folio: {f['curve'][-1]}, whole split {f['val_whole_split']:.4f}", flush=True)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=1))
    for side in ("nanogpt", "folio"):
        if side in report:
            print(f"\n{side}: wall {report[side]['wall_s']:.0f} s ({report[side]['how']})")
            print("| seconds | step | val |\n|---:|---:|---:|")
            for pt in report[side]["curve"]:
                print(f"| {pt['seconds']:.0f} | {pt['step']} | {pt['val']:.4f} |")
    if args.figure and "nanogpt" in report and "folio" in report:
        figure(report, args.figure)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
