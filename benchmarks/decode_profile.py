"""Where a batch-1 decoded token's time goes: weight reads, the model's forward, the sampler.

Three measurements on one randomly initialised model (default: the `video` preset):

1. the block matrices alone, as matrix-vector products (the floor set by
   reading the weights from memory), with the bandwidth that implies;
2. the model's own KV-cached decode loop, no sampling;
3. `StaticDecoder` steps (folio/sample/decode.py), no sampling: eager float32,
   and compiled with float32, bfloat16 and int8 weights;
4. `Sampler.generate_ids`, the whole engine (sampling, checks, bookkeeping), on
   its default path and on the module path.

    python benchmarks/decode_profile.py --preset video --tokens 200 [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from folio.config.run import preset_model_config
from folio.models import GPT
from folio.runtime import cpu_info
from folio.sample.decode import StaticDecoder
from folio.sample.sampler import Sampler, SamplingConfig


def matmul_floor(model: GPT, repeats: int) -> tuple[float, int]:
    """Seconds per token for the block matrices as matrix-vector products, and their bytes."""
    mats = [p for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n]
    inputs = [torch.randn(1, w.shape[1]) for w in mats]
    with torch.no_grad():
        for w, x in zip(mats, inputs, strict=True):
            torch.nn.functional.linear(x, w)
        start = time.perf_counter()
        for _ in range(repeats):
            for w, x in zip(mats, inputs, strict=True):
                torch.nn.functional.linear(x, w)
    return (time.perf_counter() - start) / repeats, sum(w.numel() * w.element_size() for w in mats)


def model_loop(model: GPT, tokens: int) -> float:
    """Seconds per token of the cached forward alone (the cache refilled when full)."""
    cache = model.new_kv_cache(1)
    x = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        model(x, cache=cache, last_only=True)
        start = time.perf_counter()
        for _ in range(tokens):
            if cache.length >= model.config.block_size:
                cache.reset()
            model(x, cache=cache, last_only=True)
    return (time.perf_counter() - start) / tokens


def static_loop(model: GPT, tokens: int, weights: str, compiled: bool) -> float:
    """Seconds per token of `StaticDecoder.step` alone (re-prefilled when full)."""
    decoder = StaticDecoder(model, 1, weights)
    if compiled:
        decoder.compile()
    x = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        decoder.prefill(x)
        decoder.step(x)  # compiles
        start = time.perf_counter()
        for _ in range(tokens):
            if decoder.length >= model.config.block_size:
                decoder.prefill(x)
            decoder.step(x)
    return (time.perf_counter() - start) / tokens


def sampler_loop(model: GPT, tokens: int, decode: str = "auto") -> float:
    sampler = Sampler(model, decode=decode)
    list(sampler.generate_ids([], SamplingConfig(max_new_tokens=8, seed=0)))
    start = time.perf_counter()
    list(sampler.generate_ids([], SamplingConfig(max_new_tokens=tokens, seed=0)))
    return (time.perf_counter() - start) / tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="video")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(preset_model_config(args.preset)).eval()
    floor_s, nbytes = matmul_floor(model, args.tokens)
    loop_s = model_loop(model, args.tokens)
    static = {
        f"`StaticDecoder` step, {'compiled' if c else 'eager'} {w}": static_loop(
            model, args.tokens, w, c
        )
        for w, c in (("float32", False), ("float32", True), ("bfloat16", True), ("int8", True))
    }
    sampler_s = sampler_loop(model, args.tokens)
    module_s = sampler_loop(model, args.tokens, decode="module")
    print(
        f"{args.preset}: {model.num_params() / 1e6:.2f}M parameters, batch 1, fp32, "
        f"{torch.get_num_threads()} threads, {cpu_info().name}, {args.tokens} tokens\n"
    )
    print("| what runs per token | ms per token | tokens/s |\n|---|---:|---:|")
    print(
        f"| block matrices alone ({nbytes / 1e6:.1f} MB at {nbytes / floor_s / 1e9:.1f} GB/s) "
        f"| {floor_s * 1e3:.2f} | {1 / floor_s:,.0f} |"
    )
    print(f"| the model's cached forward | {loop_s * 1e3:.2f} | {1 / loop_s:,.0f} |")
    for what, seconds in static.items():
        print(f"| {what} | {seconds * 1e3:.2f} | {1 / seconds:,.0f} |")
    print(f"| `Sampler.generate_ids`, module path | {module_s * 1e3:.2f} | {1 / module_s:,.0f} |")
    print(
        f"| `Sampler.generate_ids`, default path | {sampler_s * 1e3:.2f} | {1 / sampler_s:,.0f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
