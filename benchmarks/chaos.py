"""Chaos benchmark: SIGKILL a training run again and again, and count what is lost.

A tiny model trains in a subprocess (`python -m folio train`, the tiny preset,
an eval and checkpoint every 2 steps) on a small generated corpus. The run is
killed with SIGKILL (no handler, no cleanup) many times, at two kinds of moment:

- random: once the run is training, after a random delay of 0 to 0.6 s;
- aimed: within 10 ms of the run's checkpoint temporary directory
  (`.step-N.tmp-PID`) appearing in `checkpoints/`, i.e. in the middle of a
  checkpoint write.

After every kill the run directory must load (`load_checkpoint` plus the
trainer state), its latest checkpoint must be a finished `step-N` directory and
never a temporary one, its step must never go backwards, and the next start
with `--resume` must continue from exactly that step. A kill that breaks any
of these counts as a lost checkpoint; the benchmark exits non-zero if any is.

    python benchmarks/chaos.py --kills 50
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from folio.checkpoint import load_checkpoint
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset
from folio.errors import FolioError

WORDS = ["the", "king", "queen", "of", "and", "to", "my", "lord", "thou", "art", "good"]


def _make_dataset(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    lines = (" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(300))
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_dataset(load_corpus([str(root / "corpus.txt")]), root / "ds")
    return root / "ds"


def _command(data: Path, run_dir: Path, resume: bool, max_iters: int = 10**6) -> list[str]:
    cmd = [sys.executable, "-m", "folio", "train", "--data", str(data), "--preset", "tiny"]
    cmd += ["--out", str(run_dir), "--quiet", "--threads", "1", "--max-iters", str(max_iters)]
    cmd += ["--set", "train.eval_interval=2", "--set", "train.eval_iters=1"]
    return cmd + (["--resume"] if resume else [])


def _temp_dirs(run_dir: Path, pid: int) -> list[str]:
    """The checkpoint temporaries of process `pid` (stale ones of killed runs do not count)."""
    try:
        return [e.name for e in os.scandir(run_dir / "checkpoints") if f".tmp-{pid}" in e.name]
    except OSError:
        return []


def _latest_pointer_step(run_dir: Path) -> int:
    try:
        return int(re.search(r'"step": (\d+)', (run_dir / "latest.json").read_text())[1])
    except (OSError, TypeError):
        return -1


def _wait(proc: subprocess.Popen, done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def run_chaos(kills: int, seed: int, workdir: Path, log=print) -> dict[str, float]:
    rng = random.Random(seed)
    data = _make_dataset(workdir, seed)
    run_dir = workdir / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FOLIO_CACHE": str(workdir / "cache")}
    saved = -1  # the step of the newest checkpoint seen after a kill (-1: none yet)
    mid_checkpoint = lost = 0
    t0 = time.perf_counter()
    for i in range(kills):
        resume = saved > 0
        proc = subprocess.Popen(
            _command(data, run_dir, resume),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        aimed = rng.random() < 0.5
        if aimed:  # a checkpoint write has begun: kill within its first few milliseconds
            _wait(proc, lambda pid=proc.pid: bool(_temp_dirs(run_dir, pid)), 120)
            time.sleep(rng.uniform(0.0, 0.01))
        else:  # training is under way (a new checkpoint exists), then a random delay
            _wait(proc, lambda s=saved: _latest_pointer_step(run_dir) > s, 120)
            time.sleep(rng.uniform(0.0, 0.6))
        during_write = bool(_temp_dirs(run_dir, proc.pid))
        proc.kill()
        out = proc.communicate()[0]
        if proc.returncode != -9:
            log(f"kill {i}: the run had already exited ({proc.returncode}):\n{out}")
            lost += 1
            continue
        mid_checkpoint += during_write
        problem = None
        if resume and f"at step {saved}\n" not in out and "resuming from" in out:
            problem = f"--resume did not continue from step {saved}"
        try:
            ck = load_checkpoint(run_dir)
            ck.trainer_state()
            step = int(ck.state["step"])
            if not re.fullmatch(r"step-\d{8}", ck.path.name):
                problem = f"latest is {ck.path.name}, not a finished checkpoint"
            elif step < saved:
                problem = f"step went backwards: {saved} -> {step}"
        except FolioError as e:
            step = saved
            if saved > 0 or (run_dir / "latest.json").exists():
                problem = f"checkpoint does not load: {e}"
        if problem:
            lost += 1
            log(f"kill {i}: LOST: {problem}")
        saved = max(saved, step)
        log(
            f"kill {i + 1}/{kills}: {'aimed ' if aimed else 'random'} "
            f"{'mid-checkpoint' if during_write else '              '} latest step {saved}"
        )
    # The last word: a resume runs to completion from the newest checkpoint.
    final = subprocess.run(
        _command(data, run_dir, saved > 0, max(saved, 0) + 2),
        capture_output=True,
        text=True,
        env=env,
    )
    finished = final.returncode == 0 and load_checkpoint(run_dir).state["step"] == saved + 2
    if not finished:
        lost += 1
        log(f"final resume failed:\n{final.stdout}{final.stderr}")
    return {
        "kills": kills,
        "mid_checkpoint": mid_checkpoint,
        "lost": lost,
        "final_step": saved + 2 if finished else saved,
        "seconds": time.perf_counter() - t0,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=50, help="SIGKILLs to deliver")
    p.add_argument("--seed", type=int, default=0, help="seed for the corpus and the kill times")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    args = p.parse_args()
    log = (lambda *a: None) if args.quiet else print
    with tempfile.TemporaryDirectory(prefix="folio-chaos-") as tmp:
        r = run_chaos(args.kills, args.seed, Path(tmp), log=log)
    print(f"kills: {r['kills']}")
    print(f"kills that landed mid-checkpoint (temporary directory present): {r['mid_checkpoint']}")
    print(f"checkpoints lost: {r['lost']}")
    print(f"final step after the last resume: {r['final_step']}")
    print(f"total time: {r['seconds']:.1f} s")
    return 1 if r["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
