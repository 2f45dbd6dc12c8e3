"""`folio prepare` on a generated corpus of about 1 GB: time, throughput, peak memory.

Usage: python benchmarks/prepare_large.py [--size-mb 1024] [--files 8] [--tokenizers char bpe]

The corpus is generated deterministically (seeded) in a temporary directory,
deleted afterwards: `--files` files of lines drawn at random from
tinyshakespeare (`../shared/data/tinyshakespeare/input.txt` from the repository,
or `$FOLIO_TINYSHAKESPEARE`). Each tokenizer runs `folio prepare` as a child
process; its wall time and peak resident memory (`os.wait4`'s ru_maxrss, this
child only) are measured. Beside it, the same command on tinyshakespeare alone
(1.1 MB) is the baseline: what memory a prepare needs whatever the corpus.
The table goes to benchmarks/results/prepare_large.txt.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "prepare_large.txt"
LINES_PER_WRITE = 100_000


def shakespeare_path() -> Path:
    env = os.environ.get("FOLIO_TINYSHAKESPEARE")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        sys.exit(f"{path}: tinyshakespeare not found; set $FOLIO_TINYSHAKESPEARE")
    return path


def generate(directory: Path, size_bytes: int, n_files: int, seed: int, source: Path) -> int:
    """Write n_files files of random tinyshakespeare lines, size_bytes in all; return the bytes."""
    lines = [line + "\n" for line in source.read_text(encoding="utf-8").splitlines() if line]
    rng = random.Random(seed)
    written = 0
    for i in range(n_files):
        target = size_bytes * (i + 1) // n_files
        with open(directory / f"part-{i:02d}.txt", "w", encoding="utf-8") as f:
            while written < target:
                block = "".join(rng.choices(lines, k=LINES_PER_WRITE)).encode("utf-8")
                block = block[: target - written]
                block = block[: block.rfind(b"\n") + 1] or block  # whole lines (ASCII text)
                f.write(block.decode("utf-8"))
                written += len(block)
    return written


def run_prepare(sources: list[str], out: Path, extra: list[str]) -> tuple[float, int, str]:
    """Run `folio prepare` as a child: (wall seconds, peak RSS in bytes, its output)."""
    cmd = [sys.executable, "-m", "folio", "prepare", *sources, "--out", str(out), *extra]
    log = out.parent / f"{out.name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    output = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    return wall, usage.ru_maxrss * 1024, output  # ru_maxrss is in KB on Linux


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_table(args: argparse.Namespace, rows: list[tuple]) -> str:
    """The results so far as a text table, written to args.results (after every run)."""
    lines = [
        f"folio prepare on a generated corpus, {datetime.date.today().isoformat()}",
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs; python {platform.python_version()}",
        f"command: python benchmarks/prepare_large.py --size-mb {args.size_mb:g} "
        f"--files {args.files} --tokenizers {' '.join(args.tokenizers)} "
        f"--vocab-size {args.vocab_size} --seed {args.seed}",
        f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| tokenizer | corpus | size (MB) | wall (s) | MB/s | peak RSS (MiB) | tokens |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for kind, label, size, wall, rss, tokens in rows:
        lines.append(
            f"| {kind} | {label} | {size / 1e6:,.1f} | {wall:,.1f} | {size / 1e6 / wall:,.2f} "
            f"| {rss / 2**20:,.0f} | {tokens} |"
        )
    text = "\n".join(lines) + "\n"
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text, encoding="utf-8")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=1024, help="corpus size in MiB")
    p.add_argument("--files", type=int, default=8, help="files the corpus is spread over")
    p.add_argument("--tokenizers", nargs="+", default=["char", "bpe"], choices=["char", "bpe"])
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=RESULTS, help="where the table is written")
    args = p.parse_args()

    source = shakespeare_path()
    tmp = Path(tempfile.mkdtemp(prefix="folio-prepare-large-"))
    rows: list[tuple] = []
    try:
        corpus = tmp / "corpus"
        corpus.mkdir()
        t0 = time.perf_counter()
        n_bytes = generate(corpus, int(args.size_mb * 2**20), args.files, args.seed, source)
        print(f"generated {n_bytes / 1e6:,.0f} MB in {args.files} files, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        for kind in args.tokenizers:
            extra = ["--tokenizer", kind]
            if kind == "bpe":
                extra += ["--vocab-size", str(args.vocab_size)]
            for label, sources, size in (
                ("tinyshakespeare", [str(source)], source.stat().st_size),
                (f"{args.files} files", [str(corpus)], n_bytes),
            ):
                out = tmp / f"ds-{kind}-{len(rows)}"
                wall, rss, output = run_prepare(sources, out, extra)
                tokens = next((x for x in output.splitlines() if x.startswith("train tokens")), "")
                rows.append((kind, label, size, wall, rss, tokens))
                print(f"{kind} {label}: {wall:.1f} s, peak RSS {rss / 2**20:,.0f} MiB; {tokens}",
                      flush=True)  # fmt: skip
                shutil.rmtree(out, ignore_errors=True)
                write_table(args, rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(write_table(args, rows))


if __name__ == "__main__":
    main()
