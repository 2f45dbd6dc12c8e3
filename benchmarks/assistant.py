"""From a pretrained GPT to an assistant, measured: pretrain, make tasks, evaluate, SFT, evaluate.

The pipeline of docs/chatgpt.md, run with the `folio` command at a scale of
about 1-3M parameters (minutes on 2 CPU cores), once per tokenizer:

1. `folio prepare shakespeare` (char, or byte-level BPE with --bpe-vocab tokens);
2. `folio train`: the base model (4 layers, 160 wide, block 128, fp32);
3. `folio tasks make --tasks reverse,add,count,speaker` (once; fixed seed,
   500 test prompts per task);
4. `folio eval tasks --extend-vocab` on the base (it does not know the format);
5. `folio sft --init-from run:BASE --data TASKS --mix-data DATA`;
6. `folio eval tasks` on the fine-tuned model, and `folio eval --splits val
   --max-batches 60` on both models (the first 60 x 32 windows of the
   Shakespeare val split: does the fine-tuned one keep its Shakespeare?).

Every command's output goes to WORK/logs/NAME.log and its parsed result to
WORK/logs/NAME.json; a stage whose .json exists is not run again, so an
interrupted benchmark continues where it stopped (delete WORK to start over).
WORK/summary.json holds every figure and command; a Markdown table is printed.

    python benchmarks/assistant.py --work /tmp/folio-assistant

Keep WORK out of the repository (the default is under /tmp).
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
TASKS = "reverse,add,count,speaker"
BASE = [
    "--preset", "demo", "--model.n_embd", "160", "--batch-size", "16", "--max-iters", "800",
    "--set", "train.max_time=0", "--eval-interval", "200", "--dtype", "float32",
]  # fmt: skip
"""The base model: the demo preset (4 layers, 4 heads, block 128), 160 wide: 1.3M parameters."""
SFT = ["--preset", "sft", "--dtype", "float32", "--mix-fraction", "0.1"]
"""Fine-tuning: the sft preset as it ships, 10% of the rows from the base's Shakespeare."""
EVAL = ["--k", "8", "--max-new-tokens", "32", "--seed", "0"]


def _folio(*args: object) -> list[str]:
    return [sys.executable, "-m", "folio", *(str(a) for a in args)]


class Stages:
    """Runs `folio` commands, each once: output logged, result parsed and kept."""

    def __init__(self, work: Path) -> None:
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands: dict[str, str] = {}

    def run(self, name: str, *args: object, parse_json: bool = True) -> dict:
        cmd = _folio(*args)
        self.commands[name] = "folio " + " ".join(str(a) for a in args)
        done = self.logs / f"{name}.json"
        if done.exists():
            return json.loads(done.read_text())
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.commands[name]}", flush=True)
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        (self.logs / f"{name}.log").write_text(
            f"$ {self.commands[name]}\n{proc.stdout}{proc.stderr}", encoding="utf-8"
        )
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed (see {self.logs / name}.log):\n{proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1]) if parse_json else {}
        result["wall_seconds"] = round(seconds, 1)
        done.write_text(json.dumps(result), encoding="utf-8")
        return result


