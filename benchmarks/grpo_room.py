"""GRPO where it has room: the add task, from an SFT model that has half learned it.

GRPO sharpens what a model can already sample: it turns pass@k into pass@1.
On the four-task recipe it finds almost no such room (BENCHMARKS.md): the
SFT model either cannot add at all (pass@8 near pass@1, both near 0) or
already adds, and its count and speaker answers are prompt-blind guesses.
This benchmark makes the case GRPO is for and measures it, with the
comparison that keeps it honest:

1. `folio tasks make --tasks add --n 6000 --n-test 500 --seed 0`;
2. a base model: `--base RUN` (with `--mix-data`, its prepared data), or the
   recipe's `laptop` base, pretrained here;
3. SFT on add, stopped at the first eval whose loss on held-out
   conversations is at most `--sft-target` (0.75 nats): addition is half
   learned there (pass@1 about 0.25, pass@8 about 0.5), so the model's
   samples are right for a reason some of the time. The stop is a loss, not
   a step count: where the skill appears moves with the machine's sums (bf16
   on 1 or 2 threads moved pass@1 at step 750 from 0.25 to 0.10). The
   validation conversations are the last `--n-val` (500) of the training file, never
   the test prompts;
4. GRPO on add from that model, for each `--lr` (default 3e-5; the `rl`
   preset's 1e-4 drifts further from the SFT model for less gain);
5. the control: the same SFT run to the end of its schedule
   (`--sft-iters`, 1500), what more labelled data buys instead;
6. every model scored by `folio eval tasks` on the 500 held-out add prompts
   (greedy pass@1, pass@8 at temperature 1, 32-token replies), GRPO's KL to
   the SFT model from its run's last held-out eval.

    python benchmarks/grpo_room.py --out /tmp/room [--base RUN --mix-data DIR] [--threads 2]

Finished steps (their records in OUT/records) are skipped on a rerun.
Prints a table and writes OUT/grpo_room.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from folio.recipe import SCALES  # noqa: E402

SFT = ("--preset", "sft", "--mix-fraction", "0.1")
EVAL = ("--k", "8", "--max-new-tokens", "32", "--seed", "0")


def folio(args: list[str], log: Path, threads: int) -> str:
    """Run `python -m folio ARGS --threads N` with its output in `log`; its last stdout line."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "folio", *args], stdout=subprocess.PIPE, stderr=f,
            text=True, env=env, check=False,
        )  # fmt: skip
        f.write(proc.stdout)
    if proc.returncode:
        sys.exit(f"folio {' '.join(args[:2])} failed (rc {proc.returncode}): see {log}")
    print(f"  {' '.join(args[:2])}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def last_eval(run: Path) -> dict:
    """The last eval row of a run's metrics.jsonl."""
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s]
    return [r for r in rows if r.get("eval")][-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--base", type=Path, help="a pretrained character run (default: train one)")
    p.add_argument("--mix-data", type=Path, help="the base's prepared data (with --base)")
    p.add_argument("--n", type=int, default=6000, help="training conversations")
    p.add_argument("--n-test", type=int, default=500, help="held-out prompts")
    p.add_argument(
        "--n-val",
        type=int,
        default=500,
        help="training conversations moved to val.jsonl: SFT's validation and stop rule",
    )
    p.add_argument(
        "--sft-iters", type=int, default=1500, help="SFT's schedule (the control's length)"
    )
    p.add_argument("--sft-target", type=float, default=0.75, help="held-out loss that stops SFT")
    p.add_argument("--grpo-iters", type=int, default=2000)
    p.add_argument("--lr", type=float, nargs="+", default=[3e-5])
    p.add_argument("--dtype", default="auto", help="SFT precision (GRPO runs in float32)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if (a.base is None) != (a.mix_data is None):
        p.error("--base and --mix-data go together")
    o = a.out.resolve()
    for d in ("logs", "records"):
        (o / d).mkdir(parents=True, exist_ok=True)
    th = ["--threads", str(a.threads)]

    def step(name: str, args: list[str], parse: bool = False) -> dict:
        record = o / "records" / f"{name}.json"
        if record.exists():
            return json.loads(record.read_text())
        line = folio(args, o / "logs" / f"{name}.log", a.threads)
        result = json.loads(line) if parse else {}
        record.with_suffix(".tmp").write_text(json.dumps(result))
        record.with_suffix(".tmp").replace(record)
        return result

    base, data = a.base, a.mix_data
    if base is None:
        base, data = o / "base", o / "data"
        step("data", ["prepare", "shakespeare", "--out", str(data), "--tokenizer", "char"])
        step("base", ["train", "--data", str(data), *SCALES["laptop"].base, "--out", str(base),
                      "--quiet", *th])  # fmt: skip
    tasks = o / "tasks"
    test = str(tasks / "test.jsonl")
    step("tasks", ["tasks", "make", "--tasks", "add", "--n", str(a.n), "--n-test",
                   str(a.n_test), "--seed", "0", "--out", str(tasks)])  # fmt: skip

    if not (tasks / "val.jsonl").exists():
        lines = (tasks / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        if not 0 < a.n_val < len(lines):
            p.error(f"--n-val must be between 1 and {len(lines) - 1}, got {a.n_val}")
        for name, part in (("val.jsonl", lines[-a.n_val :]), ("train.jsonl", lines[: -a.n_val])):
            (tasks / f"{name}.tmp").write_text("".join(part), encoding="utf-8")
            (tasks / f"{name}.tmp").replace(tasks / name)

    def score(name: str, run: Path) -> dict:
        r = step(f"eval-{name}", ["eval", "tasks", "--checkpoint", str(run), "--data", test,
                                  *EVAL, "--json"], parse=True)  # fmt: skip
        return r["overall"]

    rows: dict[str, dict] = {}
    stop = ("--eval-interval", "25", "--eval-prompts", "0",
            "--set", f"train.target_val_loss={a.sft_target}")  # fmt: skip
    for name, flags in (("sft", stop), ("control", ("--eval-interval", "250"))):
        run = o / name
        step(name, ["sft", "--init-from", f"run:{base}", "--data", str(tasks), "--mix-data",
                    str(data), *SFT, *flags, "--dtype", a.dtype, "--max-iters", str(a.sft_iters),
                    "--out", str(run), "--quiet", *th])  # fmt: skip
        rows[name] = score(name, run) | {"steps": last_eval(run)["step"]}
    for lr in a.lr:
        name, run = f"grpo-{lr:g}", o / f"grpo-{lr:g}"
        step(name, ["rl", "--algo", "grpo", "--init-from", f"run:{o / 'sft'}", "--tasks", "add",
                    "--max-iters", str(a.grpo_iters), "--rl.dynamic_sampling", "4",
                    "--set", f"train.learning_rate={lr}", "--train.eval_interval", "250",
                    "--out", str(run), "--quiet", *th])  # fmt: skip
        rows[name] = score(name, run) | {"steps": a.grpo_iters, "kl": last_eval(run)["kl"]}

    sft = rows["sft"]["pass_at_1"]
    print("| model | steps | add pass@1 | vs SFT (points) | pass@8 | KL to SFT (nats/reply) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        kl = f"{r['kl']:.2f}" if "kl" in r else "-"
        gain = 100 * (r["pass_at_1"] - sft)
        print(f"| {name} | {r['steps']} | {r['pass_at_1']:.3f} | {gain:+.1f} | "
              f"{r['pass_at_k']:.3f} | {kl} |")  # fmt: skip
    tmp = o / "grpo_room.json.tmp"
    tmp.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
    tmp.replace(o / "grpo_room.json")


if __name__ == "__main__":
    main()
