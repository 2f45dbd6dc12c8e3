"""`folio bench train`: training throughput of a preset, baseline and fast modes side by side.

Every mode trains the same model (randomly initialised, random token batches:
speed does not depend on the data) for a few optimizer steps after a warmup,
and reports tokens/s and MFU (model FLOPs utilisation: the training FLOPs per
token, 6N plus attention, times tokens/s, over the measured matmul peak of
the dtype the mode computes in). Modes:

- baseline: fp32, eager, the teaching list-of-Heads attention (how the video's code runs);
- fused: fp32, eager, the fused attention kernel;
- + fast paths: the CPU's cheap dropout masks and chunked attention
  (folio/models/dropout.py), and the Linear layers' biases and ReLU inside oneDNN's
  matmul (folio/models/linear.py);
- fused+compile: fp32, torch.compile (CPU inductor);
- fused+bf16: bf16 autocast. On a CPU without AMX or AVX512-BF16 bf16 is emulated
  and very slow, so it runs only with --bf16 there (and with fewer steps);
- + bf16 residual: the same with the residual stream in bf16 too
  (`model.residual_precision = "autocast"`), which removes the stream's casts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from folio.config.run import preset_model_config
from folio.models import GPT
from folio.runtime import (
    autocast,
    cpu_has_fast_bf16,
    cpu_info,
    flops_per_token,
    keep_freed_memory,
    machine_name,
    peak_flops,
    pick_device,
    set_threads,
)
from folio.train.optim import make_optimizer_for


def measure_mode(
    preset: str,
    *,
    attention: str,
    dtype: torch.dtype,
    fast_paths: bool = True,
    residual_precision: str | None = None,  # None: the preset's
    compile: bool,
    steps: int,
    warmup: int,
    batch_size: int | None,
    device: torch.device,
) -> dict[str, Any]:
    """Train `steps` optimizer steps of the preset's model and time them."""
    cfg = preset_model_config(preset)
    cfg.attention = attention
    cfg.fast_dropout = cfg.fused_linear = fast_paths
    if residual_precision is not None:
        cfg.residual_precision = residual_precision
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    from folio.config.run import TrainConfig, load_preset_dict

    tc = TrainConfig(**load_preset_dict(preset).get("train", {}))
    B = batch_size or tc.batch_size
    T = cfg.block_size
    opt = make_optimizer_for(model, tc, device.type)
    fwd = torch.compile(model) if compile else model
    g = torch.Generator().manual_seed(0)

    def step() -> float:
        x = torch.randint(cfg.vocab_size, (B, T), generator=g).to(device)
        y = torch.randint(cfg.vocab_size, (B, T), generator=g).to(device)
        with autocast(device, dtype):
            _, loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tok_s = B * T * steps / dt
    n_params = model.num_params()
    peak = peak_flops(device, dtype)
    return {
        "tokens_per_s": tok_s,
        "seconds_per_step": dt / steps,
        "batch_size": B,
        "block_size": T,
        "steps": steps,
        "warmup_seconds": warm_s,
        "params": n_params,
        "mfu": flops_per_token(n_params, cfg.n_layer, cfg.n_embd, T) * tok_s / peak,
        "peak_flops": peak,
    }


def _modes(
    compile: bool, bf16: bool, dropout: bool = True
) -> list[tuple[str, str, torch.dtype, bool, bool, str]]:
    """(name, attention form, dtype, compiled, fast paths, residual precision) of every
    mode to measure; the residual stream is fp32 but in the last mode.

    The fast paths are the CPU's cheap dropout masks and chunked attention
    (folio/models/dropout.py) and the fused Linear layers (folio/models/linear.py).
    """
    f32, bf = torch.float32, torch.bfloat16
    modes: list[tuple[str, str, torch.dtype, bool, bool, str]] = [
        ("baseline (fp32, eager, list of heads)", "heads", f32, False, False, "float32"),
        ("fused (fp32, eager)", "fused", f32, False, False, "float32"),
        ("fused + fast paths (fp32)", "fused", f32, False, True, "float32"),
    ]
    if compile:
        modes.append(("fused + compile (fp32)", "fused", f32, True, dropout, "float32"))
    if bf16:
        modes.append(("fused + bf16 autocast", "fused", bf, False, False, "float32"))
        modes.append(("fused + fast paths + bf16", "fused", bf, False, True, "float32"))
        if compile:
            modes.append(("fused + compile + bf16", "fused", bf, True, dropout, "float32"))
        modes.append(
            ("fused + fast paths + bf16 + bf16 residual", "fused", bf, False, True, "autocast")
        )
    return modes


