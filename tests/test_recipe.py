"""`folio recipe assistant`: every stage runs, the table has its shape, and a rerun skips the done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from folio.recipe import SCALES, STAGES, TABLE_KEYS, Recipe, Step, _finished, format_table

ROOT = Path(__file__).resolve().parents[1]


def folio(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "folio", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_the_tiny_recipe_runs_every_stage_and_a_rerun_skips_them(tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    first = folio("recipe", "assistant", "--scale", "tiny", "--out", out, "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    table = json.loads(first.stdout)
    assert [row["stage"] for row in table["stages"]] == list(STAGES)
    for row in table["stages"]:
        assert set(row) == {"stage", "checkpoint", *TABLE_KEYS}
        assert Path(row["checkpoint"]).is_dir(), row
        assert row["seconds"] > 0
    by = {row["stage"]: row for row in table["stages"]}
    for stage in ("base", "sft", "grpo", "ppo", "dpo"):  # the chat models, measured on tasks
        for k in ("pass_at_1", "pass_at_8", "end_rate"):
            assert 0.0 <= by[stage][k] <= 1.0
        assert by[stage]["rm_accuracy"] is None
    for stage in ("sft", "ppo", "dpo"):  # measured against the gold rule, with KL to SFT
        assert 0.0 <= by[stage]["gold_score"] <= 1.0
        assert by[stage]["kl"] >= 0.0
    assert by["sft"]["kl"] < 1e-4  # the SFT model is the reference
    assert by["grpo"]["kl"] is not None and by["grpo"]["gold_score"] is None
    assert 0.0 <= by["reward"]["rm_accuracy"] <= 1.0
    assert by["reward"]["pass_at_1"] is None and by["base"]["gold_score"] is None
    assert table["rm_ceiling"] == pytest.approx(1 - table["flip"])
    assert json.loads((out / "table.json").read_text()) == table
    assert (out / "logs" / "ppo.log").read_text().startswith("$ folio rl --algo ppo")

    start = time.perf_counter()
    again = folio("recipe", "assistant", "--scale", "tiny", "--out", out, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == table  # nothing ran again
    assert "folio " not in again.stderr
    assert time.perf_counter() - start < 30


def test_a_stopped_training_step_resumes_and_a_finished_one_is_not_rerun(tmp_path: Path) -> None:
    recipe = Recipe(tmp_path, SCALES["tiny"])
    step = next(s for s in recipe.steps() if s.name == "sft")
    assert "--resume" not in recipe.command(step)
    assert recipe.command(step)[-3:] == ["--quiet", "--out", str(tmp_path / "sft")]
    run = tmp_path / "sft"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"train": {"max_iters": 3}}))
    (run / "latest.json").write_text(json.dumps({"step": 2}))
    assert recipe.command(step)[-1] == "--resume" and not _finished(run)
    (run / "latest.json").write_text(json.dumps({"step": 3}))
    assert _finished(run)
    record = recipe.run_step(step)  # finished: recorded without running anything
    assert record["result"] == {"recovered": True} and recipe.record_path(step).exists()


def test_the_steps_follow_the_pipeline_and_a_given_base_is_not_pretrained(tmp_path: Path) -> None:
    names = [s.name for s in Recipe(tmp_path, SCALES["laptop"]).steps()]
    assert names[:4] == ["data", "base", "tasks", "eval-base"]
    for before, after in [("sft", "grpo"), ("sft", "prefs"), ("prefs", "reward"),
                          ("reward", "ppo"), ("prefs", "dpo"), ("ppo", "gold-ppo")]:  # fmt: skip
        assert names.index(before) < names.index(after)
    base = tmp_path / "mine"
    steps = Recipe(tmp_path / "o", SCALES["laptop"], base=base).steps()
    assert "base" not in [s.name for s in steps] and "data" not in [s.name for s in steps]
    sft = next(s for s in steps if s.name == "sft")
    assert f"run:{base}" in sft.args and "--mix-data" not in sft.args
    bpe = Recipe(tmp_path, SCALES["laptop"], tokenizer="bpe", bpe_vocab=512).steps()[0]
    assert bpe.args[-3:] == ["bpe", "--vocab-size", "512"] and not bpe.json


def test_format_table_shows_a_dash_where_a_figure_does_not_apply() -> None:
    row = dict.fromkeys(TABLE_KEYS) | {"stage": "reward", "checkpoint": "x", "rm_accuracy": 0.8125,
                                       "seconds": 12.4}  # fmt: skip
    text = format_table({"stages": [row], "flip": 0.1, "rm_ceiling": 0.9, "seconds": 12.4})
    assert "| reward | - | - | - | 0.812 | - | - | 12 |" in text
    assert "ceiling 0.90" in text


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    r = folio("recipe", "assistant", "--out", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "notes.txt" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
    r = folio("recipe", "assistant", "--out", tmp_path / "o", "--base", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a Folio run" in r.stderr
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "latest.json").write_text("{}")
    r = folio("recipe", "assistant", "--scale", "tiny", "--out", tmp_path / "o2", "--base", fake)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("folio: error: ")
    assert "Traceback" not in r.stderr and "log: " in r.stderr


def test_a_step_is_the_folio_command_a_user_would_type() -> None:
    step = Step("x", ["eval", "prefs", "--checkpoint", "rm", "--data", "p"])
    assert Recipe(Path("/tmp/none"), SCALES["tiny"]).command(step) == [*step.args, "--json"]
