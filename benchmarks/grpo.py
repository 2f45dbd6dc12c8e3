"""GRPO on top of SFT, measured: does RL on task rewards raise held-out pass@1, at what KL?

The pipeline, each stage a `folio` command whose JSON result is kept in
WORK/logs/NAME.json (a stage already done is skipped, so an interrupted run
continues; delete WORK to start over):

1. `folio prepare shakespeare` and `folio train`: the base model (4 layers,
   160 wide, block 128: 1.3M parameters), unless --base names one;
2. `folio tasks make --tasks reverse,add`: 2,000 training and 500 test
   conversations per task, seed 0;
3. `folio sft --init-from run:BASE` on them;
4. `folio eval tasks` of the SFT model on the 1,000 test prompts;
5. `folio rl --algo grpo --init-from run:SFT --tasks reverse,add` (the rl
   preset, flags below), then `folio eval tasks` of the GRPO model on the
   same test prompts; the KL to the SFT model is the run's last eval.

    python benchmarks/grpo.py --work /tmp/folio-grpo [--base RUN]

Prints a Markdown table and writes WORK/summary.json (figures, commands,
machine, date).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = "reverse,add"
BASE = ["--preset", "demo", "--model.n_embd", "160", "--batch-size", "16", "--max-iters", "800",
        "--set", "train.max_time=0", "--eval-interval", "200", "--dtype", "float32"]  # fmt: skip
SFT = ["--dtype", "float32"]
RL = ["--max-iters", "300", "--train.eval_interval", "50"]
EVAL = ["--k", "8", "--max-new-tokens", "32", "--seed", "0"]


def folio(logs: Path, name: str, *args: object) -> dict:
    """Run `folio ARGS` once: its output to logs/NAME.log, its last stdout line (JSON) kept."""
    done = logs / f"{name}.json"
    command = "folio " + " ".join(str(a) for a in args)
    if done.exists():
        return json.loads(done.read_text())
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {command}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "folio", *(str(a) for a in args)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    (logs / f"{name}.log").write_text(f"$ {command}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (see {logs / name}.log):\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    result |= {"command": command, "wall_seconds": round(time.perf_counter() - start, 1)}
    done.write_text(json.dumps(result))
    return result


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/folio-grpo", help="working directory (outside the repo)")
    p.add_argument("--base", default=None, help="an existing base run to fine-tune (skips 1)")
    p.add_argument("--rl", nargs=argparse.REMAINDER, default=[], help="more `folio rl` flags")
    args = p.parse_args()
    work = Path(args.work)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = Path(args.base) if args.base else work / "base"
    if args.base is None:
        folio(logs, "prepare", "prepare", "shakespeare", "--out", work / "shk")
        folio(logs, "base", "train", "--data", work / "shk", *BASE, "--out", base, "--quiet",
              "--json")  # fmt: skip
    folio(logs, "tasks", "tasks", "make", "--tasks", TASKS, "--n", 2000, "--n-test", 500,
          "--seed", 0, "--out", work / "tasks", "--json")  # fmt: skip
    test = work / "tasks" / "test.jsonl"
    folio(logs, "sft", "sft", "--init-from", f"run:{base}", "--data", work / "tasks", *SFT,
          "--out", work / "sft", "--quiet", "--json")  # fmt: skip
    sft = folio(logs, "eval_sft", "eval", "tasks", "--checkpoint", work / "sft", "--data", test,
                *EVAL, "--json")  # fmt: skip
    rl = folio(logs, "grpo", "rl", "--algo", "grpo", "--init-from", f"run:{work / 'sft'}",
               "--tasks", TASKS, *RL, *args.rl, "--out", work / "grpo", "--quiet", "--json")  # fmt: skip
    grpo = folio(logs, "eval_grpo", "eval", "tasks", "--checkpoint", work / "grpo", "--data",
                 test, *EVAL, "--json")  # fmt: skip
    rows = []
    for stage, r, kl in (("sft", sft, 0.0), ("grpo", grpo, rl.get("kl"))):
        o = r["overall"]
        rows.append({
            "stage": stage, "pass_at_1": o["pass_at_1"], "pass_at_8": o["pass_at_k"],
            **{f"pass_at_1_{t}": v["pass_at_1"] for t, v in r["tasks"].items()},
            "end_rate": o["end_rate"], "kl_to_sft": kl,
        })  # fmt: skip
    summary = {
        "date": date.today().isoformat(), "machine": cpu_name(), "cores": os.cpu_count(),
        "rows": rows,
        "commands": {p.stem: json.loads(p.read_text())["command"] for p in logs.glob("*.json")},
    }  # fmt: skip
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    names = [k for k in rows[0] if k != "stage"]
    print("| stage | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in names]
        print(f"| {r['stage']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