def _measured_row(name: str, log, preset: str, **kwargs: Any) -> dict[str, Any]:
    """One mode's figures, or its error: a mode that cannot run is reported, not fatal."""
    try:
        r = measure_mode(preset, **kwargs)
    except Exception as e:  # noqa: BLE001 - e.g. no compiler for torch.compile
        why = f"{e.__class__.__name__}: {str(e).splitlines()[0][:200]}"
        log(f"  {name} failed: {why[:160]}")
        return {"mode": name, "error": why}
    r["mode"] = name
    log(
        f"  {r['tokens_per_s']:,.0f} tokens/s, {r['seconds_per_step']:.2f} s/step, MFU {r['mfu']:.1%}"
    )
    return r


def bench_train(
    preset: str = "video",
    *,
    steps: int = 3,
    warmup: int = 1,
    compile: bool = True,
    bf16: bool | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    log=lambda *a: print(*a, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """All modes of one preset in one run; ratios are against the baseline mode."""
    dev = pick_device(device)
    fast_bf16 = dev.type == "cuda" or (dev.type == "cpu" and cpu_has_fast_bf16())
    if bf16 is None:
        bf16 = fast_bf16
    rows = []
    has_dropout = preset_model_config(preset).dropout > 0
    for name, attention, dtype, comp, fast, residual in _modes(compile, bf16, has_dropout):
        log(f"measuring {name} ...")
        n = steps if (dtype == torch.float32 or fast_bf16) else 1
        rows.append(
            _measured_row(
                name,
                log,
                preset,
                attention=attention,
                dtype=dtype,
                compile=comp,
                fast_paths=fast,
                residual_precision=residual,
                steps=n,
                warmup=warmup,
                batch_size=batch_size,
                device=dev,
            )
        )
    ok = [r for r in rows if "tokens_per_s" in r]
    base = ok[0]["tokens_per_s"] if ok and ok[0]["mode"].startswith("baseline") else None
    for r in ok:
        r["speedup_vs_baseline"] = r["tokens_per_s"] / base if base else None
    best = max(ok, key=lambda r: r["tokens_per_s"]) if ok else {}
    return {
        "preset": preset,
        "device": str(dev),
        "machine": machine_name(dev),
        "cpu_flags": cpu_info().notable_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fast_bf16": fast_bf16,
        "tokens_per_s": best.get("tokens_per_s"),
        "best_mode": best.get("mode"),
        "baseline_tokens_per_s": base,
        "mfu": best.get("mfu"),
        "speedup": best.get("speedup_vs_baseline"),
        "modes": rows,
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = ["| mode | tokens/s | s/step | vs baseline | MFU |", "|---|---:|---:|---:|---:|"]
    for r in result["modes"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error']} | | | |")
            continue
        sp = f"{r['speedup_vs_baseline']:.2f}x" if r.get("speedup_vs_baseline") else "-"
        lines.append(
            f"| {r['mode']} | {r['tokens_per_s']:,.0f} | {r['seconds_per_step']:.2f} | {sp} | {r['mfu']:.1%} |"
        )
    lines.append("")
    lines.append(
        f"Preset {result['preset']} on {result['device']} ({result['machine']}), {result['threads']} threads, "
        f"torch {result['torch']}, {result['date']}; fast bf16 hardware: {result['fast_bf16']}."
    )
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> None:
    set_threads(args.threads or 0)
    keep_freed_memory()  # as `folio train` does on a CPU
    result = bench_train(
        args.preset, steps=args.steps, warmup=args.warmup, compile=not args.no_compile,
        bf16=args.bf16, batch_size=args.batch_size, device=args.device,
    )  # fmt: skip
    print(json.dumps(result) if args.json else markdown(result))
