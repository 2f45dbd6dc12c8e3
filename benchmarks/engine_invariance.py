"""What batch invariance costs the serving engine: decode tokens/s with and without it.

A `video`-sized GPT (6 layers, 6 heads, 384 wide, block 256, vocabulary 65,
random weights: speed depends on the shapes only), float32 on the CPU, in this
process. For 1, 8 and 32 concurrent requests of `--tokens` tokens each (seeded
sampling at temperature 1), the engine's steps run until every request ends,
once with the batch-invariant operator in the decode step (the default) and
once with PyTorch's own kernels, alternating, best of `--repeats`. Also
checked: with invariance, every request's tokens equal the same request
served alone.

    python benchmarks/engine_invariance.py [--tokens 200] [--repeats 3] [--threads 2]
        [--decode module]

`--decode`: the engine's decode path, `module` (the model's forward, prefills one
at a time) or `static` (the slot decoder, whose exact mode also runs its
prefills through the operator and attends one query at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from folio.models import GPT, GPTConfig  # noqa: E402
from folio.runtime import cpu_info  # noqa: E402
from folio.sample import SamplingConfig  # noqa: E402
from folio.sample.engine import Engine, GenerationRequest  # noqa: E402


def requests(n: int, tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            [1 + (i * 7 + j) % 60 for j in range(8 + i % 5)],
            SamplingConfig(max_new_tokens=tokens, temperature=1.0, seed=i),
        )
        for i in range(n)
    ]


def serve(engine: Engine, reqs: list[GenerationRequest]) -> tuple[float, list[list[int]]]:
    """Seconds to serve every request together, and each request's tokens."""
    outs: list[list[int]] = [[] for _ in reqs]
    for out, req in zip(outs, reqs, strict=True):
        engine.submit(
            GenerationRequest(
                req.prompt_ids,
                req.sampling,
                listener=lambda e, out=out: e.token_id is not None and out.append(e.token_id),
            )
        )
    start = time.perf_counter()
    while engine.step():
        pass
    return time.perf_counter() - start, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", default="module", choices=["module", "static"])
    ap.add_argument("--out", default=None, help="write the result as JSON here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256)
    model = GPT(config).eval()
    engines = {
        "invariant": Engine(model, max_batch=32, decode=args.decode),
        "pytorch": Engine(model, max_batch=32, batch_invariant=False, decode=args.decode),
    }
    assert engines["invariant"].batch_invariant, engines["invariant"].invariance_note
    load_before = os.getloadavg()
    rows = []
    for clients in (1, 8, 32):
        reqs = requests(clients, args.tokens)
        best = dict.fromkeys(engines, float("inf"))
        for _ in range(args.repeats):
            for name, engine in engines.items():
                seconds, outs = serve(engine, reqs)
                best[name] = min(best[name], seconds)
                if name == "invariant":
                    together = outs
        alone = [serve(engines["invariant"], [r])[1][0] for r in reqs[:4]]
        row = {
            "clients": clients,
            **{f"{k}_tok_s": round(clients * args.tokens / v, 1) for k, v in best.items()},
            "invariant_vs_pytorch": round(best["pytorch"] / best["invariant"], 3),
            "alone_equals_together": together[: len(alone)] == alone,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "cpu": cpu_info().name,
        "flags": cpu_info().notable_flags(),
        "threads": args.threads,
        "decode": args.decode,
        "torch": torch.__version__,
        "tokens_per_request": args.tokens,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
