"""Over-optimisation, shown: PPO against a learned reward model with and without its KL leash,
and DPO, all scored by the hidden rule the reward model only saw through (noisy) labels.

It starts from a finished `folio recipe assistant` OUT: its SFT model, reward
model, PPO run (the `rl` preset's KL coefficient) and DPO run. It adds one
run, the same PPO with the KL coefficient near 0 (`--kl-free`, default
0.001), for longer, so that the policy can chase the reward model's
loopholes. Every eval of the runs logs, on held-out prompts, the reward
model's score (the proxy; PPO only), the gold score and the KL to the SFT
model (k3, nats per reply). The figure OUT/overoptimisation.png has two
panels: proxy reward against gold score (PPO), and gold score against KL
(PPO and DPO).

    python benchmarks/overoptimisation.py --recipe runs/assistant [--iters 400]

Prints each run's first and last eval and writes OUT/overoptimisation.json.
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


def eval_rows(run_dir: Path) -> list[dict]:
    """The eval rows of a run's metrics.jsonl, in order."""
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s]
    return [r for r in rows if r.get("eval")]


def plot(curves: dict[str, list[dict]], out: Path) -> None:
    """Two panels: proxy vs gold (runs with a proxy), gold vs KL (every run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, rows in curves.items():
        rows = [r for r in rows if "gold_score" in r]
        gold = [r["gold_score"] for r in rows]
        if rows and "rm_score" in rows[0]:
            a.plot([r["rm_score"] for r in rows], gold, "o-", ms=3, label=name)
            a.annotate("start", (rows[0]["rm_score"], gold[0]), fontsize=7)
        if rows and "kl" in rows[0]:
            b.plot([r["kl"] for r in rows], gold, "o-", ms=3, label=name)
    a.set_xlabel("proxy reward: the reward model's score (held-out prompts)")
    a.set_ylabel("gold score: the hidden rule")
    a.set_title("PPO: proxy against gold")
    b.set_xlabel("KL to the SFT model (nats per reply)")
    b.set_ylabel("gold score: the hidden rule")
    b.set_title("gold against KL")
    first = next(iter(curves))  # the leash-off run: what the proxy bought, test by test
    rows = [r for r in curves[first] if "gold_word" in r]
    for test, style in (("word", "o-"), ("length", "s-"), ("end", "^-")):
        c.plot([r["step"] for r in rows], [r[f"gold_{test}"] for r in rows], style, ms=3,
               label=f"passes the {test} test")  # fmt: skip
    if rows and "rm_score" in rows[0]:
        proxy = c.twinx()
        proxy.plot([r["step"] for r in rows], [r["rm_score"] for r in rows], "k--", lw=1,
                   label="proxy reward (right axis)")  # fmt: skip
        proxy.set_ylabel("proxy reward")
        proxy.legend(fontsize=8, loc="center right")
    c.set_xlabel("step")
    c.set_ylabel("share of held-out replies")
    c.set_title(f"{first}: the rule's three tests")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left" if ax is c else "best")
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, type=Path, help="a finished recipe's OUT")
    p.add_argument("--kl-free", default="0.001", help="the KL coefficient of the leash-off run")
    p.add_argument("--iters", default="400", help="steps of the leash-off run")
    args = p.parse_args()
    out = args.recipe
    for stage in ("sft", "reward", "ppo", "dpo"):
        if not (out / stage / "latest.json").exists():
            raise SystemExit(f"{out / stage}: missing; run `folio recipe assistant --out {out}`")
    free = out / "ppo-kl0"
    if not (free / "done.json").exists():
        cmd = [sys.executable, "-m", "folio", "rl", "--algo", "ppo", "--train.eval_interval", "10",
               "--init-from", f"run:{out / 'sft'}", "--reward-model", f"run:{out / 'reward'}",
               "--max-iters", args.iters, "--rl.kl_coef", args.kl_free,
               "--rl.max_new_tokens", "64", "--out", str(free),
               "--quiet", "--json"]  # fmt: skip
        if (free / "latest.json").exists():
            cmd.append("--resume")
        print(f"[{time.strftime('%H:%M:%S')}] folio {' '.join(cmd[3:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result |= {"wall_seconds": round(time.perf_counter() - start, 1), "command": cmd[3:]}
        (free / "done.json").write_text(json.dumps(result))
    ppo_kl = json.loads((out / "ppo" / "run.json").read_text()).get("rl", {}).get("kl_coef")
    curves = {
        f"PPO, KL coef {args.kl_free}": eval_rows(free),
        f"PPO, KL coef {ppo_kl if ppo_kl is not None else 'preset'}": eval_rows(out / "ppo"),
        "DPO, beta 0.1": eval_rows(out / "dpo"),
    }
    plot(curves, out / "overoptimisation.png")
    keys = ("step", "rm_score", "gold_score", "gold_word", "gold_length", "gold_end", "kl",
            "end_rate", "reply_tokens")  # fmt: skip
    summary = {
        name: {
            "first": {k: r[k] for k in keys if k in r} if (r := rows[0]) else {},
            "last": {k: r[k] for k in keys if k in r} if (r := rows[-1]) else {},
            "peak_gold": max(x["gold_score"] for x in rows),
            "evals": [{k: x[k] for k in keys if k in x} for x in rows],
        }
        for name, rows in curves.items()
    }
    (out / "overoptimisation.json").write_text(json.dumps(summary, indent=1))
    for name, s in summary.items():
        print(name, "first", s["first"], "last", s["last"], "peak gold", s["peak_gold"])
    print(f"wrote {out / 'overoptimisation.png'}")


if __name__ == "__main__":
    main()
