"""On a CUDA device: bf16 training, the compiled model, the sampler's exactness, one-GPU torchrun.

Marked `gpu` (left out of the default run) and skipped without CUDA; select
with `pytest -m gpu` (benchmarks/gpu_check.sh does). The tiny model, as
everywhere in the tests; these check that the CUDA paths work and agree with
the reference paths, not how fast they are (the GPU speedrun does that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import word_dataset

from folio.checkpoint import load_checkpoint
from folio.config.run import build_run_config
from folio.models import GPT, GPTConfig
from folio.sample import Sampler, SamplingConfig
from folio.stages.pretrain import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WORDS = "the quick brown fox jumps over a lazy dog and runs far away".split()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_dataset(tmp_path_factory.mktemp("data"), WORDS)


def _tiny_gpt(vocab_size: int = 40) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, n_layer=2, n_head=4, n_embd=32, block_size=16)
    model = GPT(config)
    with torch.no_grad():  # weights wide enough that greedy text does not repeat at once
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.eval()


def test_bf16_training_on_cuda_learns_and_checkpoints(dataset: Path, tmp_path: Path) -> None:
    overrides = [
        ("train.device", "cuda"), ("train.dtype", "bfloat16"), ("train.max_iters", 60),
        ("train.eval_interval", 30), ("train.eval_iters", 4), ("train.eval_at_start", True),
    ]  # fmt: skip
    result = train(build_run_config("tiny", overrides), dataset, tmp_path / "run", progress=False)
    vals = [row["val_loss"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(vals)))
    assert vals[-1] < vals[0] - 0.5
    assert load_checkpoint(tmp_path / "run").state["step"] == 60


def test_compiled_model_matches_eager_on_cuda(dataset: Path, tmp_path: Path) -> None:
    model = _tiny_gpt().cuda()
    idx = torch.randint(0, 40, (4, 16), device="cuda", generator=None)
    with torch.no_grad():
        eager, _ = model(idx)
        compiled, _ = torch.compile(model)(idx)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
    logs: list[str] = []
    overrides = [("train.device", "cuda"), ("train.compile", True), ("train.max_iters", 10)]
    train(
        build_run_config("tiny", overrides), dataset, tmp_path / "run", progress=False,
        log=logs.append,
    )  # fmt: skip
    assert not [line for line in logs if "torch.compile failed" in line]


def test_sampler_cached_equals_uncached_on_cuda() -> None:
    sampler = Sampler(_tiny_gpt(), device="cuda")
    cfg = SamplingConfig(max_new_tokens=300, temperature=0.0)
    cached = list(sampler.decode_steps([1, 2, 3], cfg))
    uncached = list(
        sampler.decode_steps([1, 2, 3], SamplingConfig(**{**vars(cfg), "use_cache": False}))
    )
    assert [s.ids.item() for s in cached] == [s.ids.item() for s in uncached]
    for a, b in zip(cached, uncached, strict=True):
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    assert len({s.ids.item() for s in cached}) > 5  # not one repeated token


def test_one_gpu_torchrun_trains(dataset: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    cmd = [
        str(torchrun), "--standalone", "--nproc-per-node=1", "-m", "folio", "train",
        "--data", str(dataset), "--out", str(tmp_path / "run"), "--preset", "tiny",
        "--device", "cuda", "--max-iters", "10", "--eval-interval", "10", "--quiet", "--json",
    ]  # fmt: skip
    env = {**os.environ, "FOLIO_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(next(s for s in proc.stdout.splitlines() if s.startswith("{")))
    assert summary["step"] == 10 and summary["val_loss"] < 4.0
