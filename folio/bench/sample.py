"""Sampling speed: tokens/s of every decode path, side by side, and low precision's cost in accuracy.

    folio bench sample                       # the video model, a Markdown table
    folio bench sample --json                # one JSON object
    folio bench sample --threads 1 --paths uncached module static compiled-int8

A path is how the cached step runs (`Sampler(decode=..., weights=...)`):

- `uncached`: the video's loop, the whole window re-run for every token;
- `module`: the model's forward with a `KVCache` (`module-bf16`: under bf16 autocast);
- `static`, `static-bf16`, `static-int8`, `static-w8a8`: `StaticDecoder`, eager,
  with float32, bfloat16 or int8 weights, or int8 weights and activations
  (`folio.models.w8a8`);
- `compiled`, `compiled-bf16`, `compiled-int8`, `compiled-w8a8`: the same with its
  one-token step compiled by `torch.compile` (the compile time is reported, not timed);
- `aot`, `aot-bf16`, `aot-int8`, `aot-w8a8`: the step compiled ahead of time by
  AOTInductor (`folio.sample.aot`; compiled once per shape and kept in `$FOLIO_CACHE`).

Every figure is new tokens x batch / seconds for one `Sampler.generate_ids`
run from an empty prompt (the default start token) at temperature 1, after a
short warmup, with random weights (speed does not depend on what the model
learned). The paths take turns, `--repeats` rounds, best kept, so that a
noisy neighbour slows every path alike rather than one. Uncached runs re-run
the whole window for every token, so their cost grows with the context; they
generate `--uncached-tokens` new tokens to keep the run short.

For each path with bfloat16, int8 or w8a8 weights, the float32 static path's greedy
tokens over `--agreement-steps` steps (crossing block_size, so the window
slides as in sampling) are fed back to both paths, and the table reports how
often the two pick the same greedy token and the largest difference of any
logit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

import torch

from folio.config.run import preset_model_config
from folio.errors import FolioError
from folio.models import GPT, GPTConfig
from folio.runtime import cpu_info, machine_name
from folio.sample import Sampler, SamplingConfig
from folio.sample.decode import StaticDecoder

PATHS = {
    "uncached": ("module", "float32", None),
    "module": ("module", "float32", None),
    "module-bf16": ("module", "float32", torch.bfloat16),
    "static": ("static", "float32", None),
    "static-bf16": ("static", "bfloat16", None),
    "static-int8": ("static", "int8", None),
    "static-w8a8": ("static", "w8a8", None),
    "compiled": ("compiled", "float32", None),
    "compiled-bf16": ("compiled", "bfloat16", None),
    "compiled-int8": ("compiled", "int8", None),
    "compiled-w8a8": ("compiled", "w8a8", None),
    "aot": ("aot", "float32", None),
    "aot-bf16": ("aot", "bfloat16", None),
    "aot-int8": ("aot", "int8", None),
    "aot-w8a8": ("aot", "w8a8", None),
}
"""Path name -> (Sampler decode, weights, autocast dtype)."""
DEFAULT_PATHS = ("uncached", "module", "static", "compiled", "compiled-bf16", "compiled-int8")


def _run(sampler: Sampler, batch: int, tokens: int, use_cache: bool) -> float:
    """Seconds for one `generate_ids` call of `tokens` new tokens."""
    cfg = SamplingConfig(max_new_tokens=tokens, num_samples=batch, use_cache=use_cache, seed=0)
    start = time.perf_counter()
    for _ in sampler.generate_ids([], cfg):
        pass
    if sampler.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def forced_logits(
    decoder: StaticDecoder, tokens: list[int], prompt: int, keep: int
) -> torch.Tensor:
    """The logits (steps, V) a decoder gives at each step when fed `tokens` (teacher forcing).

    Step s conditions on tokens[start : prompt + s], with the window slid to
    the last `keep` tokens whenever it would exceed block_size, exactly as
    `Sampler` does; batch 1.
    """
    window = decoder.config.block_size
    device = decoder.wte.device
    ids = torch.tensor([tokens], device=device)  # (1, N)
    n, start, filled, out = prompt, 0, False, []
    with torch.no_grad():
        for _ in range(len(tokens) - prompt):
            if n - start > window:
                start, filled = n - keep, False
            if filled:
                out.append(decoder.step(ids[:, n - 1 : n])[0])
            else:
                out.append(decoder.prefill(ids[:, start:n])[0])
                filled = True
            n += 1
    return torch.stack(out)  # (steps, V)


def precision_report(
    model: GPT, sampler: Sampler, steps: int = 300, keep: int | None = None
) -> dict[str, float]:
    """A low-precision sampler against float32: greedy agreement and max logit difference.

    The float32 static path decodes `steps` greedy tokens from the start
    token; both paths are then fed those tokens, and at each step we compare
    their argmax and their logits. Returns agreement (fraction of steps with
    the same greedy token), max_logit_diff and the float32 logits' range.
    """
    reference = Sampler(model, decode="static", check_memory=False)
    cfg = SamplingConfig(max_new_tokens=steps, temperature=0.0, context_keep=keep)
    greedy = [int(s.ids[0]) for s in reference.decode_steps([], cfg)]
    tokens = [reference.start_id, *greedy]
    k = min(keep or max(1, model.config.block_size // 2), model.config.block_size)
    ref = forced_logits(reference.static_decoder(1), tokens, 1, k)  # (steps, V)
    low = forced_logits(sampler.static_decoder(1), tokens, 1, k)
    if ref.argmax(-1).tolist() != greedy:  # the replay must be the sampler's own computation
        raise RuntimeError("teacher-forced float32 logits do not reproduce the greedy tokens")
    return {
        "steps": steps,
        "agreement": float((low.argmax(-1) == ref.argmax(-1)).float().mean()),
        "max_logit_diff": float((low - ref).abs().max()),
        "logit_range": float(ref.max() - ref.min()),
    }


def _sampler(model: GPT, path: str, device: str) -> Sampler:
    decode, weights, dtype = PATHS[path]
    return Sampler(model, device=device, dtype=dtype, decode=decode, weights=weights)


def _time_paths(
    samplers: dict[str, Sampler],
    batch_sizes: tuple[int, ...],
    new_tokens: int,
    uncached: int,
    repeats: int,
    warmup_tokens: int,
    progress: bool,
) -> tuple[dict[tuple[str, int], float], dict[str, float]]:
    """The best tokens/s of each (path, batch), the paths taking turns; and each compile's seconds."""
    compile_s: dict[str, float] = {}
    best: dict[tuple[str, int], float] = {}
    for batch in batch_sizes:
        for p, s in samplers.items():  # warm up; the first compiled step compiles
            start = time.perf_counter()
            _run(s, batch, warmup_tokens, p != "uncached")
            if PATHS[p][0] in ("compiled", "aot"):
                compile_s[f"{p} batch {batch}"] = round(time.perf_counter() - start, 2)
        for _ in range(repeats):
            for p, s in samplers.items():
                tokens = uncached if p == "uncached" else new_tokens
                seconds = _run(s, batch, tokens, p != "uncached")
                key = (p, batch)
                best[key] = max(best.get(key, 0.0), tokens * batch / seconds)
        if progress:
            done = {p: round(best[(p, batch)]) for p in samplers}
            print(f"batch {batch}: tok/s {done}", file=sys.stderr, flush=True)
    return best, compile_s


