"""The training loop and the run directory it writes (folio.train.trainer, folio.checkpoint),
the evaluation helpers (folio.eval.loss) and device/precision choices (folio.runtime).

Every run is the 'tiny' preset (2 layers, 32 wide, block 16) on CPU, seeded, one thread,
on a small word corpus. Rendering loss.png costs about 0.35 s per eval here, so tests
that do not look at the plot replace it with a no-op; the module's shared run keeps it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import pickle
import random
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import forked_trainers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories import word_dataset
from forked_trainers import Folio
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import folio.checkpoint
import folio.train.trainer as trainer_module
from folio import runtime as device_module
from folio.checkpoint import (
    clean_state_dict,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from folio.config.run import build_run_config
from folio.data.batches import Dataset
from folio.errors import FolioError
from folio.eval.loss import estimate_loss, evaluate_split
from folio.models import GPT, GPTConfig
from folio.runtime import peak_flops, pick_device, resolve_dtype
from folio.stages.pretrain import train
from folio.tokenizers import CharTokenizer
from folio.train.objectives import Objective
from folio.train.optim import make_optimizer
from folio.train.trainer import TrainResult

REPO = Path(__file__).resolve().parents[1]
BLOCK = 16
WORDS = ["the", "king", "queen", "of", "and", "to", "my", "lord", "thou", "art", "good"]
CHECKPOINT_FILES = {
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "state.json",
    "trainer.safetensors",
    "optimizer.json",
}


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "folio-cache"


@pytest.fixture(autouse=True)
def quiet_run(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Peak FLOP/s are measured once and cached: in the test tree, not the home directory.
    monkeypatch.setenv("FOLIO_CACHE", str(cache_dir))
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)


def _write_dataset(root: Path, words: list[str]) -> Path:
    return word_dataset(root, words)


@pytest.fixture(scope="module", autouse=True)
def fork_server():
    # The trainers the signal tests start fork from one server that imported torch once.
    yield
    forked_trainers.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("data"), WORDS)


def _train(
    data: Path,
    out: Path,
    *overrides: tuple[str, Any],
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    run = build_run_config("tiny", [("train.threads", 1), ("train.eval_iters", 2), *overrides])
    return train(run, data, out, resume=resume, progress=False, log=log or (lambda _: None))


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _step_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in _rows(run_dir) if "loss" in r]


def _eval_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in _rows(run_dir) if r.get("eval")]


def _pointer(run_dir: Path, which: str = "latest") -> dict[str, Any]:
    return json.loads((run_dir / f"{which}.json").read_text())


def _checkpoint_dirs(run_dir: Path) -> set[str]:
    return {d.name for d in (run_dir / "checkpoints").iterdir()}


@pytest.fixture(scope="module")
def trained_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 steps, an eval and checkpoint every 10, with the real loss plot."""
    out = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOLIO_CACHE", str(tmp_path_factory.getbasetemp() / "folio-cache"))
        _train(dataset, out, ("train.max_iters", 30), ("train.eval_interval", 10))
    return out


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, free to damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


