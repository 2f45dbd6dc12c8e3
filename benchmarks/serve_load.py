"""Load test of `folio serve`: what continuous batching buys, per decode path, and memory.

A `video`-sized GPT (6 layers, 6 heads, 384 wide, block 256, 10.8M parameters)
with random weights: throughput does not depend on what the weights learned,
only on their shapes. The vocabulary is 65 characters, as tinyshakespeare's.
The server runs as a subprocess on 127.0.0.1 and a free port; the clients are
asyncio streams in this process (httpx), so both share the machine's cores.

For each decode path (`--paths`, default: the server's default `auto`, which
is `static` here, and `aot-w8a8`), in one run so the ratios are side by side:

- `folio bench sample` on the same path at batch 1, the same number of new
  tokens, in this process while the server idles: the rate the server's
  single client is held against;
- 1, 8 and 32 concurrent streaming clients, one request of 200 tokens each:
  total tokens/s, time to first token (p50, p99), inter-token latency (the
  gaps between a stream's chunks: median of each request's mean, and p99 of
  all gaps), failures (an error, or a stream without exactly 200 tokens);
- the same 32 requests served one at a time: tokens/s, and the ratio of the
  32-client figure to it;
- for the first path only, memory: the server's resident set (VmRSS) after
  the scenarios, and after `--requests` more (32 at a time, 16 tokens each,
  streamed and not).

Then, in this process, a chat's second turn on the engine's default path: the
prefill of a 230-token history (turn 1), against the prefill of the next turn,
whose first 230 tokens the slot still holds and whose 20 new tokens are all it
computes; best of 5 each, and whether the next turn's first logits equal a
fresh prefill of the whole conversation, bit for bit (`--paths` with no path
measures only this).

    python benchmarks/serve_load.py [--threads 2] [--tokens 200] [--requests 1000]
        [--paths auto aot-w8a8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from folio.checkpoint import clean_state_dict, save_checkpoint  # noqa: E402
from folio.models import GPT, GPTConfig  # noqa: E402
from folio.runtime import cpu_info  # noqa: E402
from folio.tokenizers import CharTokenizer  # noqa: E402

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tinyshakespeare's 65
PROMPTS = ["ROMEO:", "JULIET:\nO", "First Citizen:", "KING RICHARD", "To be", "HAMLET:"]


def make_run(directory: Path) -> Path:
    torch.manual_seed(0)
    tok = CharTokenizer(list(CHARS))
    config = GPTConfig(vocab_size=tok.vocab_size, n_layer=6, n_head=6, n_embd=384, block_size=256)
    model = GPT(config).eval()
    save_checkpoint(directory, clean_state_dict(model), config, tok, {"step": 0})
    return directory


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return kb / 1024


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def stream_one(client: httpx.AsyncClient, url: str, i: int, tokens: int) -> dict:
    body = {
        "model": "video",
        "prompt": PROMPTS[i % len(PROMPTS)],
        "max_tokens": tokens,
        "temperature": 1.0,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    arrivals, usage = [], None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "why": f"HTTP {r.status_code}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
                elif chunk["choices"] and chunk["choices"][0]["text"]:
                    arrivals.append(time.perf_counter())
    except httpx.HTTPError as e:
        return {"ok": False, "why": type(e).__name__}
    if usage != tokens or not arrivals:
        return {"ok": False, "why": f"{usage} tokens"}
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {
        "ok": True,
        "ttft": arrivals[0] - start,
        "gaps": gaps,
        "end": arrivals[-1],
        "start": start,
    }


async def scenario(url: str, clients: int, tokens: int, one_at_a_time: bool = False) -> dict:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        if one_at_a_time:
            results = [await stream_one(client, url, i, tokens) for i in range(clients)]
        else:
            results = await asyncio.gather(
                *(stream_one(client, url, i, tokens) for i in range(clients))
            )
        wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "clients": clients,
        "mode": "one at a time" if one_at_a_time else "concurrent",
        "requests": clients,
        "failures": len(results) - len(ok),
        "failure_reasons": sorted({r["why"] for r in results if not r["ok"]}),
        "wall_s": round(wall, 2),
        "tokens_per_s": round(len(ok) * tokens / wall, 1),
        "ttft_p50_ms": round(1000 * percentile([r["ttft"] for r in ok], 0.5), 1) if ok else None,
        "ttft_p99_ms": round(1000 * percentile([r["ttft"] for r in ok], 0.99), 1) if ok else None,
        "itl_median_ms": round(1000 * statistics.median(statistics.fmean(r["gaps"]) for r in ok), 2)
        if ok
        else None,
        "itl_p99_ms": round(1000 * percentile(gaps, 0.99), 2) if gaps else None,
    }


async def many_requests(url: str, n: int, at_once: int = 32) -> int:
    """n short requests, at_once at a time, half streamed; returns the failures."""
    failures = 0
    async with httpx.AsyncClient(timeout=600) as client:

        async def short(i: int) -> bool:
            body = {
                "model": "video",
                "prompt": PROMPTS[i % len(PROMPTS)],
                "max_tokens": 16,
                "seed": i,
            }
            if i % 2:
                r = await stream_one(client, url, i, 16)
                return r["ok"]
            r = await client.post(url + "/v1/completions", json=body)
            return r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16

        for first in range(0, n, at_once):
            done = await asyncio.gather(*(short(i) for i in range(first, min(n, first + at_once))))
            failures += done.count(False)
    return failures


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return re.search(r"Model name:\s*(.+)", out).group(1).strip()
    except (OSError, AttributeError):
        return "unknown"


def start_server(run: Path, path: str, threads: int) -> tuple[subprocess.Popen, str, list[str]]:
    """`folio serve` on `run` with decode path `path`; its process, URL and first lines."""
    # the server under test runs keyless: a FOLIO_API_KEY set for other servers stays out
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FOLIO_API_KEY", None)
    cmd = [
        sys.executable, "-m", "folio", "serve", f"--checkpoint=video={run}", "--port", "0",
        "--threads", str(threads), "--max-batch", "32", "--max-queue", "64", "--decode", path,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if m := re.search(r"serving on (http://\S+:\d+)", line):
            return proc, m.group(1), lines
    raise SystemExit("the server did not start:\n" + "\n".join(lines))


def bench_sample_rate(path: str, tokens: int, threads: int) -> dict:
    """`folio bench sample` on the same path at batch 1 (auto: the engine's default, static)."""
    from folio.bench.sample import bench_sample
    from folio.sample.paths import parse_decode_path

    name = "static" if path == "auto" else path
    parse_decode_path(name)
    torch.set_num_threads(threads)
    config = GPTConfig(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256)
    r = bench_sample(
        config, batch_sizes=(1,), new_tokens=tokens, paths=(name,), repeats=2, agreement_steps=50
    )
    return {"path": r["grid"][0]["path"], "tokens_per_s": round(r["grid"][0]["tokens_per_s"], 1)}


def measure_path(run: Path, path: str, args: argparse.Namespace, memory: bool) -> dict:
    """Every scenario of one decode path, against its own server."""
    sampled = bench_sample_rate(path, args.tokens, args.threads)
    print(json.dumps({"path": path, "bench_sample": sampled}), flush=True)
    t0 = time.perf_counter()
    proc, url, log = start_server(run, path, args.threads)
    startup = round(time.perf_counter() - t0, 1)
    try:
        info = httpx.get(url + "/v1/models/video").json()["folio"]
        asyncio.run(scenario(url, 2, 20))  # warm-up
        rows = []
        for clients in (1, 8, 32):
            rows.append(asyncio.run(scenario(url, clients, args.tokens)))
            print(json.dumps({"path": path, **rows[-1]}), flush=True)
        rows.append(asyncio.run(scenario(url, 32, args.tokens, one_at_a_time=True)))
        print(json.dumps({"path": path, **rows[-1]}), flush=True)
        mem = None
        if memory:
            before = rss_mib(proc.pid)
            t0 = time.perf_counter()
            mem_failures = asyncio.run(many_requests(url, args.requests))
            mem = {
                "requests": args.requests,
                "failures": mem_failures,
                "rss_before_mib": round(before, 1),
                "rss_after_mib": round(rss_mib(proc.pid), 1),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        stats = httpx.get(url + "/health").json()["models"]["video"]
    finally:
        proc.terminate()
        proc.wait(30)
    one, thirty_two, serial = rows[0], rows[2], rows[3]
    return {
        "path": path,
        "engine_path": info["decode"],
        "batch_invariant": info["batch_invariant"],
        "invariance_note": info["invariance_note"],
        "server_start_s": startup,
        "bench_sample_batch1": sampled,
        "one_client_vs_bench_sample": round(one["tokens_per_s"] / sampled["tokens_per_s"], 3),
        "clients_32_vs_1": round(thirty_two["tokens_per_s"] / one["tokens_per_s"], 2),
        "batched_32_vs_one_at_a_time": round(
            thirty_two["tokens_per_s"] / serial["tokens_per_s"], 2
        ),
        "scenarios": rows,
        "memory": mem,
        "engine_counts": stats,
    }


def handle_for(engine, ids: list[int]):
    """A handle for a request of `ids` that is never submitted (the prefill is driven directly)."""
    from folio.sample.engine import GenerationRequest, Handle

    return Handle(engine, GenerationRequest(ids))


def chat_turns(threads: int, repeats: int = 5) -> dict:
    """Prefill seconds of a long first turn and of the next turn reusing it (engine, in process)."""
    from folio.sample.engine import Engine

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256)
    model = GPT(config).eval()
    history = [1 + (i * 7) % 64 for i in range(230)]
    turn = history + [1 + (i * 5) % 64 for i in range(20)]

    def prefill(engine: Engine, ids: list[int]) -> tuple[float, torch.Tensor]:
        seq = engine._new_sequence(handle_for(engine, ids))
        engine._backend.admit(seq)
        start = time.perf_counter()
        with torch.no_grad():
            logits, _ = engine._backend.prefill([seq])
        seconds = time.perf_counter() - start
        engine._backend.release(seq)
        return seconds, logits[0]

    first, second = float("inf"), float("inf")
    for _ in range(repeats):
        engine = Engine(model, max_batch=1)
        t1, _ = prefill(engine, history)  # a fresh slot: all 230 tokens
        t2, reused = prefill(engine, turn)  # the slot holds the history: 20 tokens
        first, second = min(first, t1), min(second, t2)
    _, fresh = prefill(Engine(model, max_batch=1), turn)
    return {
        "history_tokens": len(history),
        "new_tokens": len(turn) - len(history),
        "first_turn_prefill_ms": round(1000 * first, 1),
        "next_turn_prefill_ms": round(1000 * second, 1),
        "next_vs_first": round(second / first, 3),
        "next_turn_equals_fresh_prefill": bool(torch.equal(reused, fresh)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="server's torch threads")
    ap.add_argument("--tokens", type=int, default=200, help="tokens per streaming request")
    ap.add_argument(
        "--requests", type=int, default=1000, help="requests between the memory readings"
    )
    ap.add_argument("--paths", nargs="*", default=["auto", "aot-w8a8"], help="decode paths")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_load.json"))
    args = ap.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "video")
        paths = [measure_path(run, p, args, memory=i == 0) for i, p in enumerate(args.paths)]
    turns = chat_turns(args.threads)
    print(json.dumps({"chat_turns": turns}), flush=True)
    result = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_info().notable_flags(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "server_threads": args.threads,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "model": "video-sized GPT, random weights (6 layers, 6 heads, 384 wide, block 256, vocab 65)",
        "tokens_per_request": args.tokens,
        "paths": paths,
        "chat_turns": turns,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if not paths:  # only the chat turns: keep the load test's figures
        args.out = str(Path(args.out).with_name("serve_load_chat_turns.json"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k != "paths"}
    summary["paths"] = [{k: v for k, v in p.items() if k != "scenarios"} for p in paths]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