def bench_sample(
    preset_config: GPTConfig,
    batch_sizes: tuple[int, ...] = (1, 8),
    new_tokens: int = 500,
    paths: tuple[str, ...] = DEFAULT_PATHS,
    repeats: int = 2,
    uncached_tokens: int | None = None,
    device: str = "cpu",
    warmup_tokens: int = 8,
    agreement_steps: int = 300,
    progress: bool = False,
) -> dict[str, Any]:
    """Tokens/s of every path and batch size on a randomly initialised model, paths taking turns.

    `uncached_tokens` (default: new_tokens) caps the new tokens of uncached
    runs. Returns the grid (one row per path and batch size), the compile
    times, the precision reports, and headline figures for batch 1: the
    default path's tok/s, the uncached tok/s, and the fastest path.
    """
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise FolioError(f"unknown path(s) {unknown} (known: {', '.join(PATHS)})")
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = GPT(preset_config).eval()
    samplers = {p: _sampler(model, p, device) for p in paths}
    default_path = Sampler(model, device=device).path()
    names = {p: s.path(use_cache=p != "uncached") for p, s in samplers.items()}
    uncached = min(uncached_tokens or new_tokens, new_tokens)
    best, compile_s = _time_paths(
        samplers, batch_sizes, new_tokens, uncached, repeats, warmup_tokens, progress
    )
    rows = [
        {
            "path": names[p],
            "name": p,
            "batch": batch,
            "new_tokens": uncached if p == "uncached" else new_tokens,
            "tokens_per_s": best[(p, batch)],
        }
        for batch in batch_sizes
        for p in paths
    ]
    precision = {
        p: precision_report(model, s, agreement_steps)
        for p, s in samplers.items()
        if PATHS[p][1] != "float32" and 1 in batch_sizes
    }
    b1 = {r["name"]: r for r in rows if r["batch"] == 1}
    default_row = next((r for r in b1.values() if r["path"] == default_path), None)
    cached = default_row["tokens_per_s"] if default_row else None
    plain = b1["uncached"]["tokens_per_s"] if "uncached" in b1 else None
    fastest = max((r for r in b1.values() if r["name"] != "uncached"), default=None,
                  key=lambda r: r["tokens_per_s"])  # fmt: skip
    return {
        "model": {**asdict(preset_config), "params": model.num_params()},
        "device": device,
        "machine": machine_name(torch.device(device)),
        "cpu_flags": cpu_info().notable_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "repeats": repeats,
        "new_tokens": new_tokens,
        "uncached_new_tokens": uncached,
        "default_path": default_path,
        "tokens_per_s_cached": cached,
        "tokens_per_s_uncached": plain,
        "speedup": cached / plain if cached and plain else None,
        "fastest_path": fastest["path"] if fastest else None,
        "tokens_per_s_fastest": fastest["tokens_per_s"] if fastest else None,
        "compile_s": compile_s,
        "precision": {names[p]: r for p, r in precision.items()},
        "grid": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    """The grid as a Markdown table, with the precision reports and the setting below it."""
    lines = [
        "| path | batch | new tokens | tok/s | vs uncached | greedy agreement vs fp32 "
        "| max logit diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    plain = {r["batch"]: r["tokens_per_s"] for r in result["grid"] if r["name"] == "uncached"}
    for r in result["grid"]:
        ratio = f"{r['tokens_per_s'] / plain[r['batch']]:.1f}x" if r["batch"] in plain else "-"
        prec = result["precision"].get(r["path"]) if r["batch"] == 1 else None
        agree = f"{prec['agreement']:.1%} of {prec['steps']}" if prec else "-"
        diff = f"{prec['max_logit_diff']:.4f}" if prec else "-"
        lines.append(
            f"| {r['path']} | {r['batch']} | {r['new_tokens']} | {r['tokens_per_s']:,.0f} "
            f"| {ratio} | {agree} | {diff} |"
        )
    m = result["model"]
    lines.append("")
    lines.append(f"path: {result['default_path']} (the default)")
    if result["fastest_path"]:
        lines.append(
            f"fastest at batch 1: {result['fastest_path']}, "
            f"{result['tokens_per_s_fastest']:,.0f} tok/s"
        )
    if result["compile_s"]:
        shown = ", ".join(f"{k} {v:.1f} s" for k, v in result["compile_s"].items())
        lines.append(f"compile and warmup: {shown}")
    lines.append(
        f"Model: {m['n_layer']} layers, {m['n_embd']} wide, block {m['block_size']}, "
        f"{m['params'] / 1e6:.1f}M params (random weights). Device: {result['device']} "
        f"({result['machine']}; {', '.join(result['cpu_flags'])}), {result['threads']} "
        f"thread(s), torch {result['torch']}, best of {result['repeats']} rounds, "
        f"load average {result['load_average'][0]} before, {result['load_average'][1]} after."
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    """Measure and print (`folio bench sample`)."""
    for flag in ("new_tokens", "uncached_tokens", "repeats", "agreement_steps"):
        if getattr(args, flag) < 1:
            raise FolioError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_sample(
        preset_model_config(args.preset),
        batch_sizes=tuple(args.batch_sizes),
        new_tokens=args.new_tokens,
        paths=tuple(args.paths),
        repeats=args.repeats,
        uncached_tokens=args.uncached_tokens,
        device=args.device,
        agreement_steps=args.agreement_steps,
        progress=True,
    )
    print(json.dumps(result) if args.json else markdown(result))
