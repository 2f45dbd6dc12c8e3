"""`folio prepare --tokenizer bpe` on long runs without whitespace: time, and Ctrl-C latency.

GPT-2's pre-tokenization regex makes a run of letters one piece, so random DNA
(ACGT) or text written without spaces (Chinese) reaches the BPE trainer as one
huge piece, where the merges cost time quadratic in its length (issue 19,
item 16). This script generates such a corpus (seeded), runs `python -m folio
prepare` on it as a child process and reports the wall time; with
`--interrupt-after S` it sends SIGINT (Ctrl-C) after S seconds instead and
reports how long the child took to exit after it.

Usage:
    python benchmarks/bpe_long_runs.py [--root CHECKOUT] [--kinds dna cjk]
        [--sizes 250000 500000 1000000] [--vocab-size 512] [--timeout 300]
        [--interrupt-after S]

`--root` is the checkout whose `folio` is measured (default: this one), so the
code at an earlier commit can be measured side by side with the same script:
    git archive START | tar -x -C /tmp/before
    python benchmarks/bpe_long_runs.py --root /tmp/before
A run past `--timeout` seconds is killed and reported as "> N s (stopped)".
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
CJK_FIRST, CJK_COUNT = 0x4E00, 2000  # 2,000 common-range ideographs, all \p{L}


def make_text(kind: str, n: int, seed: int) -> str:
    """`n` characters without a space: random DNA, or ideographs with Zipf-like frequencies."""
    rng = random.Random(seed)
    if kind == "dna":
        return "".join(rng.choices("ACGT", k=n))
    if kind == "cjk":
        alphabet = [chr(CJK_FIRST + i) for i in range(CJK_COUNT)]
        weights = [1.0 / (i + 1) for i in range(CJK_COUNT)]
        return "".join(rng.choices(alphabet, weights=weights, k=n))
    raise ValueError(f"unknown kind {kind!r}")


def run_prepare(
    root: Path, source: Path, out: Path, vocab: int, timeout: float, interrupt_after: float | None
) -> dict[str, object]:
    """Run one `folio prepare` child; its wall time, or its exit latency after a SIGINT."""
    cmd = [sys.executable, "-m", "folio", "prepare", str(source), "--out", str(out),
           "--tokenizer", "bpe", "--vocab-size", str(vocab)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(root))
    t0 = time.perf_counter()
    child = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    result: dict[str, object] = {}
    try:
        if interrupt_after is not None:
            try:
                child.wait(timeout=interrupt_after)
                result["note"] = "finished before the interrupt"
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGINT)
                t_int = time.perf_counter()
                child.wait(timeout=timeout)
                result["exit_after_sigint_s"] = round(time.perf_counter() - t_int, 2)
        else:
            child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        result["stopped_after_s"] = timeout
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["returncode"] = child.returncode
    err = child.stderr.read().decode(errors="replace") if child.stderr else ""
    child.stderr and child.stderr.close()
    result["stderr_tail"] = err.strip().splitlines()[-1:] if err.strip() else []
    meta = out / "meta.json"
    if child.returncode == 0 and meta.is_file():
        m = json.loads(meta.read_text(encoding="utf-8"))
        result["tokens"] = m["train_tokens"] + m["val_tokens"]
        result["vocab_size"] = m["vocab_size"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT, help="checkout whose folio is measured")
    p.add_argument("--kinds", nargs="+", default=["dna", "cjk"], choices=["dna", "cjk"])
    p.add_argument("--sizes", nargs="+", type=int, default=[250_000, 500_000, 1_000_000])
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is stopped")
    p.add_argument("--interrupt-after", type=float, default=None, help="send SIGINT after S s")
    args = p.parse_args()
    print(f"# root {args.root}  vocab {args.vocab_size}  seed {args.seed}", flush=True)
    for kind in args.kinds:
        for n in args.sizes:
            with tempfile.TemporaryDirectory(prefix="folio-bpe-runs-") as tmp:
                source = Path(tmp) / f"{kind}.txt"
                source.write_text(make_text(kind, n, args.seed), encoding="utf-8")
                r = run_prepare(
                    args.root.resolve(), source, Path(tmp) / "data", args.vocab_size,
                    args.timeout, args.interrupt_after,
                )  # fmt: skip
            print(json.dumps({"kind": kind, "chars": n, **r}), flush=True)


if __name__ == "__main__":
    main()
