"""Choosing GRPO's settings for the recipe, on a development set kept apart from the test set.

Settings tuned on the test prompts flatter the figures they produce. This
benchmark tunes GRPO on prompts of their own:

1. a development set: `folio tasks make --seed SEED` (the test split of
   another seed), every prompt of the recipe's train.jsonl and test.jsonl
   dropped, the first `--n-dev` (400) of each of reverse, add and count kept.
   Test-split prompts are never training prompts (folio/data/tasks.py), so
   GRPO never trains on them either;
2. the recipe's SFT model and its control (`sft-longer`) scored on it;
3. GRPO from the recipe's SFT model for each setting (`NAME=FLAGS`, the flags
   added to `folio rl --algo grpo --init-from run:RECIPE/sft --rl.max_new_tokens 48`),
   each scored on the development set: greedy pass@1 per task, 48-token
   replies.

    python benchmarks/grpo_settings.py --recipe OUT --out /tmp/settings [--setting NAME=FLAGS ...]

Without --setting it runs the grid that chose the recipe's settings
(SETTINGS). Finished runs (OUT/records/NAME.json) are skipped on a rerun.
Prints a table and writes OUT/grpo_settings.json. The seconds are each `folio
rl` command's wall time, start-up and its final held-out eval included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("reverse", "add", "count")
RL = (
    "--rl.max_new_tokens",
    "48",
    "--train.eval_interval",
    "100000",
    "--set",
    "train.eval_at_start=false",
)
BIG = "--rl.prompts_per_rollout 32 --rl.epochs 1 --rl.minibatches 2"
SETTINGS = {
    "preset-2e-5-all": "--tasks reverse,add,count --max-iters 100 --train.learning_rate 2e-5",
    "preset-2e-5": "--tasks add,count --max-iters 100 --train.learning_rate 2e-5",
    "preset-1e-4": "--tasks add,count --max-iters 100 --train.learning_rate 1e-4",
    "preset-1e-4-dyn": "--tasks add,count --max-iters 100 --train.learning_rate 1e-4 "
    "--rl.dynamic_sampling 2",
    "big-3e-5": f"--tasks add,count --max-iters 100 --train.learning_rate 3e-5 {BIG}",
    "big-5e-5": f"--tasks add,count --max-iters 100 --train.learning_rate 5e-5 {BIG}",
    "big-1e-4": f"--tasks add,count --max-iters 100 --train.learning_rate 1e-4 {BIG}",
    "big-3e-5-200": f"--tasks add,count --max-iters 200 --train.learning_rate 3e-5 {BIG}",
    "big-3e-5-dyn": f"--tasks add,count --max-iters 100 --train.learning_rate 3e-5 {BIG} "
    "--rl.dynamic_sampling 2",
    "big-3e-5-nokl": f"--tasks add,count --max-iters 100 --train.learning_rate 3e-5 {BIG} "
    "--rl.kl_coef 0",
    "big-3e-5-all": f"--tasks reverse,add,count --max-iters 100 --train.learning_rate 3e-5 {BIG}",
    "bigger-3e-5": "--tasks add,count --max-iters 100 --train.learning_rate 3e-5 "
    "--rl.prompts_per_rollout 64 --rl.epochs 1 --rl.minibatches 4",
}
"""The grid that chose the recipe's GRPO settings (BENCHMARKS.md, "Choosing GRPO's settings")."""


def folio(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "folio", *args], capture_output=True, text=True)


def user_texts(path: Path) -> set[str]:
    return {json.loads(line)["messages"][0]["content"] for line in path.open() if line.strip()}


def make_dev_set(recipe: Path, out: Path, seed: int, n: int) -> Path:
    """OUT/dev.jsonl: test-split prompts of another seed, none in the recipe's task files."""
    dev = out / "dev.jsonl"
    if dev.exists():
        return dev
    raw = out / "dev-raw"
    r = folio("tasks", "make", "--tasks", ",".join(TASKS), "--n", "1", "--n-test", str(2 * n),
              "--seed", str(seed), "--out", str(raw), "--force")  # fmt: skip
    if r.returncode:
        sys.exit(r.stderr.strip())
    seen = user_texts(recipe / "tasks" / "train.jsonl") | user_texts(
        recipe / "tasks" / "test.jsonl"
    )
    kept, count = [], dict.fromkeys(TASKS, 0)
    for line in (raw / "test.jsonl").open():
        row = json.loads(line)
        text = row["messages"][0]["content"]
        if text in seen or count[row["task"]] >= n:
            continue
        seen.add(text)
        count[row["task"]] += 1
        kept.append(line)
    if min(count.values()) < n:
        sys.exit(f"only {count} development prompts; ask for fewer with --n-dev")
    dev.write_text("".join(kept))
    return dev


def score(checkpoint: Path, dev: Path) -> dict[str, float]:
    r = folio("eval", "tasks", "--checkpoint", str(checkpoint), "--data", str(dev), "--k", "0",
              "--max-new-tokens", "48", "--json")  # fmt: skip
    if r.returncode:
        sys.exit(f"eval of {checkpoint}: {r.stderr.strip()}")
    tasks = json.loads(r.stdout)["tasks"]
    out = {t: tasks[t]["pass_at_1"] for t in TASKS}
    return out | {"overall": sum(out.values()) / len(TASKS)}


def run_setting(name: str, flags: str, recipe: Path, out: Path, dev: Path) -> dict:
    record = out / "records" / f"{name}.json"
    if record.exists():
        return json.loads(record.read_text())
    run = out / name
    t0 = time.perf_counter()
    r = folio("rl", "--algo", "grpo", "--init-from", f"run:{recipe / 'sft'}", *RL,
              *flags.split(), "--quiet", "--json", "--out", str(run), "--restart")  # fmt: skip
    seconds = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{name}: {r.stderr.strip()}")
    result = {"name": name, "flags": flags, "seconds": round(seconds, 1)}
    result |= {"kl": json.loads(r.stdout.strip().splitlines()[-1]).get("kl")}
    result |= {"dev": score(run, dev)}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", type=Path, required=True, help="a `folio recipe assistant` OUT")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=77, help="the development set's seed")
    ap.add_argument("--n-dev", type=int, default=400, help="development prompts per task")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=FLAGS",
                    help="a setting to run (default: the grid in SETTINGS)")  # fmt: skip
    args = ap.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting) if args.setting else SETTINGS
    args.out.mkdir(parents=True, exist_ok=True)
    dev = make_dev_set(args.recipe, args.out, args.seed, args.n_dev)
    base = {m: score(args.recipe / m, dev) for m in ("sft", "sft-longer")}
    rows = []
    print("| run | reverse | add | count | overall | vs SFT | KL | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m, d in base.items():
        cells = " | ".join(f"{d[t]:.3f}" for t in TASKS)
        print(
            f"| {m} | {cells} | {d['overall']:.3f} | {100 * (d['overall'] - base['sft']['overall']):+.1f} | | |"
        )
    for name, flags in settings.items():
        r = run_setting(name, flags, args.recipe, args.out, dev)
        rows.append(r)
        d = r["dev"]
        cells = " | ".join(f"{d[t]:.3f}" for t in TASKS)
        gain = 100 * (d["overall"] - base["sft"]["overall"])
        kl = "-" if r["kl"] is None else f"{r['kl']:.2f}"
        print(f"| {name} | {cells} | {d['overall']:.3f} | {gain:+.1f} | {kl} | {r['seconds']:.0f} |",
              flush=True)  # fmt: skip
    (args.out / "grpo_settings.json").write_text(json.dumps({"base": base, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
