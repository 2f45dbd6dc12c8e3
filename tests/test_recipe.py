"""`folio recipe assistant`: every stage runs, the table has its shape, and a rerun skips the done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import cli as folio_here

from folio import runtime
from folio.cli import main
from folio.errors import FolioError
from folio.recipes.assistant import (
    GOLD_KEYS,
    SCALES,
    STAGES,
    TABLE_KEYS,
    Recipe,
    _check_out,
    format_table,
)
from folio.recipes.runner import InProcess, Step, _last_error, finished, run_folio

ROOT = Path(__file__).resolve().parents[1]


def folio(*args: object) -> subprocess.CompletedProcess:
    # one thread, as every test runs: a tiny model gains nothing from more, and on a busy
    # machine the idle ones spin
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "folio", *map(str, args)], capture_output=True, text=True, env=env
    )


@pytest.fixture
def one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step's default thread count (train.threads 0: one per core) is one here.

    The steps run in this process, and each would otherwise set two threads for itself and
    every later step: twice the CPU for a model this small, the second thread mostly spinning.
    """
    monkeypatch.setattr(runtime, "physical_cores", lambda: 1)


def test_the_tiny_recipe_runs_every_stage_and_a_rerun_skips_them(
    tmp_path: Path, one_core: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step in this process (the same logs and records as the processes `folio recipe`
    starts), then the command itself, which finds every step done."""
    out = tmp_path / "recipe"
    table = Recipe(out, SCALES["tiny"], supervisor=InProcess(main)).run()
    assert [row["stage"] for row in table["stages"]] == list(STAGES)
    for row in table["stages"]:
        assert set(row) == {"stage", "checkpoint", "tasks", "tasks_k", *TABLE_KEYS, *GOLD_KEYS}
        assert Path(row["checkpoint"]).is_dir(), row
        assert row["seconds"] > 0
    by = {row["stage"]: row for row in table["stages"]}
    for stage in ("base", "sft", "grpo", "sft-longer", "ppo", "dpo"):  # measured on the tasks
        for k in ("pass_at_1", "pass_at_k", "end_rate"):
            assert 0.0 <= by[stage][k] <= 1.0
        assert by[stage]["rm_accuracy"] is None
        assert set(by[stage]["tasks"]) == {"reverse", "add"}  # per task (line: train only)
        assert set(by[stage]["tasks_k"]) == {"reverse", "add"}
        assert all(0.0 <= v <= 1.0 for v in by[stage]["tasks_k"].values())
    for stage in ("sft", "ppo", "dpo"):  # measured against the gold rule, with KL to SFT
        assert 0.0 <= by[stage]["gold_score"] <= 1.0
        assert by[stage]["kl"] >= 0.0
        tests = [by[stage][k] for k in GOLD_KEYS[:3]]  # the rule's three tests, and why
        assert by[stage]["gold_score"] == pytest.approx(sum(tests) / 3)
        assert by[stage]["reply_chars"] >= 0
    assert by["sft"]["kl"] < 1e-4  # the SFT model is the reference
    assert by["grpo"]["kl"] is not None and by["grpo"]["gold_score"] is None
    assert 0.0 <= by["reward"]["rm_accuracy"] <= 1.0
    assert by["reward"]["pass_at_1"] is None and by["base"]["gold_score"] is None
    assert table["rm_ceiling"] == pytest.approx(1 - table["flip"])
    assert table["k"] == 2 and "| pass@2 |" in format_table(table)  # the tiny scale's --k 2
    assert (out / "logs" / "ppo.log").read_text().startswith("$ folio rl --algo ppo")

    start = time.perf_counter()
    again = folio("recipe", "assistant", "--scale", "tiny", "--out", out, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == table  # nothing ran again
    assert json.loads((out / "table.json").read_text()) == table
    assert "folio " not in again.stderr
    assert time.perf_counter() - start < 30
    # the models talking: a prompt of each task, of the gold rule, and one never trained on
    chat = (out / "transcript.md").read_text()
    assert chat.count("you> ") == 4 and "you> Reverse: " in chat and "you> Write a line for" in chat
    assert "you> Who are you" in chat
    assert all(chat.count(f"\n{stage}> ") == 4 for stage in ("sft", "grpo", "ppo", "dpo"))
    # another scale or tokenizer on the same OUT is refused, not answered with the old table
    for flags in (["--scale", "laptop"], ["--scale", "tiny", "--tokenizer", "bpe"]):
        code, stdout, err = folio_here("recipe", "assistant", *flags, "--out", out, "--json")
        assert code == 2 and err.count("\n") == 1, err
        assert "holds a recipe run with" in err and stdout == ""


def test_a_stopped_training_step_resumes_and_a_finished_one_is_not_rerun(tmp_path: Path) -> None:
    recipe = Recipe(tmp_path, SCALES["tiny"])
    step = next(s for s in recipe.steps() if s.name == "sft")
    assert "--resume" not in recipe.command(step)
    assert recipe.command(step)[-3:] == ["--quiet", "--out", str(tmp_path / "sft")]
    run = tmp_path / "sft"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"train": {"max_iters": 3}}))
    (run / "latest.json").write_text(json.dumps({"step": 2}))
    assert recipe.command(step)[-1] == "--resume" and not finished(run)
    (run / "latest.json").write_text(json.dumps({"step": 3}))
    assert finished(run)
    record = recipe.run_step(step)  # finished: recorded without running anything
    assert record["result"] == {"recovered": True} and recipe.record_path(step).exists()


def test_the_steps_follow_the_pipeline_and_a_given_base_is_not_pretrained(tmp_path: Path) -> None:
    names = [s.name for s in Recipe(tmp_path, SCALES["laptop"]).steps()]
    assert names[:4] == ["data", "base", "tasks", "eval-base"]
    for before, after in [("sft", "grpo"), ("sft", "prefs"), ("prefs", "reward"),
                          ("reward", "ppo"), ("prefs", "dpo"), ("ppo", "gold-ppo")]:  # fmt: skip
        assert names.index(before) < names.index(after)
    # --seed: every training step's train.seed, and nothing else (the data and test sets stay)
    seeded = Recipe(tmp_path / "s", SCALES["laptop"], seed=5).steps()
    trained = {s.name for s in seeded if s.run is not None}
    assert trained == {"base", "sft", "grpo", "sft-longer", "reward", "ppo", "dpo"}
    for step in seeded:
        assert (" --seed 5" in " ".join(step.args)) == (step.name in trained), step.args
    assert Recipe(tmp_path / "s", SCALES["laptop"], seed=5).settings()["seed"] == 5
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
    assert "per task" not in text and "gold rule's tests" not in text  # no such figures: no table
    sft = dict.fromkeys(TABLE_KEYS) | {
        "stage": "sft", "pass_at_1": 0.5, "tasks": {"reverse": 0.9, "add": 0.1},
        "tasks_k": {"reverse": 0.95, "add": None}, "gold_score": 0.5, "gold_word": 0.25, "gold_length": 0.375, "gold_end": 0.875,
        "reply_chars": 41.26,
    }  # fmt: skip
    text = format_table({"stages": [sft, row], "flip": 0.1, "rm_ceiling": 0.9, "seconds": 1})
    assert "| stage | reverse | add |" in text and "| sft | 0.900 (0.950) | 0.100 |" in text
    assert "| sft | 0.250 | 0.375 | 0.875 | 41.3 |" in text


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    """The real command exits 2 with one line; the other refusals, in this process, likewise."""
    (tmp_path / "notes.txt").write_text("mine")
    r = folio("recipe", "assistant", "--out", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "notes.txt" in r.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
    code, _, err = folio_here("recipe", "assistant", "--out", tmp_path / "o", "--base", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "not a Folio run" in err
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "latest.json").write_text("{}")
    code, _, err = folio_here(
        "recipe", "assistant", "--scale", "tiny", "--out", tmp_path / "o2", "--base", fake
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("folio: error: ")
    assert "Traceback" not in err and "log: " in err
    unwritable = ("--scale", "tiny", "--out", "/sys/folio-recipe")
    code, _, err = folio_here("recipe", "assistant", *unwritable)
    assert code == 2 and err.count("\n") == 1 and "--out /sys/folio-recipe" in err


def test_a_step_is_the_folio_command_a_user_would_type() -> None:
    step = Step("x", ["eval", "prefs", "--checkpoint", "rm", "--data", "p"])
    assert Recipe(Path("/tmp/none"), SCALES["tiny"]).command(step) == [*step.args, "--json"]


LONG_BASE = """
import sys
from dataclasses import replace
from pathlib import Path
from folio.recipes.assistant import SCALES, Recipe
from folio.recipes.runner import Stopped
base = tuple(a if a != "4" else "100000" for a in SCALES["tiny"].base)  # never ends by itself
base += ("--threads", "1")  # as every test trains: a second thread would mostly spin
try:
    Recipe(Path(sys.argv[1]), replace(SCALES["tiny"], base=base)).run()
except Stopped as e:
    print(f"folio: {e}", file=sys.stderr)
    raise SystemExit(128 + e.signum)
"""


def processes_naming(path: Path) -> list[int]:
    """Live processes whose command line names `path` (a recipe's steps do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                if str(path).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def start_long_recipe(out: Path, past_step: int) -> subprocess.Popen:
    """The recipe with a base stage that never ends, once its training is past `past_step`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", LONG_BASE, str(out)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 90
    metrics = out / "base" / "metrics.jsonl"
    while not (metrics.exists() and last_logged_step(metrics) > past_step):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    return proc


def last_logged_step(metrics: Path) -> int:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]
    return max((row.get("step", -1) for row in rows), default=-1)


def latest_step(run: Path) -> int:
    return json.loads((run / "latest.json").read_text())["step"]


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux's /proc")
def test_sigint_sigterm_and_sigkill_stop_the_recipe_keep_the_stage_and_leave_no_orphan(
    tmp_path: Path,
) -> None:
    """Each signal ends in a checkpoint of the running stage, no record of it as done, no
    process left behind, and a rerun that resumes the stage from where it stopped."""
    out = tmp_path / "recipe"
    base = out / "base"
    recipe = Recipe(out, SCALES["tiny"])
    base_step = next(s for s in recipe.steps() if s.name == "base")
    steps = 0
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)):
        proc = start_long_recipe(out, past_step=steps + 1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        if signum != signal.SIGKILL:
            assert err.strip().splitlines()[-1] == (
                f"folio: {signal.Signals(signum).name} during step base: it stopped cleanly "
                "(a training step keeps its checkpoint); rerun the same command to continue"
            )
        deadline = time.monotonic() + 30  # a killed recipe's stage gets SIGTERM from the kernel
        while processes_naming(out):
            assert time.monotonic() < deadline, "a step outlived its recipe"
            time.sleep(0.2)
        assert latest_step(base) > steps
        if signum != signal.SIGKILL:
            assert "checkpoint saved" in (out / "logs" / "base.log").read_text()
        else:  # its output went on to the files after the recipe was gone (its log lines to
            # the log, its result to the stdout file the recipe never got to copy)
            logged = (out / "logs" / "base.log").read_text()
            stdout = (out / "logs" / "base.log.stdout").read_text()
            assert "checkpoint saved" in logged + stdout
            assert json.loads(stdout.strip().splitlines()[-1])["stopped"] == "terminated"
        steps = latest_step(base)
        assert not recipe.record_path(base_step).exists()  # not done: it resumes on a rerun
        assert recipe.command(base_step)[-1] == "--resume"
    assert sorted(p.name for p in out.iterdir()) == [
        "base",
        "data",
        "logs",
        "recipe.json",
        "stages",
    ]


def test_a_stage_stopped_before_its_first_checkpoint_restarts_its_run_moved_aside(
    tmp_path: Path,
) -> None:
    recipe = Recipe(tmp_path, SCALES["tiny"])
    step = next(s for s in recipe.steps() if s.name == "sft")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "run.json").write_text("{}")
    assert recipe.command(step)[-1] == "--restart"
    (tmp_path / "sft.old-1").mkdir()  # what the restart leaves is the recipe's own
    _check_out(tmp_path)


def test_a_failed_step_quotes_its_error_line_not_its_summary(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    args = ["train", "--data", str(tmp_path / "none"), "--preset", "tiny", "--json"]
    with pytest.raises(FolioError, match=r"train failed \(exit 2\): folio: error: .*none"):
        run_folio([*args, "--out", str(tmp_path / "run")], log)
    log.write_text('$ folio x\nfolio: error: the refusal\n{"summary": 1}\n')
    assert _last_error(log) == "folio: error: the refusal"


def test_the_help_says_what_tiny_costs() -> None:
    from folio.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["recipe"]
    text = sub.format_help()
    assert "tiny: seconds" not in text and "about a minute" in " ".join(text.split())
