"""The memory guard: estimates that grow with the config, and refusals that are one line."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import folio.memory as memory
import folio.train.trainer as trainer_module
from folio.cli import main
from folio.config.run import TrainConfig, build_run_config
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
    assert main(_train(dataset, tmp_path / "run")) == 2
    assert "only 0.0 GiB is available on cpu" in capsys.readouterr().err
    assert main(_train(dataset, tmp_path / "run", "--force")) == 0


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampling_estimate_counts_what_the_sampler_allocates(dtype: torch.dtype) -> None:
    """The token buffer and the KV cache, byte for byte; the cache holds block_size positions."""
    config = _gpt(n_embd=32)
    model = build_model(config)
    B, n = 3, 1000  # a context far longer than the block: the cache does not grow with it
    est = memory.estimate_sampling_memory(
        config, B, n, cache=True, cache_bytes_per_value=torch.empty((), dtype=dtype).element_size()
    )
    cache = model.new_kv_cache(B, dtype=dtype)
    real_cache = sum(t.nbytes for layer in cache.layers for t in (layer.k, layer.v))
    assert est["kv_cache_bytes"] == real_cache
    assert est["tokens_bytes"] == torch.empty(B, n, dtype=torch.long).nbytes
    assert est["logits_bytes"] >= B * config.vocab_size * 4
    assert est["host_bytes"] == B * n * memory.HOST_BYTES_PER_TOKEN
    bigram = memory.estimate_sampling_memory(BigramConfig(vocab_size=65), B, n, cache=False)
    assert bigram["kv_cache_bytes"] == 0 and bigram["forward_bytes"] == 0


def test_sampling_check_refuses_unless_forced_and_splits_gpu_from_host() -> None:
    config, cpu = _gpt(n_embd=32), torch.device("cpu")
    with pytest.raises(FolioError, match=r"10,000 sample\(s\) of 10,000 tokens .* --force"):
        memory.check_sampling_memory(config, 10_000, 10_000, cpu, cache=True, available=GiB)
    forced = memory.check_sampling_memory(
        config, 10_000, 10_000, cpu, cache=True, available=GiB, force=True
    )
    assert forced["device_bytes"] + forced["host_bytes"] > GiB
    assert memory.check_sampling_memory(config, 1, 500, cpu, cache=True, available=GiB)
    # On a GPU the text lives in host memory: each budget is checked on its own.
    gpu = torch.device("cuda")
    est = memory.estimate_sampling_memory(config, 10_000, 10_000, cache=True)
    ok = memory.check_sampling_memory(
        config, 10_000, 10_000, gpu, cache=True,
        available=est["device_bytes"], available_host=est["host_bytes"],
    )  # fmt: skip
    assert ok["device_bytes"] == est["device_bytes"]
    with pytest.raises(FolioError, match="of host memory"):
        memory.check_sampling_memory(
            config, 10_000, 10_000, gpu, cache=True,
            available=est["device_bytes"], available_host=est["host_bytes"] - 1,
        )  # fmt: skip
