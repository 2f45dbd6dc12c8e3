"""Chaos benchmark for `folio recipe assistant`: interrupt it again and again, lose nothing.

The tiny recipe runs twice from scratch, in two directories:

- straight: once, never interrupted;
- chaos: started, then stopped by SIGINT, SIGTERM or SIGKILL (chosen at
  random), and started again with the same command, `--interruptions` times;
  then run to the end. The stops are spread over the pipeline: each aims at
  one of the recipe's steps (drawn at random, in order) and lands 0 to
  `--max-delay` seconds after that step's log is (re)created, or wherever
  the recipe is by then.

After every stop, no process may still name the chaos directory once the
stopped step has had its moment to save (a killed recipe's step gets SIGTERM
from the kernel and saves its checkpoint). At the end the two tables must be
equal in every figure (the seconds and the directories aside), and every stage's final weights
(`model.safetensors` of each run directory's latest checkpoint) must be
equal byte for byte. The script exits non-zero if anything differs or any
process outlived its recipe.

    python benchmarks/recipe_chaos.py [--interruptions 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_DIRS = ("base", "sft", "grpo", "reward", "ppo", "dpo")


def recipe(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["recipe", "assistant", "--scale", "tiny", "--out", str(out), "--json"]
    return subprocess.Popen(
        [sys.executable, "-m", "folio", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def processes_naming(path: Path) -> list[int]:
    """Live processes (other than this one) whose command line names `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if str(path).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def wait_for_no_process(path: Path, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while processes_naming(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def step_names(out: Path) -> list[str]:
    """The tiny recipe's steps, in order (what its logs are named after)."""
    sys.path.insert(0, str(ROOT))
    from folio.recipes.assistant import SCALES, Recipe

    return [step.name for step in Recipe(out, SCALES["tiny"]).steps()]


def final_weights(out: Path) -> dict[str, bytes]:
    weights = {}
    for stage in STAGE_DIRS:
        latest = json.loads((out / stage / "latest.json").read_text())
        weights[stage] = (out / stage / latest["checkpoint"] / "model.safetensors").read_bytes()
    return weights


def figures(table: dict) -> dict:
    """The table without what must differ: the seconds, and the directories it names."""
    rows = [
        {k: v for k, v in row.items() if k not in ("seconds", "checkpoint")}
        for row in table["stages"]
    ]
    return {**{k: v for k, v in table.items() if k != "seconds"}, "stages": rows}


def differences(a: dict, b: dict) -> list[str]:
    out = [k for k in a if k != "stages" and a[k] != b.get(k)]
    for ra, rb in zip(a["stages"], b["stages"], strict=True):
        out += [f"{ra['stage']}.{k}: {ra[k]} != {rb.get(k)}" for k in ra if ra[k] != rb.get(k)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interruptions", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=2.0, help="seconds into a step, at most")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        straight, chaos = Path(tmp) / "straight", Path(tmp) / "chaos"
        proc = recipe(straight)
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
        want = json.loads(out.strip().splitlines()[-1])
        names = step_names(chaos)
        targets = sorted(rng.sample(range(len(names)), min(args.interruptions, len(names))))
        stops, orphans, codes = [], 0, []
        for target in (names[i] for i in targets):
            start = time.time()
            proc = recipe(chaos)
            log = chaos / "logs" / f"{target}.log"
            done = chaos / "stages" / f"{target}.json"
            while proc.poll() is None and not done.exists():
                if log.exists() and log.stat().st_mtime >= start:
                    break
                time.sleep(0.05)
            if proc.poll() is not None:
                raise SystemExit(f"the recipe ended before step {target}: {proc.returncode}")
            delay = rng.uniform(0.0, args.max_delay)
            time.sleep(delay)
            signum = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
            proc.send_signal(signum)
            _, err = proc.communicate()
            codes.append(proc.returncode)
            if not wait_for_no_process(chaos):
                orphans += 1
            last = err.strip().splitlines()[-1] if err.strip() else ""
            stops.append({"step": target, "signal": signal.Signals(signum).name,
                          "into_step_s": round(delay, 2),
                          "exit": proc.returncode, "said": last[:160]})  # fmt: skip
            print(json.dumps(stops[-1]), flush=True)
        proc = recipe(chaos)
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
        got = json.loads(out.strip().splitlines()[-1])
        table_differences = differences(figures(want), figures(got))
        a, b = final_weights(straight), final_weights(chaos)
        same_weights = {stage: a[stage] == b[stage] for stage in STAGE_DIRS}
    result = {
        "interruptions": stops,
        "orphans": orphans,
        "table_differences": table_differences,
        "same_final_weights": same_weights,
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    if orphans or table_differences or not all(same_weights.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
