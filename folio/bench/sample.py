"""Sampling speed: tokens/s with the KV cache against re-running the context, side by side.

    folio bench sample                       # the video model, a Markdown table
    folio bench sample --json                # one JSON object
    folio bench sample --threads 1 --uncached-tokens 500

Every figure is new tokens x batch / seconds for one `Sampler.generate_ids` run
from an empty prompt (the default start token) at temperature 1, after a short
warmup, with random weights (speed does not depend on what the model learned).
Uncached runs re-run the whole window for every token, so their cost grows
with the context; to keep the default run within a few minutes they may
generate fewer tokens (`--uncached-tokens`), and the cached path is then timed
again over the same number of tokens so that the speedup compares like with
like. On a CPU without native bf16 matmuls (AVX2 only) low-precision rows are
slow and use `--low-precision-tokens` new tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from typing import Any

import torch

from folio.models import GPT, GPTConfig
from folio.runtime import TORCH_DTYPES, cpu_info, machine_name
from folio.sample import Sampler, SamplingConfig
from folio.train.config import preset_model_config


def _tokens_per_s(
    sampler: Sampler, batch: int, tokens: int, use_cache: bool, repeats: int, warmup: int
) -> float:
    """Best of `repeats` timed runs, after one short warmup run."""
    cfg = SamplingConfig(max_new_tokens=tokens, num_samples=batch, use_cache=use_cache, seed=0)
    for _ in sampler.generate_ids([], SamplingConfig(max_new_tokens=warmup, num_samples=batch)):
        pass
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in sampler.generate_ids([], cfg):
            pass
        if sampler.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return tokens * batch / best


def _headlines(rows: list[dict[str, Any]]) -> tuple[float | None, float | None, dict | None]:
    """Batch-1 float32 figures: cached tok/s, uncached tok/s, and the row measuring both."""
    fp32_b1 = [r for r in rows if r["dtype"] == "float32" and r["batch"] == 1]
    cached = next((r["tokens_per_s_cached"] for r in fp32_b1), None)
    matched = next((r for r in fp32_b1 if r["tokens_per_s_uncached"] is not None), None)
    return cached, matched["tokens_per_s_uncached"] if matched else None, matched


def bench_sample(
    preset_config: GPTConfig,
    batch_sizes: tuple[int, ...] = (1, 8),
    new_tokens: int = 500,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    repeats: int = 1,
    uncached_tokens: int | None = None,
    low_precision_tokens: int | None = 50,
    device: str = "cpu",
    warmup_tokens: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Tokens/s cached and uncached for every batch size and dtype, on a randomly initialised model.

    `uncached_tokens` (default: new_tokens) caps the new tokens of uncached runs;
    `low_precision_tokens` caps every non-float32 run on a CPU (None: no cap).
    Returns the grid (one row per dtype, batch and token count) and headline
    figures for batch 1 in float32.
    """
    torch.manual_seed(0)
    model = GPT(preset_config)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for dtype in dtypes:
        sampler = Sampler(model, device=device, dtype=TORCH_DTYPES[dtype])
        full, uncached = new_tokens, uncached_tokens or new_tokens
        if dtype != "float32" and device == "cpu" and low_precision_tokens is not None:
            full = uncached = min(full, low_precision_tokens)
            notes.append(f"{dtype} rows use {full} new tokens: this CPU has no fast {dtype} matmul")
        for batch in batch_sizes:
            # Cached over the full length, then both paths over the uncached length.
            for tokens in dict.fromkeys((full, min(uncached, full))):
                both = tokens == min(uncached, full)
                row = {"dtype": dtype, "batch": batch, "new_tokens": tokens}
                for key, cached in (
                    ("tokens_per_s_cached", True),
                    ("tokens_per_s_uncached", False),
                ):
                    row[key] = (
                        _tokens_per_s(sampler, batch, tokens, cached, repeats, warmup_tokens)
                        if cached or both
                        else None
                    )
                rows.append(row)
                if progress:
                    print(f"measured {row}", file=sys.stderr, flush=True)

    cached, plain, matched = _headlines(rows)
    return {
        "model": {**asdict(preset_config), "params": model.num_params()},
        "device": device,
        "machine": machine_name(torch.device(device)),
        "cpu_flags": cpu_info().notable_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "new_tokens": new_tokens,
        "uncached_new_tokens": matched["new_tokens"] if matched else None,
        "tokens_per_s_cached": cached,
        "tokens_per_s_uncached": plain,
        "speedup": (matched["tokens_per_s_cached"] / matched["tokens_per_s_uncached"])
        if matched
        else None,
        "grid": rows,
        "notes": notes,
    }


def markdown(result: dict[str, Any]) -> str:
    """The grid as a Markdown table, with the notes below it."""
    lines = [
        "| dtype | batch | new tokens | cached tok/s | uncached tok/s | speedup |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["grid"]:
        plain = r["tokens_per_s_uncached"]
        speedup = f"{r['tokens_per_s_cached'] / plain:.1f}x" if plain else "-"
        lines.append(
            f"| {r['dtype']} | {r['batch']} | {r['new_tokens']} | {r['tokens_per_s_cached']:,.0f} "
            f"| {f'{plain:,.0f}' if plain else '-'} | {speedup} |"
        )
    m = result["model"]
    lines.append("")
    lines.append(
        f"Model: {m['n_layer']} layers, {m['n_embd']} wide, block {m['block_size']}, "
        f"{m['params'] / 1e6:.1f}M params (random weights). Device: {result['device']} "
        f"({result['machine']}), {result['threads']} thread(s), torch {result['torch']}, "
        f"best of {result['repeats']}."
    )
    lines.extend(f"Note: {n}." for n in result["notes"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_sample(
        preset_model_config(args.preset),
        batch_sizes=tuple(args.batch_sizes),
        new_tokens=args.new_tokens,
        dtypes=tuple(args.dtypes),
        repeats=args.repeats,
        uncached_tokens=args.uncached_tokens,
        low_precision_tokens=args.low_precision_tokens or None,
        device=args.device,
        progress=True,
    )
    print(json.dumps(result) if args.json else markdown(result))
