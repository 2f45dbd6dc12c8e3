"""Every preset loads, validates and builds its model; the video's figures hold."""

import pytest

from folio.config.run import build_run_config, list_presets
from folio.models import build_model


@pytest.mark.parametrize("name", list_presets())
def test_preset_loads_and_builds(name):
    run = build_run_config(name, [])
    model = build_model(run.resolve(65).model)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_expected_presets_exist():
    assert {"bigram", "small", "video", "nanogpt-cpu", "demo", "tiny"} <= set(list_presets())


def test_bigram_preset_is_the_videos():
    run = build_run_config("bigram", [])
    assert run.model_type == "bigram"
    assert (run.train.batch_size, run.model.block_size) == (32, 8)
    assert (run.train.learning_rate, run.train.max_iters) == (1e-2, 3000)


def test_video_preset_has_about_10_8m_parameters():
    run = build_run_config("video", [])
    cfg = run.resolve(65).model
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.dropout) == (
        6,
        6,
        384,
        256,
        0.2,
    )
    assert (run.train.batch_size, run.train.learning_rate, run.train.max_iters) == (64, 3e-4, 5000)
    n = build_model(cfg).num_params()
    assert 10.7e6 < n < 10.9e6


def test_nanogpt_cpu_preset_matches_the_recipe():
    run = build_run_config("nanogpt-cpu", [])
    m = run.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (
        4,
        4,
        128,
        64,
        0.0,
    )
    assert (run.train.batch_size, run.train.max_iters) == (12, 2000)


def test_small_preset_is_the_videos_small_config():
    run = build_run_config("small", [])
    assert (run.model.n_embd, run.model.block_size) == (32, 8)
    assert (run.train.batch_size, run.train.learning_rate, run.train.max_iters) == (32, 1e-3, 5000)


def test_overrides_reach_both_sections():
    run = build_run_config("tiny", [("model.n_layer", 3), ("learning_rate", 0.01)])
    assert run.model.n_layer == 3 and run.train.learning_rate == 0.01
