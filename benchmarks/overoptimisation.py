"""Over-optimisation, shown: a policy trained against a learned reward model, with and without
its KL leash, and DPO, scored by the hidden rule the reward model only saw through labels.

From a chat model (an SFT run), each a `folio` command whose JSON result is
kept in WORK/logs/NAME.json (a stage already done is skipped):

1. `folio prefs make`: replies to "Write a line for {SPEAKER} about {word}"
   ranked by the gold rule, 10% of the labels flipped;
2. `folio reward`: the reward model, and its held-out pairwise accuracy;
3. `folio rl --algo ppo` twice: KL coefficient near 0, and the preset's;
4. `folio dpo` on the same pairs.

Every eval of the three runs logs, on held-out prompts, the reward model's
score (PPO), the gold score and the KL to the SFT model. The figure
(WORK/overoptimisation.png) has two panels: proxy reward against gold score,
and gold score against KL, one curve per run. When the leash is off, the
proxy keeps rising while the gold score stalls or falls.

    python benchmarks/overoptimisation.py --sft RUN --work /tmp/folio-overopt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo import cpu_name, folio  # noqa: E402  (the same stage runner)

PPO = ["--max-iters", "300", "--train.eval_interval", "30", "--rl.max_new_tokens", "48"]
RUNS = {"ppo_kl0": ["--rl.kl_coef", "0.001"], "ppo": ["--rl.kl_coef", "0.05"]}


def eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s]
    return [r for r in rows if r.get("eval")]


def plot(curves: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, rows in curves.items():
        kl = [r["kl"] for r in rows if "kl" in r]
        gold = [r["gold_score"] for r in rows if "gold_score" in r]
        if rows and "rm_score" in rows[0]:
            a.plot([r["rm_score"] for r in rows], gold, "o-", label=name)
        if kl:
            b.plot(kl, gold, "o-", label=name)
    a.set_xlabel("proxy reward (reward model score, held-out prompts)")
    a.set_ylabel("gold score (hidden rule)")
    b.set_xlabel("KL to the SFT model (nats per reply)")
    b.set_ylabel("gold score (hidden rule)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", required=True, help="the chat model (a `folio sft` run)")
    p.add_argument("--work", default="/tmp/folio-overopt", help="working directory")
    args = p.parse_args()
    work, sft = Path(args.work), f"run:{args.sft}"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    folio(logs, "prefs", "prefs", "make", "--checkpoint", sft, "--out", work / "prefs", "--n",
          600, "--n-test", 150, "--replies", 4, "--json")  # fmt: skip
    rm = folio(logs, "reward", "reward", "--init-from", sft, "--data", work / "prefs", "--out",
               work / "rm", "--quiet", "--json")  # fmt: skip
    for name, flags in RUNS.items():
        folio(logs, name, "rl", "--algo", "ppo", "--init-from", sft, "--reward-model",
              f"run:{work / 'rm'}", *PPO, *flags, "--out", work / name, "--quiet", "--json")  # fmt: skip
    folio(logs, "dpo", "dpo", "--init-from", sft, "--data", work / "prefs", "--out",
          work / "dpo", "--quiet", "--json")  # fmt: skip
    curves = {name: eval_rows(work / name) for name in (*RUNS, "dpo")}
    plot(curves, work / "overoptimisation.png")
    summary = {
        "machine": cpu_name(),
        "rm_accuracy": rm.get("accuracy"),
        "runs": {n: {"first": rows[0], "last": rows[-1]} for n, rows in curves.items()},
        "commands": {p.stem: json.loads(p.read_text())["command"] for p in logs.glob("*.json")},
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["runs"], indent=1))
    print(f"wrote {work / 'overoptimisation.png'}")


if __name__ == "__main__":
    main()