# --- resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_continues_exactly_as_an_uninterrupted_run(
    dataset: Path, tmp_path: Path, optimizer: str
) -> None:
    # Dropout > 0, so the restored torch RNG state matters as much as the data sampler's.
    # The constant schedule (with warmup) does not depend on max_iters, so stopping a run by
    # max_iters=10 and resuming it with max_iters=20 follows the same learning rates.
    # One thread; no deterministic-algorithms switch was needed for bitwise equality.
    common = [
        ("model.dropout", 0.1),
        ("train.lr_schedule", "constant"),
        ("train.warmup_iters", 3),
        ("train.eval_interval", 5),
        ("train.log_interval", 1),
        ("train.optimizer", optimizer),
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(dataset, straight, *common, ("train.max_iters", 20))
    _train(dataset, resumed, *common, ("train.max_iters", 10))
    logs: list[str] = []
    result = _train(
        dataset, resumed, *common, ("train.max_iters", 20), resume=True, log=logs.append
    )
    assert result.step == 20
    assert any(re.search(r"resuming from .*step-00000010 at step 10$", line) for line in logs)

    def trace(run_dir: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in _step_rows(run_dir)]

    assert [s for s, *_ in trace(resumed)] == list(range(1, 21))  # no step twice, none lost
    assert trace(resumed) == trace(straight)  # bitwise: floats compared with ==
    evals = [(r["step"], r["train_loss"], r["val_loss"]) for r in _eval_rows(straight)]
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in _eval_rows(resumed)] == evals

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a.state["step"] == b.state["step"] == 20
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ta = load_file(str(a.path / "trainer.safetensors"))  # optimizer moments and RNG states
    tb = load_file(str(b.path / "trainer.safetensors"))
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_compile_warmup_leaves_the_random_stream_alone(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.compile replaced by the identity: the warm-up forward pass (with dropout) must
    # not consume the run's RNG, or compiled and resumed runs would take other dropout masks.
    common = [("model.dropout", 0.1), ("train.max_iters", 6), ("train.log_interval", 1)]
    _train(dataset, tmp_path / "eager", *common)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    logs: list[str] = []
    _train(dataset, tmp_path / "compiled", *common, ("train.compile", True), log=logs.append)
    assert not any("warning" in line for line in logs)
    losses = [r["loss"] for r in _step_rows(tmp_path / "eager")]
    assert [r["loss"] for r in _step_rows(tmp_path / "compiled")] == losses


def test_resume_needs_a_checkpoint(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(FolioError, match="nothing to resume"):
        _train(dataset, tmp_path / "empty", resume=True)


def test_resume_rejects_a_dataset_with_another_tokenizer(
    dataset: Path, run_copy: Path, tmp_path: Path
) -> None:
    # The same vocabulary size (so the model config matches) but another character.
    other = _write_dataset(tmp_path / "other", [w.replace("g", "z") for w in WORDS])
    assert Dataset.open(other).vocab_size == Dataset.open(dataset).vocab_size
    ckpt = resolve_checkpoint(run_copy)
    with pytest.raises(FolioError, match="tokenizer does not match") as e:
        _train(other, run_copy, ("train.max_iters", 40), resume=True)
    assert str(ckpt) in str(e.value)


def test_resume_rejects_another_model_config(dataset: Path, run_copy: Path) -> None:
    ckpt = resolve_checkpoint(run_copy)
    with pytest.raises(FolioError, match="model config differs") as e:
        _train(dataset, run_copy, ("model.n_embd", 64), ("train.max_iters", 40), resume=True)
    assert str(ckpt) in str(e.value)


# --- precision and compilation -------------------------------------------------------------


def test_bf16_autocast_trains_and_stays_close_to_fp32(dataset: Path, tmp_path: Path) -> None:
    # bf16 matmuls are emulated on CPUs without AVX512-BF16/AMX, so the run is short.
    # Measured on an AVX2-only EPYC: final val losses 0.0016 nats apart (train and val within
    # 0.003). The tolerance is 0.15 nats: room for other CPUs' bf16 kernels, while a broken
    # autocast (or one silently left off) would still fail the log-line and loss checks.
    common = [("train.max_iters", 30), ("train.eval_interval", 30), ("train.eval_iters", 4)]
    fp32 = _train(dataset, tmp_path / "fp32", *common, ("train.dtype", "float32"))
    logs: list[str] = []
    bf16 = _train(dataset, tmp_path / "bf16", *common, ("train.dtype", "bfloat16"), log=logs.append)
    assert any("bfloat16 autocast" in line for line in logs)
    first, last = bf16.history[0], bf16.history[-1]
    assert last["step"] == 30 and last["val_loss"] < first["val_loss"] - 0.5
    assert abs(bf16.val_loss - fp32.val_loss) < 0.15
    assert abs(bf16.train_loss - fp32.train_loss) < 0.15
    print(f"bf16 - fp32 final val loss: {bf16.val_loss - fp32.val_loss:+.5f} nats")


def _safetensors_keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def _assert_clean_loadable_run(run_dir: Path) -> None:
    ckpt = resolve_checkpoint(run_dir)
    keys = _safetensors_keys(ckpt / "model.safetensors")
    assert keys and not any("_orig_mod" in k or k.startswith("module.") for k in keys)
    ck = load_checkpoint(run_dir)
    assert set(ck.model.state_dict()) == keys


def test_compile_failure_falls_back_to_eager_with_one_warning_line(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_compile(model, **kw):
        raise RuntimeError("backend exploded\nwith a long second line of compiler output")

    monkeypatch.setattr(torch, "compile", failing_compile)
    logs: list[str] = []
    result = _train(
        dataset,
        tmp_path / "run",
        ("train.compile", True),
        ("train.max_iters", 4),
        ("train.eval_interval", 4),
        log=logs.append,
    )
    assert result.step == 4
    warnings = [line for line in logs if "warning" in line]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "torch.compile failed (RuntimeError: backend exploded)" in warnings[0]
    assert "running eager" in warnings[0]
    _assert_clean_loadable_run(tmp_path / "run")


@pytest.mark.slow  # compiling the tiny model takes about 95 s here with cold compiler caches
def test_real_compile_compiles_or_falls_back(dataset: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    result = _train(
        dataset,
        tmp_path / "run",
        ("train.compile", True),
        ("train.max_iters", 4),
        ("train.eval_interval", 4),
        log=logs.append,
    )
    assert result.step == 4
    warnings = [line for line in logs if "warning" in line]
    assert warnings == [] or (
        len(warnings) == 1 and "torch.compile failed" in warnings[0] and "\n" not in warnings[0]
    )
    _assert_clean_loadable_run(tmp_path / "run")


def test_clean_state_dict_strips_compile_and_ddp_prefixes() -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=12, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    compiled = torch.compile(model)  # wrapping compiles nothing until the first call
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    expected = set(model.state_dict())
    assert set(clean_state_dict(compiled)) == expected

    class Wrapper(torch.nn.Module):  # DistributedDataParallel's layout: .module
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.module = inner

    assert set(clean_state_dict(Wrapper(compiled))) == expected
    tied = GPT(GPTConfig(**{**config.to_dict(), "tie_weights": True}))
    sd = clean_state_dict(torch.compile(tied))
    assert "transformer.wte.weight" in sd and "lm_head.weight" not in sd  # shared storage once


# --- the run directory and its checkpoints ----------------------------------------------------


def test_run_directory_holds_pointers_and_complete_checkpoints(trained_run: Path) -> None:
    latest, best = _pointer(trained_run, "latest"), _pointer(trained_run, "best")
    assert latest["step"] == 30
    evals = [r for r in _eval_rows(trained_run) if r["step"] > 0]  # step 0 is not saved
    assert [r["step"] for r in evals] == [10, 20, 30]
    lowest = min(evals, key=lambda r: r["val_loss"])
    assert best["step"] == lowest["step"] and best["val_loss"] == lowest["val_loss"]
    assert _checkpoint_dirs(trained_run) == {
        Path(latest["checkpoint"]).name,
        Path(best["checkpoint"]).name,
    }
    for pointer in (latest, best):
        ckpt = trained_run / pointer["checkpoint"]
        assert {f.name for f in ckpt.iterdir()} == CHECKPOINT_FILES
    state = json.loads((trained_run / latest["checkpoint"] / "state.json").read_text())
    assert state["step"] == 30
    assert state["best_val_loss"] == lowest["val_loss"]
    assert {"python_rng", "numpy_rng", "tokens_seen", "format_version"} <= set(state)
    trainer_tensors = load_file(str(trained_run / latest["checkpoint"] / "trainer.safetensors"))
    assert {"rng.torch", "rng.data"} <= set(trainer_tensors)


def test_best_pointer_follows_the_lowest_val_and_unreferenced_checkpoints_go(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=5, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    model, tok = GPT(config), CharTokenizer("abcde")
    for step, val, best in [(1, 2.0, True), (2, 3.0, False), (3, 2.5, False)]:
        save_checkpoint(
            tmp_path,
            clean_state_dict(model),
            config,
            tok,
            {"step": step, "val_loss": val},
            best=best,
        )
    assert _pointer(tmp_path, "best")["step"] == 1
    assert _pointer(tmp_path, "latest")["step"] == 3
    assert _checkpoint_dirs(tmp_path) == {"step-00000001", "step-00000003"}
    save_checkpoint(
        tmp_path, clean_state_dict(model), config, tok, {"step": 4, "val_loss": 1.0}, best=True
    )
    assert _checkpoint_dirs(tmp_path) == {"step-00000004"}
    assert load_checkpoint(tmp_path, "best").state["step"] == 4


def test_loading_and_resuming_never_unpickle(
    dataset: Path, run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(np, "load", refuse)
    ck = load_checkpoint(run_copy)
    opt_state, rng = ck.trainer_state()
    make_optimizer(ck.model, 1e-3, 0.1, (0.9, 0.99), "cpu").load_state_dict(opt_state)
    assert {"rng.torch", "rng.data"} <= set(rng)
    result = _train(dataset, run_copy, ("train.max_iters", 32), resume=True)
    assert result.step == 32
    sources = [REPO / "folio/checkpoint.py", *sorted((REPO / "folio/train").glob("*.py"))]
    for src in sources:  # and no code path that could: no pickle module, no torch.load
        text = src.read_text(encoding="utf-8")
        assert "pickle" not in text and "torch.load" not in text, src


# --- hostile checkpoints ---------------------------------------------------------------------


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_weights(path: Path) -> None:
    weights = load_file(str(path))
    weights["transformer.wte.weight"][0, 0] = math.nan
    save_file(weights, str(path))


HOSTILE: dict[str, tuple[str, Callable[[Path], None]]] = {
    # case: (the file the error must name, what to do to the checkpoint directory)
    "truncated weights": ("model.safetensors", lambda c: _truncate(c / "model.safetensors")),
    "empty weights": ("model.safetensors", lambda c: (c / "model.safetensors").write_bytes(b"")),
    "missing weights": ("model.safetensors", lambda c: (c / "model.safetensors").unlink()),
    "NaN weights": ("model.safetensors", lambda c: _nan_weights(c / "model.safetensors")),
    "weights of another shape": (
        "model.safetensors",
        lambda c: _edit_json(c / "config.json", lambda d: d["model"].update(n_embd=64)),
    ),
    "garbage config": ("config.json", lambda c: (c / "config.json").write_bytes(b"\x00\xff{oops")),
    "foreign config": ("config.json", lambda c: (c / "config.json").write_text('{"a": 1}')),
    "newer format version": (
        "config.json",
        lambda c: _edit_json(c / "config.json", lambda d: d.update(version=99)),
    ),
    "model config not a table": (
        "config.json",
        lambda c: _edit_json(c / "config.json", lambda d: d.update(model="gpt")),
    ),
    "invalid model config": (
        "config.json",
        lambda c: _edit_json(c / "config.json", lambda d: d["model"].update(n_layer=-1)),
    ),
    "unknown model type": (
        "config.json",
        lambda c: _edit_json(c / "config.json", lambda d: d.update(model_type="llama")),
    ),
    "garbage tokenizer": ("tokenizer.json", lambda c: (c / "tokenizer.json").write_text("[1,")),
    "unknown tokenizer": ("tokenizer.json", lambda c: (c / "tokenizer.json").write_text("{}")),
    "missing state": ("state.json", lambda c: (c / "state.json").unlink()),
    "state not an object": ("state.json", lambda c: (c / "state.json").write_text("[]")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_checkpoint_is_a_clear_error_naming_the_file(run_copy: Path, case: str) -> None:
    name, damage = HOSTILE[case]
    ckpt = resolve_checkpoint(run_copy)
    damage(ckpt)
    with pytest.raises(FolioError) as e:
        load_checkpoint(run_copy)
    assert str(ckpt / name) in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("trainer.safetensors", _truncate),
        ("trainer.safetensors", Path.unlink),
        ("optimizer.json", lambda p: p.write_text("{not json")),
    ],
)
def test_hostile_trainer_state_is_a_clear_error_on_resume(
    dataset: Path, run_copy: Path, name: str, damage: Callable[[Path], None]
) -> None:
    ckpt = resolve_checkpoint(run_copy)
    damage(ckpt / name)
    assert load_checkpoint(run_copy).state["step"] == 30  # the weights alone still load
    with pytest.raises(FolioError) as e:
        _train(dataset, run_copy, ("train.max_iters", 40), resume=True)
    assert str(ckpt) in str(e.value)


def test_pointers_to_nowhere_are_clear_errors(run_copy: Path) -> None:
    (run_copy / "latest.json").write_text('{"checkpoint": "checkpoints/step-99999999"}')
    with pytest.raises(
        FolioError, match="latest.json: points to .*step-99999999, which is missing"
    ):
        load_checkpoint(run_copy)
    (run_copy / "latest.json").write_text("garbage")
    with pytest.raises(FolioError, match="latest.json: checkpoint pointer is unreadable"):
        load_checkpoint(run_copy)


class _Touch:
    """A pickle payload: unpickling it runs Path.touch on the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("target", ["model.safetensors", "model.pt", "trainer.safetensors"])
def test_a_pickle_payload_is_refused_and_never_runs(
    run_copy: Path, tmp_path: Path, target: str
) -> None:
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Touch(probe)))  # the payload is live: unpickling runs it
    assert probe.exists()

    marker = tmp_path / "pwned"
    ckpt = resolve_checkpoint(run_copy)
    if target == "model.pt":  # a PyTorch-style checkpoint in place of the safetensors file
        (ckpt / "model.safetensors").unlink()
    (ckpt / target).write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(FolioError) as e:
        load_checkpoint(run_copy).trainer_state()
    assert "model.safetensors" in str(e.value) or target in str(e.value)
    assert not marker.exists()


# --- crash safety ----------------------------------------------------------------------------


def _cli_train(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--quiet",
        "--threads",
        "1",
        "--set",
        "train.eval_interval=2",
        "--set",
        "train.eval_iters=1",
        "--set",
        "train.log_interval=1",
        *extra,
    ]


# Runs stopped by a signal or a lock draw no loss plot: nothing looks at it, and it took most
# of each eval. The SIGKILL test keeps it, as the plot sets where in a run its kills land.
NO_PLOT = ("--set", "train.plot=false")


def _start(argv: list[str], cache_dir: Path, logs: Path, merged: bool = True) -> Folio:
    """`folio ARGV` in a child process of its own (signals and SIGKILL reach only it)."""
    env = {**os.environ, "FOLIO_CACHE": str(cache_dir)}
    return Folio(argv, logs, env=env, cwd=REPO, merged=merged)


def _latest_step(run_dir: Path) -> int:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(_pointer(run_dir)["step"])
    return -1


def _wait_until(done: Callable[[], bool], proc: Folio, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.communicate()[0]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out:\n{proc.communicate()[0]}")
        time.sleep(0.02)


def _assert_loadable(run_dir: Path) -> int:
    ck = load_checkpoint(run_dir)
    ck.trainer_state()
    step = int(ck.state["step"])
    # A kill between a checkpoint's rename and latest.json's update leaves that step's
    # directory unpointed-to; the resumed run saves the same step again beside it as
    # step-N.1 (never over it), so a suffix is allowed.
    assert _latest_step(run_dir) == step
    assert re.fullmatch(rf"step-{step:08d}(\.\d+)?", ck.path.name), ck.path.name
    assert {f.name for f in ck.path.iterdir()} == CHECKPOINT_FILES
    return step


def test_sigkill_at_random_moments_leaves_a_resumable_run(
    dataset: Path, tmp_path: Path, cache_dir: Path
) -> None:
    # Three SIGKILLs, each at a random moment after a fresh checkpoint appeared (seeded, so a
    # failure can be replayed); a checkpoint every 2 steps makes many kills land mid-write.
    kills, rng = 3, random.Random(20240601)
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    saved = 0
    for i in range(kills):
        extra = ["--max-iters", "100000"] + (["--resume"] if i else [])
        proc = _start(_cli_train(dataset, run_dir, *extra), cache_dir, logs)
        _wait_until(lambda after=saved: _latest_step(run_dir) > after, proc)  # a new checkpoint
        delay = rng.uniform(0.0, 0.8)
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler, no cleanup
        out = proc.communicate()[0]
        if i:
            assert f"at step {saved}\n" in out, out
        saved = _assert_loadable(run_dir)
        assert saved > 0, f"kill {i} after {delay:.2f} s"
    proc = _start(
        _cli_train(dataset, run_dir, "--max-iters", str(saved + 2), "--resume"), cache_dir, logs
    )
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert re.search(rf"resuming from .*step-{saved:08d} at step {saved}\n", out), out
    assert _assert_loadable(run_dir) == saved + 2
    steps = [r["step"] for r in _step_rows(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 2


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_a_checkpoint_write_cut_midway_keeps_the_previous_one(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type
) -> None:
    real_save_file = folio.checkpoint.save_file
    calls = []

    def save_file_failing_on_the_second_checkpoint(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 4:  # checkpoint 2: the weights are written, the trainer state is not
            raise error(28, "No space left on device") if error is OSError else error()
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(folio.checkpoint, "save_file", save_file_failing_on_the_second_checkpoint)
    run_dir = tmp_path / "run"
    expected = FolioError if error is OSError else KeyboardInterrupt
    with pytest.raises(expected) as e:
        _train(dataset, run_dir, ("train.max_iters", 20), ("train.eval_interval", 10))
    if error is OSError:
        assert "the previous checkpoint is intact" in str(e.value)
        assert "No space left on device" in str(e.value)
    assert ".tmp-" in calls[-1]  # it was cut inside the temporary directory
    assert _latest_step(run_dir) == 10
    assert _checkpoint_dirs(run_dir) == {"step-00000010"}  # no temporary left, none taken
    assert _assert_loadable(run_dir) == 10

    monkeypatch.setattr(folio.checkpoint, "save_file", real_save_file)
    stale = run_dir / "checkpoints" / ".step-00000015.tmp-999999"  # as a SIGKILL leaves one
    shutil.copytree(run_dir / "checkpoints" / "step-00000010", stale)
    assert resolve_checkpoint(run_dir).name == "step-00000010"
    result = _train(
        dataset, run_dir, ("train.max_iters", 20), ("train.eval_interval", 10), resume=True
    )
    assert result.step == 20
    assert _checkpoint_dirs(run_dir) <= {"step-00000010", "step-00000020"}  # the stale one went


# --- safety nets -----------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_naming_the_step_with_a_snapshot(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_forward = GPT.forward
    train_calls = []

    def forward_nan_from_step_3(self, idx, targets=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, **kwargs)
        if self.training and targets is not None:
            train_calls.append(1)
            if len(train_calls) > 3:  # grad_accum 1: the 4th training forward is step 3
                loss = loss * math.nan
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward_nan_from_step_3)
    run_dir = tmp_path / "run"
    with pytest.raises(FolioError, match=r"^step 3: the loss became nan") as e:
        _train(dataset, run_dir, ("train.max_iters", 20))
    snapshot = run_dir / "nan-step-3"
    assert str(snapshot) in str(e.value)
    assert {f.name for f in snapshot.iterdir()} == {
        "model.safetensors",
        "batch.safetensors",
        "config.json",
    }
    batch = load_file(str(snapshot / "batch.safetensors"))
    assert batch["x"].shape == batch["y"].shape == (8, BLOCK)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "batch.safetensors"):  # the umask's, as every Folio file
        assert (snapshot / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads((snapshot / "config.json").read_text())["step"] == 3


def test_patience_stops_a_run_that_no_longer_improves(dataset: Path, tmp_path: Path) -> None:
    # A learning rate of 1e-30 moves no weight by even one float32 ulp: val never improves.
    result = _train(
        dataset,
        tmp_path / "run",
        ("train.learning_rate", 1e-30),
        ("train.patience", 1),
        ("train.eval_interval", 5),
        ("train.max_iters", 40),
    )
    # The step-0 estimate has no checkpoint, so the first best is step 5; step 10
    # does not improve on it and patience 1 stops there.
    assert result.stopped == "patience" and result.step == 10
    assert _latest_step(tmp_path / "run") == 10
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["step"] == 5 and (tmp_path / "run" / best["checkpoint"]).is_dir()


def test_target_val_loss_stops_at_the_first_eval_that_reaches_it(
    dataset: Path, tmp_path: Path
) -> None:
    first = _train(dataset, tmp_path / "free", ("train.max_iters", 15), ("train.eval_interval", 5))
    vals = [row["val_loss"] for row in first.history if row["step"] > 0]
    assert vals[0] > vals[-1]  # it learns, so a target between the two is met at a later eval
    target = (vals[0] + vals[-1]) / 2
    result = _train(
        dataset, tmp_path / "run", ("train.max_iters", 15), ("train.eval_interval", 5),
        ("train.target_val_loss", target),
    )  # fmt: skip
    reached = next(r["step"] for r in first.history if r["step"] > 0 and r["val_loss"] <= target)
    assert result.stopped == "target" and result.step == reached < 15
    assert result.val_loss <= target
    assert _latest_step(tmp_path / "run") == reached


def test_max_time_stops_with_a_checkpoint(dataset: Path, tmp_path: Path) -> None:
    result = _train(dataset, tmp_path / "run", ("train.max_time", 1e-9), ("train.max_iters", 40))
    assert result.stopped == "max_time" and result.step == 1
    assert _assert_loadable(tmp_path / "run") == 1


def test_plot_false_draws_no_loss_plot(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[Path] = []
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: drawn.append(out_dir))
    _train(dataset, tmp_path / "a", ("train.max_iters", 2), ("train.plot", False))
    assert drawn == []
    _train(dataset, tmp_path / "b", ("train.max_iters", 2))
    assert drawn and set(drawn) == {tmp_path / "b"}


def test_a_time_clocked_run_ends_decayed_on_time_and_resume_counts_the_earlier_time(
    dataset: Path, tmp_path: Path
) -> None:
    clocked = (
        ("train.schedule_clock", "time"), ("train.lr_schedule", "cosine"),
        ("train.learning_rate", 1e-2), ("train.min_lr", 1e-4), ("train.max_iters", 100_000),
        ("train.eval_interval", 100_000), ("train.log_interval", 1),
    )  # fmt: skip
    run = tmp_path / "run"
    first = _train(dataset, run, *clocked, ("train.max_time", 1.5))
    assert first.stopped == "max_time" and first.step > 5
    lrs = [r["lr"] for r in _step_rows(run)]
    assert lrs[0] > 0.9e-2 and lrs[-1] < 0.5e-2  # the cosine got past its middle
    state = json.loads(next(run.glob("**/state.json")).read_text())
    assert state["elapsed_seconds"] >= 1.5
    # Resume with a 3 s budget: it trains about 1.5 s more, not 3, and ends at the floor.
    second = _train(dataset, run, *clocked, ("train.max_time", 3.0), resume=True)
    assert second.stopped == "max_time" and second.seconds < 2.9
    assert _step_rows(run)[-1]["lr"] < 2e-4


@pytest.mark.parametrize(
    ("signum", "said"),
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_and_sigterm_finish_the_step_and_checkpoint(
    dataset: Path, tmp_path: Path, cache_dir: Path, signum: int, said: str
) -> None:
    # Schedulers and `kill` send SIGTERM: it must keep the work since the last
    # periodic checkpoint, exactly as Ctrl-C does.
    run_dir = tmp_path / "run"
    proc = _start(
        _cli_train(dataset, run_dir, "--max-iters", "100000", *NO_PLOT), cache_dir, tmp_path
    )
    _wait_until(lambda: _latest_step(run_dir) > 0, proc)
    time.sleep(0.2)
    proc.send_signal(signum)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    match = re.search(rf"{said}: checkpoint saved at step (\d+); continue with --resume", out)
    assert match, out
    assert _assert_loadable(run_dir) == int(match[1])
    assert _step_rows(run_dir)[-1]["step"] == int(match[1])


# --- observability ---------------------------------------------------------------------------


def test_metrics_plot_and_resolved_config(trained_run: Path) -> None:
    steps = _step_rows(trained_run)
    assert [r["step"] for r in steps] == [5, 10, 15, 20, 25, 30]  # log_interval 5
    for r in steps:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "lr", "grad_norm", "tokens_per_s"))
        assert r["tokens"] == r["step"] * 8 * BLOCK
    evals = _eval_rows(trained_run)
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in evals)
    assert (trained_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((trained_run / "run.json").read_text())
    expected = build_run_config("tiny", [("train.threads", 1), ("train.eval_iters", 2)])
    assert run["train"] == {**expected.train.to_dict(), "max_iters": 30, "eval_interval": 10}
    assert run["model_type"] == "gpt" and run["preset"] == "tiny"
    assert run["model"]["vocab_size"] == Dataset.open(run["data"]).vocab_size
    assert run["model"]["n_layer"] == 2 and run["model"]["block_size"] == BLOCK


def test_estimate_loss_uses_the_same_batches_every_time(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=ds.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, dropout=0.2
    )
    model = GPT(config).train()
    splits = {"train": ds.tokens("train"), "val": ds.tokens("val")}
    args = (splits, 4, BLOCK, 3, 7, torch.device("cpu"), contextlib.nullcontext)
    first = estimate_loss(model, *args)
    torch.manual_seed(123)  # the global RNG does not choose the batches either
    assert estimate_loss(model, *args) == first
    assert model.training  # the mode is put back
    assert (
        estimate_loss(model, splits, 4, BLOCK, 3, 8, torch.device("cpu"), contextlib.nullcontext)
        != first
    )


# --- evaluation over a whole split -----------------------------------------------------------


def test_evaluate_split_predicts_every_token_once(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    data = ds.tokens("val")[: 13 * BLOCK + 6]  # 13 full windows and a short one of 5 targets
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=ds.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    )
    cpu, ac = torch.device("cpu"), contextlib.nullcontext
    n_bytes = len(data)  # the corpus is ASCII: one byte per character
    out = evaluate_split(model, data, BLOCK, cpu, ac, n_bytes=n_bytes, batch_size=8)

    n = len(data) - 1
    total = 0.0
    with torch.no_grad():
        for s in range(0, n, BLOCK):  # consecutive windows, the last one shorter
            e = min(s + BLOCK, n)
            x = torch.from_numpy(np.asarray(data[s:e], dtype=np.int64))[None]  # (1, t)
            y = torch.from_numpy(np.asarray(data[s + 1 : e + 1], dtype=np.int64))  # (t,)
            logits, _ = model(x)  # (1, t, V)
            total += float(F.cross_entropy(logits[0].double(), y, reduction="sum"))
    assert out["tokens"] == n and out["complete"]
    assert out["loss"] == pytest.approx(total / n, rel=1e-6)
    assert out["perplexity"] == pytest.approx(math.exp(total / n), rel=1e-6)
    assert out["bits_per_token"] == pytest.approx(total / n / math.log(2), rel=1e-6)
    assert out["bits_per_byte"] == pytest.approx(total / (n_bytes * math.log(2)), rel=1e-6)

    one = evaluate_split(model, data, BLOCK, cpu, ac, n_bytes=n_bytes, batch_size=8, max_batches=1)
    assert one["tokens"] == 8 * BLOCK and not one["complete"]
    assert "bits_per_byte" not in one
    part = evaluate_split(model, data, BLOCK, cpu, ac, n_bytes=n_bytes, batch_size=8, max_batches=2)
    assert part["tokens"] == 13 * BLOCK and not part["complete"]  # the short window is left out
    assert "bits_per_byte" not in part


# --- devices and precision -------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype_on_cpu_is_bf16_only_with_fast_bf16(
    monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: fast)
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if fast else torch.float32)


def test_auto_dtype_on_this_cpu() -> None:
    expected = torch.bfloat16 if device_module.cpu_has_fast_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


def test_bad_dtypes_and_devices_are_errors() -> None:
    with pytest.raises(FolioError, match="float16 is for GPUs"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(FolioError, match="must be one of"):
        resolve_dtype("float64", torch.device("cpu"))
    with pytest.raises(FolioError, match="unknown device"):
        pick_device("tpu:banana")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_error() -> None:
    with pytest.raises(FolioError, match="no CUDA device is available"):
        pick_device("cuda")


def test_measuring_peak_flops_leaves_the_global_rng_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The trainer measures the peak at its first log line; drawing the test matrices from the
    # global RNG would change the dropout masks of a run that found no cached figure.
    monkeypatch.setenv("FOLIO_CACHE", str(tmp_path))
    monkeypatch.setattr(device_module, "_matmul_flops", _small_matmul_flops)
    state = torch.get_rng_state()
    assert peak_flops(torch.device("cpu"), torch.float32) > 0
    assert torch.equal(torch.get_rng_state(), state)
    assert (tmp_path / "peak_flops.json").exists()


_real_matmul_flops = device_module._matmul_flops


def _small_matmul_flops(dtype: torch.dtype, device: torch.device) -> float:
    return _real_matmul_flops(dtype, device, budget_s=0.05)


# --- one run at a time, signals, finished runs --------------------------------------------


def test_a_second_trainer_on_the_same_run_fails_at_once_naming_the_first(
    dataset: Path, tmp_path: Path, cache_dir: Path
) -> None:
    run_dir = tmp_path / "run"
    first = _start(
        _cli_train(dataset, run_dir, "--max-iters", "100000", *NO_PLOT), cache_dir, tmp_path
    )
    try:
        _wait_until(lambda: _latest_step(run_dir) > 0, first)
        second = _start(
            _cli_train(dataset, run_dir, "--max-iters", "100000", *NO_PLOT, "--resume"),
            cache_dir, tmp_path, merged=False,
        )  # fmt: skip
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 2, stderr
        assert f"another trainer (PID {first.pid})" in stderr
        assert len(stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the first trainer goes on untouched
    finally:
        first.kill()
        first.communicate()
    # The lock does not outlive a SIGKILL: the run resumes at once.
    result = _train(dataset, run_dir, ("train.max_iters", _latest_step(run_dir) + 2), resume=True)
    assert result.stopped == "max_iters"


def test_resuming_a_finished_run_says_it_is_complete(
    run_copy: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from folio.cli import main

    val = _pointer(run_copy)["val_loss"]
    for iters in ("30", "20"):  # at, and below, the saved step
        code = main(
            ["train", "--data", str(dataset), "--preset", "tiny", "--out", str(run_copy),
             "--resume", "--max-iters", iters, "--quiet", "--json"]
        )  # fmt: skip
        out, err = capsys.readouterr()
        assert code == 2 and out == ""
        assert err.strip() == (
            f"folio: error: {run_copy}: the run is already complete at step 30 "
            f"(val loss {val:.4f}); to train further, resume with a larger --max-iters"
        )


def test_tokens_per_s_after_resume_counts_this_sessions_tokens_only(
    dataset: Path, tmp_path: Path
) -> None:
    _train(dataset, tmp_path / "run", ("train.max_iters", 20))
    result = _train(dataset, tmp_path / "run", ("train.max_iters", 22), resume=True)
    rows = _step_rows(tmp_path / "run")
    per_step = 8 * BLOCK  # tiny: batch 8
    assert rows[-1]["tokens"] == 22 * per_step  # the axis still counts every token seen
    # Two steps' tokens over two steps' time; counting the 20 earlier steps' tokens too
    # (the bug) would report 11 times the real rate.
    assert result.tokens_per_s < 3 * max(r["tokens_per_s"] for r in rows)


def test_run_json_records_the_dataset_as_an_absolute_path(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(dataset.parent)
    _train(Path(dataset.name), tmp_path / "run", ("train.max_iters", 2))
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    assert recorded == str(dataset)
    monkeypatch.chdir(tmp_path)  # eval from elsewhere still finds the data
    from folio.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--max-batches", "1"]) == 0


# --- a pluggable objective ------------------------------------------------------------------


class _EveryOtherPosition(Objective):
    """A toy objective: next-token loss counted on even positions only (as SFT counts the
    assistant's), written outside the package to show a stage plugs in without the loop."""

    splits = ("train", "val")

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.data = data
        self.tokens_per_batch = 4 * BLOCK

    def batch(self, split: str, generator: torch.Generator):
        from folio.data.batches import get_batch

        x, y = get_batch(self.data[split], 4, BLOCK, generator)
        mask = torch.zeros_like(y)
        mask[:, ::2] = 1
        return x, y, mask

    def loss(self, model, batch) -> torch.Tensor:
        from folio.train.losses import masked_lm_loss

        x, y, mask = batch
        logits, _ = model(x)
        return masked_lm_loss(logits, y, mask)


def test_a_toy_objective_trains_through_the_same_trainer_and_resumes_exactly(
    dataset: Path, tmp_path: Path
) -> None:
    from folio.train.trainer import Trainer

    ds = Dataset.open(dataset)
    run = build_run_config(
        "tiny", [("train.threads", 1), ("train.eval_iters", 2), ("train.eval_interval", 10)]
    ).resolve(ds.vocab_size)
    objective = _EveryOtherPosition({s: ds.tokens(s) for s in ("train", "val")})

    def fit(out: Path, iters: int, resume: bool = False):
        r = dataclasses.replace(run, train=dataclasses.replace(run.train, max_iters=iters))
        t = Trainer(
            r, objective, out, ds.tokenizer, resume=resume, progress=False, log=lambda *_: None
        )
        return t.fit()

    whole = fit(tmp_path / "whole", 30)
    evals = [r["val_loss"] for r in whole.history]
    assert evals[-1] < evals[0] - 0.3  # the masked loss is learned
    fit(tmp_path / "split", 10)
    resumed = fit(tmp_path / "split", 30, resume=True)
    assert resumed.val_loss == whole.val_loss  # checkpoints and resume came with the loop
    a = load_checkpoint(tmp_path / "whole").model.state_dict()
    b = load_checkpoint(tmp_path / "split").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