def pipeline(stages: Stages, work: Path, kind: str, bpe_vocab: int) -> dict:
    """One tokenizer's pipeline; returns its figures."""
    data, base, sft = work / f"data-{kind}", work / f"base-{kind}", work / f"sft-{kind}"
    prepare = ["prepare", "shakespeare", "--out", data, "--tokenizer", kind]
    if kind == "bpe":
        prepare += ["--vocab-size", bpe_vocab]
    stages.run(f"{kind}-prepare", *prepare, parse_json=False)
    pre = stages.run(f"{kind}-pretrain", "train", "--data", data, "--out", base, *BASE,
                     "--quiet", "--json")  # fmt: skip
    test = work / "tasks" / "test.jsonl"
    before = stages.run(f"{kind}-eval-base", "eval", "tasks", "--checkpoint", base,
                        "--data", test, "--extend-vocab", *EVAL, "--json")  # fmt: skip
    tuned = stages.run(f"{kind}-sft", "sft", "--init-from", f"run:{base}", "--data", work / "tasks",
                       "--out", sft, "--mix-data", data, *SFT, "--quiet", "--json")  # fmt: skip
    after = stages.run(f"{kind}-eval-sft", "eval", "tasks", "--checkpoint", sft, "--data", test,
                       *EVAL, "--json")  # fmt: skip
    text = {
        name: stages.run(
            f"{kind}-text-{name}",
            "eval",
            "--checkpoint",
            run,
            "--data",
            data,
            "--splits",
            "val",
            "--max-batches",
            "60",
            "--json",
        )  # fmt: skip
        for name, run in (("base", base), ("sft", sft))
    }
    return {"pretrain": pre, "base": before, "sft_run": tuned, "sft": after, "text": text}


def _row(name: str, report: dict) -> str:
    o = report["overall"]
    cells = [f"{report['tasks'][t]['pass_at_1']:.3f}" for t in TASKS.split(",")]
    return (
        f"| {name} | {' | '.join(cells)} | **{o['pass_at_1']:.3f}** | {o['pass_at_k']:.3f} | "
        f"{o['end_rate']:.3f} | {o['mean_reply_tokens']:.1f} |"
    )


def table(results: dict) -> str:
    """The measured figures as Markdown."""
    head = (
        "| model | reverse | add | count | speaker | pass@1 | pass@8 | ended | reply tokens |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for kind, r in results.items():
        lines.append(_row(f"{kind} base (`--extend-vocab`)", r["base"]))
        lines.append(_row(f"{kind} after SFT", r["sft"]))
    lines.append("")
    lines.append(
        "| tokenizer | params | pretraining | text val loss, base -> SFT | SFT | SFT steps |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|")
    for kind, r in results.items():
        tb, ts = r["text"]["base"], r["text"]["sft"]
        lines.append(
            f"| {kind} | {r['pretrain']['params']:,} | {r['pretrain']['wall_seconds']:.0f} s | "
            f"{tb['val_loss']:.3f} -> {ts['val_loss']:.3f} | "
            f"{r['sft_run']['wall_seconds']:.0f} s | {r['sft_run']['step']} |"
        )
    return "\n".join(lines)


def _cpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {"model": platform.processor()}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "model": fields.get("Model name", "").strip(),
        "cpus": fields.get("CPU(s)", "").strip(),
        "vector_flags": [f for f in flags if f.startswith(("avx", "amx"))],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/folio-assistant"),
                   help="directory for datasets, runs and logs (outside the repository)")  # fmt: skip
    p.add_argument("--tokenizers", default="char,bpe", help="char, bpe or both")
    p.add_argument("--bpe-vocab", type=int, default=1024, help="BPE vocabulary size")
    p.add_argument("--n-train", type=int, default=2000, help="training conversations per task")
    p.add_argument("--n-test", type=int, default=500, help="test prompts per task")
    args = p.parse_args(argv)
    work = args.work.resolve()
    if work.is_relative_to(ROOT):
        raise SystemExit(f"--work {work}: keep the benchmark's files out of the repository")
    stages = Stages(work)
    load_before = os.getloadavg()
    started = time.perf_counter()
    stages.run("tasks", "tasks", "make", "--tasks", TASKS, "--n", args.n_train,
               "--n-test", args.n_test, "--seed", 0, "--out", work / "tasks", "--json")  # fmt: skip
    results = {
        kind: pipeline(stages, work, kind, args.bpe_vocab) for kind in args.tokenizers.split(",")
    }
    summary = {
        "date": str(date.today()),
        "cpu": _cpu(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        "commands": stages.commands,
        "results": results,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(table(results))
    print(f"\nwrote {work / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
