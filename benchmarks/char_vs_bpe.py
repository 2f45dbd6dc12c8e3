"""Character model against BPE models on the same text, at equal training time, in bits per byte.

Prepares one corpus (default: the Shakespeare plays, `folio prepare
shakespeare`) once per tokenizer (char, and BPE at each vocabulary size), then
trains the same preset on each for the same wall-clock budget (`--max-time`,
constant learning rate after warmup so no run is cut mid-decay) and scores the
final checkpoint with `folio eval --splits val` over the whole val split. Loss
per token does not compare across tokenizers; bits per byte (the summed loss
over the val tokens, in bits, over the UTF-8 bytes of the val text) does.

    python benchmarks/char_vs_bpe.py --max-time 120 --vocab-sizes 512 2048 8192

Writes benchmarks/results/char-vs-bpe.log (every command's output) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _folio(*args: object) -> list[str]:
    return [sys.executable, "-m", "folio", *(str(a) for a in args)]


def _run(cmd: list[str], log: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.append(f"$ folio {' '.join(cmd[3:])}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", nargs="+", default=["shakespeare"], help="sources for folio prepare")
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--preset", default="demo")
    p.add_argument("--max-time", type=float, default=120.0, help="training seconds per model")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--set", action="append", default=[], help="extra --set for every run")
    p.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "char-vs-bpe.log")
    args = p.parse_args(argv)
    tokenizers = [("char", None)] + [("bpe", v) for v in args.vocab_sizes]
    overrides = [
        "train.lr_schedule=constant",
        "train.max_iters=1000000",
        "train.eval_interval=1000000",
        *args.set,
    ]
    log: list[str] = [f"# {date.today()}, char vs BPE at {args.max_time:g} s of training each"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="folio-char-vs-bpe-") as tmp:
        for kind, vocab in tokenizers:
            name = kind if vocab is None else f"bpe-{vocab}"
            data, run = Path(tmp) / f"data-{name}", Path(tmp) / f"run-{name}"
            cmd = _folio("prepare", *args.corpus, "--out", data, "--tokenizer", kind)
            if vocab is not None:
                cmd += ["--vocab-size", str(vocab)]
            _run(cmd, log)
            meta = json.loads((data / "meta.json").read_text())
            train = _folio(
                "train", "--data", data, "--out", run, "--preset", args.preset,
                "--seed", args.seed, "--max-time", args.max_time, "--quiet", "--json",
                *[a for s in overrides for a in ("--set", s)],
            )  # fmt: skip
            start = time.perf_counter()
            result = json.loads(_run(train, log).strip().splitlines()[-1])
            wall = time.perf_counter() - start
            ev = json.loads(
                _run(_folio("eval", "--checkpoint", run, "--splits", "val", "--json"), log)
            )
            rows.append(
                {
                    "tokenizer": name,
                    "vocab_size": meta["vocab_size"],
                    "bytes_per_token": meta["val_bytes"] / meta["val_tokens"],
                    "params": result.get("params"),
                    "steps": ev["step"],
                    "train_s": result.get("seconds"),
                    "wall_s": wall,
                    "tokens_per_s": result.get("tokens_per_s"),
                    "val_loss": ev["val_loss"],
                    "val_bits_per_byte": ev["val_bits_per_byte"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    table = [
        "| tokenizer | vocab | bytes/token | params | steps | tokens/s | val loss (nats/token) | val bits/byte |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "-"
        table.append(
            f"| {r['tokenizer']} | {r['vocab_size']:,} | {r['bytes_per_token']:.2f} | {params} | "
            f"{r['steps']:,} | {r['tokens_per_s']:,.0f} | {r['val_loss']:.4f} | "
            f"{r['val_bits_per_byte']:.4f} |"
        )
    print("\n".join(table))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text("\n".join(log) + "\n" + "\n".join(table) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
