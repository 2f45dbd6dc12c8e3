"""Data-parallel training: N processes take the step one process takes on their union.

The tests launch `torchrun --standalone` (loopback rendezvous, gloo, one thread a
process) on the tiny model, so they are marked `distributed` but stay in the
default run: CI exercises them. A launch costs about 9 s of CPU (torchrun and each
rank import torch), so the fresh runs share one launch, in one process group, and
only the resume, which must start new processes, gets one of its own.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from factories import word_dataset

from folio import runtime
from folio.checkpoint import load_checkpoint
from folio.config.run import build_run_config
from folio.data.batches import Dataset, get_batch
from folio.errors import FolioError
from folio.models import build_model
from folio.stages.pretrain import train
from folio.train import distributed
from folio.train.optim import make_optimizer

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over a lazy dog and runs far away".split()
SEED = 1337
COMMON = [
    "--preset",
    "tiny",
    "--seed",
    str(SEED),
    "--batch-size",
    "4",
    "--set",
    "train.grad_accum=2",
    "--set",
    "train.threads=1",
    "--set",
    "train.eval_iters=1",
    "--set",
    "train.eval_at_start=false",
    "--set",
    "train.log_interval=1",
    "--set",
    "train.lr_schedule=constant",
    "--set",
    "train.warmup_iters=2",
    "--set",
    "train.plot=false",  # nothing here looks at loss.png
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_dataset(tmp_path_factory.mktemp("data"), WORDS)


def _train_argv(dataset: Path, out: Path, *args: str) -> list[str]:
    return ["train", "--data", str(dataset), "--out", str(out), *COMMON, *args, "--quiet", "--json"]


def _launch(script: list[str], runs: int, nproc: int = 2) -> list[dict[str, Any]]:
    """`torchrun SCRIPT` on nproc ranks; the JSON summaries of its `runs` runs."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    # The session's FOLIO_CACHE (in os.environ): the ranks measure the peak FLOP/s once, not
    # at every launch.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [str(torchrun), "--standalone", f"--nproc-per-node={nproc}", *script]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == runs, proc.stdout  # rank 0 alone prints
    return [json.loads(line) for line in summaries]


def _torchrun(dataset: Path, out: Path, *args: str) -> dict[str, Any]:
    """`torchrun -m folio train ...`: Folio makes the process group and ends it."""
    return _launch(["-m", "folio", *_train_argv(dataset, out, *args)], runs=1)[0]


