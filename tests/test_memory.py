"""The memory guard: estimates that grow with the config, and refusals that are one line."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import folio.memory as memory
import folio.train.trainer as trainer_module
from folio.cli import main
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset
from folio.errors import FolioError
from folio.memory import (
    available_memory,
    check_training_memory,
    count_parameters,
    estimate_training_memory,
)
from folio.models import BigramConfig, GPTConfig, build_model
from folio.train.config import TrainConfig, build_run_config

GiB = 2**30


def _gpt(**kw) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 65, "block_size": 16, "n_layer": 2, "n_head": 2, **kw})


@pytest.mark.parametrize(
    "config",
    [
        _gpt(n_embd=16),
        _gpt(n_embd=16, bias=False, tie_weights=True, mlp_ratio=3),
        _gpt(n_embd=16, pos_embedding=False, feed_forward=False, layer_norm=False),
        _gpt(n_embd=16, attention="heads"),
        BigramConfig(vocab_size=65),
    ],
)
def test_parameter_count_matches_the_built_model(config) -> None:
    model = build_model(config)
    assert count_parameters(config) == sum(
        p.numel() for p in {id(p): p for p in model.parameters()}.values()
    )


def test_bigger_configs_estimate_more() -> None:
    base = estimate_training_memory(_gpt(n_embd=32), TrainConfig())["total_bytes"]
    for model_kw, train_kw in [
        ({"n_layer": 4}, {}),
        ({"n_embd": 64}, {}),
        ({"block_size": 32}, {}),
        ({"n_head": 4}, {}),
        ({}, {"batch_size": 64}),
    ]:
        est = estimate_training_memory(_gpt(**{"n_embd": 32, **model_kw}), TrainConfig(**train_kw))
        assert est["total_bytes"] > base, (model_kw, train_kw)


def test_video_preset_estimate_is_a_few_gib() -> None:
    run = build_run_config("video", [])
    est = estimate_training_memory(run.resolve(65).model, run.train)
    # 10.8M parameters: 0.16 GiB of states; activations at batch 64, block 256 dominate.
    assert est["n_params"] == 10_795_776
    assert est["states_bytes"] == 16 * 10_795_776
    assert 3 * GiB < est["total_bytes"] < 6 * GiB  # 3.97 GiB
    assert est["eval_bytes"] < est["total_bytes"]


def test_available_memory_is_reported_on_this_machine() -> None:
    avail = available_memory(torch.device("cpu"))
    assert avail is None or avail > 0
    assert available_memory(torch.device("meta")) is None


def test_check_refuses_unless_forced_and_skips_without_information() -> None:
    huge = GPTConfig(vocab_size=65, block_size=256, n_layer=200, n_head=64, n_embd=8192)
    tc, cpu = TrainConfig(batch_size=64), torch.device("cpu")
    with pytest.raises(FolioError, match=r"needs about .* GiB .* only 1.0 GiB is available"):
        check_training_memory(huge, tc, cpu, available=GiB)
    assert check_training_memory(huge, tc, cpu, force=True, available=GiB)["n_params"] > 10**11
    tiny = _gpt(n_embd=16)
    assert check_training_memory(tiny, tc, cpu, available=GiB)["total_bytes"] < GiB


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mem")
    rng = random.Random(0)
    text = "\n".join(
        " ".join(rng.choice(["to", "be", "or", "not"]) for _ in range(8)) for _ in range(80)
    )
    (root / "c.txt").write_text(text + "\n", encoding="utf-8")
    prepare_dataset(load_corpus([str(root / "c.txt")]), root / "ds")
    return root / "ds"


def _train(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(dataset), "--preset", "tiny", "--out", str(out), "--quiet"] + [
        "--threads",
        "1",
        "--max-iters",
        "0",
        *extra,
    ]


def test_a_huge_config_is_refused_through_the_cli_in_one_line(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _train(dataset, tmp_path / "run", "--set", "model.n_layer=200")
    argv += ["--set", "model.n_embd=8192", "--set", "model.n_head=64"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("folio: error: this run needs about "), err
    assert "GiB" in err[0] and "--force" in err[0] and "161,082,851,328 parameters" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_force_trains_what_the_guard_would_refuse(
    dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)  # a 1 KiB machine
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)
    monkeypatch.setenv("FOLIO_CACHE", str(tmp_path / "cache"))
    assert main(_train(dataset, tmp_path / "run")) == 2
    assert "only 0.0 GiB is available on cpu" in capsys.readouterr().err
    assert main(_train(dataset, tmp_path / "run", "--force")) == 0
