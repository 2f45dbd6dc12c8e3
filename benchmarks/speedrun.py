"""CPU speedrun: time `folio train --preset cpu-speedrun-*` to a target val loss, over several seeds.

For each seed the benchmark:

1. prepares tinyshakespeare once (`folio prepare tinyshakespeare`: the video's
   file, val = its last 10%), outside the timed part;
2. times the whole `folio train --preset PRESET --seed S` command (start-up,
   periodic evaluation, checkpoint and plot included), as a subprocess;
3. scores the final checkpoint with `folio eval --json --splits val`, which
   averages the loss over every token of the val split (not a few batches).

With `--baseline nanogpt-cpu` the same command also times one run of that
preset (nanoGPT's CPU recipe) on the same data, so the speedup is a ratio
measured side by side. Each run's full output goes to
benchmarks/results/PRESET-seedS.log; a summary table (and JSON with --json) is
printed at the end. The exit status is 0 even
when the target is missed: it is a measurement, not a test.

    python benchmarks/speedrun.py --preset cpu-speedrun-188 --baseline nanogpt-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"cpu-speedrun-188": 1.88, "cpu-speedrun-148": 1.48, "gpu-speedrun-147": 1.47}


def _folio(*args: str) -> list[str]:
    return [sys.executable, "-m", "folio", *args]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def prepare(data_dir: Path, input_path: str | None) -> None:
    cmd = _folio("prepare", "tinyshakespeare", "--out", str(data_dir))
    if input_path:
        cmd += ["--input", input_path]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def run_seed(
    preset: str, seed: int, data_dir: Path, work: Path, log_dir: Path, extra: Sequence[str] = ()
) -> dict:
    """Time one `folio train --preset PRESET --seed SEED [EXTRA...]` and score it on the whole val split."""
    run_dir = work / f"{preset}-seed{seed}"
    cmd = _folio(
        "train", "--data", str(data_dir), "--preset", preset, "--seed", str(seed),
        "--out", str(run_dir), "--quiet", *extra,
    )  # fmt: skip
    start = time.perf_counter()
    train = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if train.returncode != 0:
        raise SystemExit(f"seed {seed}: training failed:\n{train.stdout}{train.stderr}")
    ev = subprocess.run(
        _folio("eval", "--checkpoint", str(run_dir), "--splits", "val", "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(ev.stdout)
    row = {
        "preset": preset,
        "seed": seed,
        "wall_s": round(wall, 2),
        "val_loss": result["val_loss"],
        "val_tokens": result["val_tokens"],
        "step": result["step"],
    }
    log = log_dir / f"{preset}-seed{seed}.log"
    log.write_text(
        f"# {date.today()} {_cpu()}, torch threads default\n"
        f"$ {' '.join(cmd[2:])}\n{train.stdout}{train.stderr}"
        f"wall clock of the train command: {wall:.2f} s\n"
        f"$ folio eval --checkpoint RUN --splits val --json\n{ev.stdout}",
        encoding="utf-8",
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="cpu-speedrun-188")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    p.add_argument("--baseline", help="also time one run of this preset (seed: the first)")
    p.add_argument("--input", default=os.environ.get("FOLIO_TINYSHAKESPEARE"))
    p.add_argument("--results", type=Path, default=RESULTS, help="where the logs go")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    if args.input is None:
        local = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
        args.input = str(local) if local.exists() else None
    args.results.mkdir(parents=True, exist_ok=True)
    target = TARGETS.get(args.preset)
    with tempfile.TemporaryDirectory(prefix="folio-speedrun-") as tmp:
        work = Path(tmp)
        prepare(work / "data", args.input)
        rows = []
        for seed in args.seeds:
            rows.append(run_seed(args.preset, seed, work / "data", work, args.results))
            r = rows[-1]
            print(
                f"seed {seed}: {r['wall_s']:.1f} s, val {r['val_loss']:.4f} (step {r['step']})",
                flush=True,
            )
        base = None
        if args.baseline:
            base = run_seed(args.baseline, args.seeds[0], work / "data", work, args.results)
            print(f"baseline {args.baseline}: {base['wall_s']:.1f} s, val {base['val_loss']:.4f}")
    walls = [r["wall_s"] for r in rows]
    losses = [r["val_loss"] for r in rows]
    lines = [
        f"{args.preset}, {date.today()}, {_cpu()}",
        "",
        f"| seed | wall clock (s) | val loss (whole split) |{' target met |' if target else ''}",
        f"|---|---|---|{'---|' if target else ''}",
    ]
    for r in rows:
        met = f" {'yes' if r['val_loss'] <= target else 'no'} |" if target else ""
        lines.append(f"| {r['seed']} | {r['wall_s']:.1f} | {r['val_loss']:.4f} |{met}")
    if len(rows) > 1:
        lines.append(
            f"\nmean {statistics.mean(walls):.1f} s (sd {statistics.stdev(walls):.1f}), "
            f"val {statistics.mean(losses):.4f} (sd {statistics.stdev(losses):.4f})"
        )
    if base is not None:
        lines.append(
            f"baseline {args.baseline} (seed {base['seed']}): {base['wall_s']:.1f} s, "
            f"val {base['val_loss']:.4f}; {args.preset} is "
            f"{base['wall_s'] / statistics.mean(walls):.2f}x faster (mean wall clock)"
        )
    summary = "\n".join(lines)
    print("\n" + summary)
    (args.results / f"{args.preset}-summary.md").write_text(summary + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps({"runs": rows, "baseline": base}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