def _reference_weights(dataset: Path, steps: int, world_size: int) -> dict[str, torch.Tensor]:
    """One process, a hand-written loop: rank r's micro-batches drawn from seed + r, the
    gradient the mean over every micro-batch of every rank, clipped, then AdamW."""
    run = build_run_config("tiny", [("seed", SEED), ("batch_size", 4), ("grad_accum", 2)])
    tc = run.train
    ds = Dataset.open(dataset)
    config = run.resolve(ds.vocab_size).model
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    model = build_model(config)
    optimizer = make_optimizer(
        model, tc.learning_rate, tc.weight_decay, (tc.beta1, tc.beta2), "cpu"
    )
    gens = [torch.Generator().manual_seed(tc.seed + r) for r in range(world_size)]
    data = ds.tokens("train")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = tc.learning_rate * min(1.0, (step + 1) / 2)  # warmup_iters=2
        for gen in gens:
            for _ in range(tc.grad_accum):
                x, y = get_batch(data, tc.batch_size, config.block_size, gen)
                _, loss = model(x, y)
                (loss / (tc.grad_accum * world_size)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.state_dict()


def _step_rows(run_dir: Path) -> list[tuple]:
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["tokens"], r["loss"], r["grad_norm"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def runs(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Fresh runs by two ranks, one after another in one launch: 4 steps with an eval and
    checkpoint every 2, the same stopped at step 2, and FSDP for 2 steps. Each run's directory
    and summary; tests copy a run to write to it."""
    root = tmp_path_factory.mktemp("ddp")
    args = {
        "straight": ["--max-iters", "4", "--eval-interval", "2"],
        "half": ["--max-iters", "2", "--eval-interval", "2"],
        "fsdp": ["--max-iters", "2", "--eval-interval", "2", "--fsdp"],
    }
    commands = [_train_argv(dataset, root / name, *a) for name, a in args.items()]
    summaries = _launch([str(ROOT / "tests" / "torchrun_runs.py"), json.dumps(commands)], 3)
    return {name: (root / name, s) for name, s in zip(args, summaries, strict=True)}


def test_two_processes_equal_one_process_on_the_union_of_their_batches(
    dataset: Path, runs: dict[str, tuple[Path, dict]], tmp_path: Path
) -> None:
    out = Path(shutil.copytree(runs["straight"][0], tmp_path / "ddp"))
    assert runs["straight"][1]["step"] == 4
    # The global batch: 4 sequences x 2 micro-batches x 2 ranks x block 16 tokens a step.
    assert [t for _, t, *_ in _step_rows(out)] == [256, 512, 768, 1024]
    got = load_checkpoint(out).model.state_dict()
    # Its eval at step 2 draws no training batch: the weights still match step for step.
    want = _reference_weights(dataset, steps=4, world_size=2)
    assert got.keys() == want.keys()
    # atol 1e-5: the key part of c_attn.bias gets a gradient that is only rounding noise
    # (softmax ignores a shift shared by all keys), which AdamW scales up to ~1e-6; a
    # different batch would move weights by ~lr = 3e-3.
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)

    # A checkpoint two ranks wrote resumes in one process (rank 0's streams carry on).
    # warmup_iters and plot as recorded: a resume continues the run's own settings.
    run = build_run_config(
        "tiny",
        [("seed", SEED), ("batch_size", 4), ("grad_accum", 2), ("threads", 1)]
        + [("eval_iters", 1), ("eval_at_start", False), ("max_iters", 5), ("eval_interval", 5)]
        + [("warmup_iters", 2), ("plot", False)],
    )
    result = train(run, dataset, out, resume=True, progress=False, log=lambda _: None)
    assert result.step == 5
    assert json.loads((out / "run.json").read_text())["train"]["max_iters"] == 5


def test_two_process_resume_is_exact(
    dataset: Path, runs: dict[str, tuple[Path, dict]], tmp_path: Path
) -> None:
    # The run stopped at step 2 resumes in new processes, which hold only what it saved.
    straight, resumed = runs["straight"][0], tmp_path / "resumed"
    shutil.copytree(runs["half"][0], resumed)
    _torchrun(dataset, resumed, "--max-iters", "4", "--eval-interval", "2", "--resume")
    assert _step_rows(resumed) == _step_rows(straight)  # bitwise: every rank's streams saved
    a, b = load_checkpoint(straight).model.state_dict(), load_checkpoint(resumed).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_equals_one_process_too(dataset: Path, runs: dict[str, tuple[Path, dict]]) -> None:
    out, summary = runs["fsdp"]
    assert summary["step"] == 2
    got = load_checkpoint(out).model.state_dict()  # gathered whole onto rank 0
    want = _reference_weights(dataset, steps=2, world_size=2)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)
    with pytest.raises(FolioError, match="weights only"):
        load_checkpoint(out).trainer_state()


def test_fsdp_needs_torchrun(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    run = build_run_config("tiny", [("fsdp", True), ("threads", 1)])
    with pytest.raises(FolioError, match="torchrun"):
        train(run, dataset, tmp_path / "r", progress=False, log=lambda _: None)


def test_single_process_environment(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    env = runtime.env_from_environ()
    assert (env.rank, env.world_size, env.enabled, env.is_main) == (0, 1, False, True)
    assert runtime.init_distributed("cpu") == env  # no group for one process
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FolioError, match="outside"):
        runtime.env_from_environ()


def test_a_rank_without_saved_streams_gets_fresh_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    saved = {"rng.torch": torch.get_rng_state(), "rng.data": gen.get_state()}
    assert distributed.restore_rank_rng(saved, gen, SEED, 10, rank=0)
    assert not distributed.restore_rank_rng(saved, gen, SEED, 10, rank=1)
    assert torch.equal(
        gen.get_state(),
        torch.Generator().manual_seed(distributed.resume_seed(SEED, 10, 1)).get_state(),
    )
