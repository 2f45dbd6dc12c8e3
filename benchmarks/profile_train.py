"""Where a training step's time goes: forward, backward and optimizer, and the top operators.

Builds a preset's model and optimizer (random weights, random tokens: speed does
not depend on the data), runs a few warmup steps, then profiles `--steps` steps
with torch.profiler. Prints the wall-clock split between the three phases, the
share of each kind of operator (matmul, attention kernel, activation, norm,
optimizer math, the rest) and the ten operators with the most self time. With
Muon, its Newton-Schulz matmuls count under the optimizer phase.

    python benchmarks/profile_train.py --preset video --batch-size 16 --steps 3
    python benchmarks/profile_train.py --preset cpu-speedrun-188
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from folio.config.run import TrainConfig, load_preset_dict, preset_model_config
from folio.models import GPT
from folio.runtime import autocast, cpu_info, flops_per_token
from folio.train.optim import make_optimizer_for

KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention kernel": ("aten::_scaled_dot_product", "aten::_flash_attention"),
    "activation": ("aten::relu", "aten::gelu", "aten::threshold_backward", "aten::gelu_backward"),
    "layer norm": ("aten::native_layer_norm",),
    "softmax / cross-entropy": ("aten::_log_softmax", "aten::nll_loss", "aten::_softmax"),
    "optimizer math": ("aten::_fused_adamw", "aten::lerp", "aten::addcdiv", "aten::addcmul"),
}


def _kind(name: str) -> str:
    for kind, prefixes in KINDS.items():
        if name.startswith(prefixes):
            return kind
    return "other (copies, adds, views, embedding, ...)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="video")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (as --dtype bfloat16 trains)")
    args = p.parse_args(argv)
    cfg = preset_model_config(args.preset)
    tc = TrainConfig(**load_preset_dict(args.preset).get("train", {}))
    B, T = args.batch_size or tc.batch_size, cfg.block_size
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = make_optimizer_for(model, tc, "cpu")
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    phase_s: dict[str, float] = defaultdict(float)

    def step(timed: bool) -> None:
        x = torch.randint(cfg.vocab_size, (B, T), generator=g)
        y = torch.randint(cfg.vocab_size, (B, T), generator=g)
        marks = [time.perf_counter()]
        with record_function("forward"), autocast(torch.device("cpu"), dtype):
            _, loss = model(x, y)
        marks.append(time.perf_counter())
        with record_function("backward"):
            loss.backward()
        marks.append(time.perf_counter())
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if timed:
            for name, a, b in zip(
                ("forward", "backward", "optimizer"), marks, marks[1:], strict=False
            ):
                phase_s[name] += b - a

    for _ in range(args.warmup):
        step(False)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(True)
    total = time.perf_counter() - start
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    self_us = sum(e.self_cpu_time_total for e in ops)
    by_kind: dict[str, float] = defaultdict(float)
    for e in ops:
        by_kind[_kind(e.key)] += e.self_cpu_time_total
    tok = B * T * args.steps
    n = model.num_params()
    flops_rate = flops_per_token(n, cfg.n_layer, cfg.n_embd, T) * tok / total
    print(
        f"{args.preset}: {n / 1e6:.2f}M parameters, batch {B} x block {T}, optimizer "
        f"{tc.optimizer}, {torch.get_num_threads()} threads, {cpu_info().name}"
    )
    print(
        f"{args.steps} steps in {total:.2f} s under the profiler: {tok / total:,.0f} tokens/s, "
        f"{flops_rate / 1e9:.1f} GFLOP/s of model FLOPs\n"
    )
    print("| phase | share of step time |\n|---|---:|")
    step_s = sum(phase_s.values())
    for name in ("forward", "backward", "optimizer"):
        print(f"| {name} | {100 * phase_s[name] / step_s:.1f}% |")
    print("\n| kind of operator | share of operator self time |\n|---|---:|")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {100 * us / self_us:.1f}% |")
    print("\n| operator | calls | self time per step (ms) | share |\n|---|---:|---:|---:|")
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(
            f"| `{e.key}` | {e.count // args.steps} | "
            f"{e.self_cpu_time_total / 1e3 / args.steps:.1f} | "
            f"{100 * e.self_cpu_time_total / self_us:.1f}% |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
