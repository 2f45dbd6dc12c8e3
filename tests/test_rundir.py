"""A run directory belongs to its stage: --resume never lets one stage take over another's run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from factories import cli

import folio.train.trainer as trainer_module
from folio.errors import FolioError
from folio.train.rundir import STAGES, check_run_dir, recorded_stage, stage_of


def fake_run(path: Path, record: dict) -> dict[str, bytes]:
    """A run directory holding `record` as run.json and one checkpoint; returns its files."""
    (path / "checkpoints" / "step-000004").mkdir(parents=True)
    (path / "checkpoints" / "step-000004" / "model.safetensors").write_bytes(b"weights")
    (path / "run.json").write_text(json.dumps(record))
    (path / "latest.json").write_text(
        json.dumps({"step": 4, "checkpoint": "checkpoints/step-000004"})
    )
    return snapshot(path)


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_stage_of_reads_stage_then_an_rl_algo_then_pretraining() -> None:
    assert stage_of({"stage": "dpo"}) == "dpo"
    assert stage_of({"algo": "ppo", "rl": {}}) == "ppo"
    assert stage_of({"train": {}, "data": "d"}) == "pretrain"


@pytest.mark.parametrize("held", STAGES)
def test_resume_refuses_every_other_stages_run(tmp_path: Path, held: str) -> None:
    fake_run(tmp_path, {"stage": held})
    check_run_dir(tmp_path, held, resume=True, restart=False)  # its own stage: fine
    for stage in STAGES:
        if stage != held:
            with pytest.raises(FolioError, match=f"holds a {held} run, not a {stage} run"):
                check_run_dir(tmp_path, stage, resume=True, restart=False)
    assert recorded_stage(tmp_path) == held


def test_fresh_runs_and_restart_keep_their_rules(tmp_path: Path) -> None:
    check_run_dir(tmp_path / "new", "sft", resume=False, restart=False)
    fake_run(tmp_path, {"stage": "sft"})
    with pytest.raises(FolioError, match="already holds a run at step 4"):
        check_run_dir(tmp_path, "dpo", resume=False, restart=False)
    check_run_dir(tmp_path, "dpo", resume=False, restart=True)  # moves aside later, never deletes
    with pytest.raises(FolioError, match="choose one"):
        check_run_dir(tmp_path, "dpo", resume=True, restart=True)
    with pytest.raises(FolioError, match="nothing to resume"):
        check_run_dir(tmp_path / "none", "dpo", resume=True, restart=False)


def in_process(*args: object) -> subprocess.CompletedProcess:
    """`folio ARGS` run in this process (the same CLI, without a Python start-up)."""
    return subprocess.CompletedProcess(args, *cli(*args))


@pytest.mark.parametrize(
    "argv",
    [
        ["dpo", "--init-from", "run:{other}", "--data", "{other}"],
        ["reward", "--init-from", "run:{other}", "--data", "{other}"],
        ["sft", "--init-from", "run:{other}", "--data", "{other}"],
        ["rl", "--algo", "grpo", "--init-from", "run:{other}", "--tasks", "add"],
        ["train", "--data", "{other}", "--preset", "tiny"],
    ],
    ids=["dpo", "reward", "sft", "rl", "train"],
)
def test_a_command_resuming_another_stages_run_changes_nothing(tmp_path: Path, argv) -> None:
    """Refused in one line before anything is loaded: every file of the other run is kept."""
    run = tmp_path / "run"
    held = "ppo" if argv[0] != "rl" else "sft"
    before = fake_run(run, {"stage": held})
    other = tmp_path / "missing"
    r = in_process(*[a.format(other=other) for a in argv], "--out", run, "--resume")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and f"holds a {held} run" in r.stderr, r.stderr
    assert snapshot(run) == before


@pytest.fixture(autouse=True)
def no_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing here looks at loss.png, and drawing it costs about 0.3 s an eval.
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from folio.data.corpora import load_corpus
    from folio.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("rundir-data")
    (root / "t.txt").write_text("".join(f"line {i % 9}: to be or not to be.\n" for i in range(400)))
    prepare_dataset(load_corpus([str(root / "t.txt")]), root / "data")
    return root / "data"


TINY = ("--preset", "tiny", "--max-iters", 2, "--eval-interval", 2, "--set", "train.eval_iters=1",
        "--threads", 1, "--quiet")  # fmt: skip


def test_resume_refuses_a_setting_other_than_the_runs_own(dataset: Path, tmp_path: Path) -> None:
    """A flag left off takes the preset's default: the run is not silently changed."""
    run = tmp_path / "run"
    r = in_process(
        "train", "--data", dataset, "--out", run, *TINY, "--dtype", "float32", "--batch-size", 4
    )
    assert r.returncode == 0, r.stderr
    before = snapshot(run)
    r = in_process("train", "--data", dataset, "--out", run, *TINY, "--max-iters", 4, "--resume")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--resume continues the run as recorded, but train.batch_size was 4" in r.stderr
    assert snapshot(run) == before
    r = in_process("train", "--data", dataset, "--out", run, *TINY, "--dtype", "float32",
              "--batch-size", 4, "--max-iters", 4, "--resume")  # fmt: skip
    assert r.returncode == 0, r.stderr  # the recorded settings, and a longer run: fine


def test_a_directory_left_by_a_start_that_never_checkpointed_takes_a_fresh_run(
    dataset: Path, tmp_path: Path
) -> None:
    """A config error found after run.json was written never blocks the corrected rerun."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    (run / "checkpoints").mkdir()
    r = in_process("train", "--data", dataset, "--out", run, *TINY)
    assert r.returncode == 0, r.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "run.json").write_text("{}")
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    r = in_process("train", "--data", dataset, "--out", tmp_path / "mine", *TINY)
    assert r.returncode == 2 and "is not empty" in r.stderr


def test_a_run_that_used_its_time_budget_says_so_on_resume(dataset: Path, tmp_path: Path) -> None:
    """A resume trained one step and printed `done` where the clock had already ended the run."""
    run = tmp_path / "run"
    timed = ("--preset", "tiny", "--max-iters", 100000, "--eval-interval", 100000,
             "--set", "train.eval_iters=1", "--threads", 1, "--quiet")  # fmt: skip
    r = in_process("train", "--data", dataset, "--out", run, *timed, "--max-time", 1)
    assert r.returncode == 0, r.stderr
    before = snapshot(run)
    r = in_process("train", "--data", dataset, "--out", run, *timed, "--max-time", 1, "--resume")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "used its time budget of 1 s (it counts across resumes)" in r.stderr
    after = snapshot(run)
    for files in (before, after):
        files.pop(".lock")  # the lock names the last process that held it; nothing else moves
    assert "--max-time" in r.stderr and after == before
    r = in_process("train", "--data", dataset, "--out", run, *timed, "--max-time", 2, "--resume")
    assert r.returncode == 0, r.stderr


def test_a_run_the_clock_ends_shows_its_progress_without_a_step_total(
    dataset: Path, tmp_path: Path
) -> None:
    """As `make demo` trains: the schedule over time, the progress bar on (no step total)."""
    r = in_process("train", "--data", dataset, "--out", tmp_path / "run", "--preset", "tiny",
                   "--max-iters", 100000, "--max-time", 1, "--set", "train.schedule_clock=time",
                   "--set", "train.eval_iters=1", "--threads", 1)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "time budget of 1 s reached" in r.stdout + r.stderr and "it/s" in r.stderr
