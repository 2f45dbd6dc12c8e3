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

Finished steps (their records in OUT/records) are skipped on a rerun, and a training
step that was stopped part-way resumes from its last checkpoint.
Prints a table and writes OUT/grpo_room.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from folio.errors import FolioError  # noqa: E402
from folio.recipes.assistant import SCALES  # noqa: E402
from folio.recipes.runner import Supervisor, last_eval  # noqa: E402

SFT = ("--preset", "sft", "--mix-fraction", "0.1")
EVAL = ("--k", "8", "--max-new-tokens", "32", "--seed", "0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    a = p.parse_args(argv)
    if (a.base is None) != (a.mix_data is None):
        p.error("--base and --mix-data go together")
    if a.n_val < 1 or a.n_val >= a.n:
        p.error(f"--n-val must be between 1 and {a.n - 1} (below --n), got {a.n_val}")
    return a


class Room:
    """The steps of one benchmark in OUT; a step whose record exists is not rerun."""

    def __init__(self, a: argparse.Namespace, runner: Supervisor | None = None) -> None:
        self.a, self.out = a, a.out.resolve()
        self.runner = runner or Supervisor()  # each step its own process, as a user would run it
        self.threads = ["--threads", str(a.threads)]
        self.tasks = self.out / "tasks"

    def step(self, name: str, argv: list[str], parse: bool = False) -> dict:
        """`folio ARGV` (its log in OUT/logs), recorded in OUT/records/NAME.json."""
        record = self.out / "records" / f"{name}.json"
        if record.exists():
            return json.loads(record.read_text(encoding="utf-8"))
        if "--out" in argv and (Path(argv[argv.index("--out") + 1]) / "latest.json").exists():
            argv = [*argv, "--resume"]  # a training step that was stopped part-way
        started = time.perf_counter()
        result = self.runner.run(argv, self.out / "logs" / f"{name}.log", parse, name)
        if result.get("stopped") in ("terminated", "interrupted"):
            raise FolioError(f"{name} was stopped at step {result.get('step')}; rerun to resume")
        print(f"  {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(result), encoding="utf-8")
        tmp.replace(record)
        return result

    def base(self) -> tuple[Path, Path]:
        """The base run and its prepared data: the given ones, or the recipe's laptop base."""
        if self.a.base is not None:
            return self.a.base, self.a.mix_data
        base, data = self.out / "base", self.out / "data"
        self.step("data", ["prepare", "shakespeare", "--out", str(data), "--tokenizer", "char"])
        argv = ["train", "--data", str(data), *SCALES["laptop"].base, "--out", str(base),
                "--quiet", "--json", *self.threads]  # fmt: skip
        self.step("base", argv, parse=True)
        return base, data

    def make_tasks(self) -> None:
        """The add conversations, with the last --n-val training ones moved to val.jsonl."""
        a, tasks = self.a, self.tasks
        self.step("tasks", ["tasks", "make", "--tasks", "add", "--n", str(a.n), "--n-test",
                            str(a.n_test), "--seed", "0", "--out", str(tasks)])  # fmt: skip
        if (tasks / "val.jsonl").exists():
            return
        lines = (tasks / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        for name, part in (("val.jsonl", lines[-a.n_val :]), ("train.jsonl", lines[: -a.n_val])):
            (tasks / f"{name}.tmp").write_text("".join(part), encoding="utf-8")
            (tasks / f"{name}.tmp").replace(tasks / name)

    def score(self, name: str, run: Path) -> dict:
        """pass@1, pass@8 and the rest on the held-out add prompts."""
        argv = ["eval", "tasks", "--checkpoint", str(run), "--data",
                str(self.tasks / "test.jsonl"), *EVAL, "--json"]  # fmt: skip
        return self.step(f"eval-{name}", argv, parse=True)["overall"]

    def sft(self, base: Path, data: Path) -> dict[str, dict]:
        """SFT stopped by held-out loss, and the control run to the end of its schedule."""
        a, rows = self.a, {}
        stop = ("--eval-interval", "25", "--eval-prompts", "0",
                "--set", f"train.target_val_loss={a.sft_target}")  # fmt: skip
        for name, flags in (("sft", stop), ("control", ("--eval-interval", "250"))):
            run = self.out / name
            self.step(name, ["sft", "--init-from", f"run:{base}", "--data", str(self.tasks),
                             "--mix-data", str(data), *SFT, *flags, "--dtype", a.dtype,
                             "--max-iters", str(a.sft_iters), "--out", str(run), "--quiet",
                             "--json", *self.threads], parse=True)  # fmt: skip
            rows[name] = self.score(name, run) | {"steps": last_eval(run)["step"]}
        return rows

    def grpo(self, lr: float) -> dict:
        """GRPO on add from the stopped SFT model at learning rate lr."""
        name, run = f"grpo-{lr:g}", self.out / f"grpo-{lr:g}"
        self.step(name, ["rl", "--algo", "grpo", "--init-from", f"run:{self.out / 'sft'}",
                         "--tasks", "add", "--max-iters", str(self.a.grpo_iters),
                         "--rl.dynamic_sampling", "4", "--set", f"train.learning_rate={lr}",
                         "--train.eval_interval", "250", "--out", str(run), "--quiet",
                         "--json", *self.threads], parse=True)  # fmt: skip
        return self.score(name, run) | {"steps": self.a.grpo_iters, "kl": last_eval(run)["kl"]}

    def run(self) -> dict[str, dict]:
        base, data = self.base()
        self.make_tasks()
        rows = self.sft(base, data)
        for lr in self.a.lr:
            rows[f"grpo-{lr:g}"] = self.grpo(lr)
        return rows


def table(rows: dict[str, dict]) -> str:
    """The rows as markdown, each model's gain in points over the stopped SFT model."""
    sft = rows["sft"]["pass_at_1"]
    out = ["| model | steps | add pass@1 | vs SFT (points) | pass@8 | KL to SFT (nats/reply) |",
           "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in rows.items():
        kl = f"{r['kl']:.2f}" if "kl" in r else "-"
        gain = 100 * (r["pass_at_1"] - sft)
        out.append(f"| {name} | {r['steps']} | {r['pass_at_1']:.3f} | {gain:+.1f} | "
                   f"{r['pass_at_k']:.3f} | {kl} |")  # fmt: skip
    return "\n".join(out)


def write_result(a: argparse.Namespace, rows: dict[str, dict], argv: list[str]) -> Path:
    """OUT/grpo_room.json: the command's arguments and the rows (written whole, then renamed)."""
    out = a.out.resolve() / "grpo_room.json"
    out.with_suffix(".tmp").write_text(json.dumps({"argv": argv, "rows": rows}, indent=1))
    out.with_suffix(".tmp").replace(out)
    return out


def main() -> None:
    a = parse_args()
    try:
        rows = Room(a).run()
    except FolioError as e:
        sys.exit(f"grpo_room: {e}")
    except KeyboardInterrupt:
        sys.exit("grpo_room: interrupted; rerun the same command to continue")
    print(table(rows))
    write_result(a, rows, sys.argv[1:])


if __name__ == "__main__":
    main()
