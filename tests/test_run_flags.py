"""Every training command takes the same run flags and prints its result in one shape."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest

from folio.cli import build_parser
from folio.commands.common import report_result, trainer_flags

TRAINING = ("train", "sft", "reward", "dpo", "rl")
RUN_FLAGS = ("--resume", "--restart", "--force", "--quiet", "--json")
FIELDS = ["run_dir", "step", "train_loss", "val_loss", "best_val_loss", "seconds",
          "tokens_per_s", "params", "stopped"]  # fmt: skip


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", TRAINING)
def test_every_training_command_takes_the_run_flags(command: str) -> None:
    flags = {s for a in _subparser(command)._actions for s in a.option_strings}
    assert set(RUN_FLAGS) <= flags, sorted(set(RUN_FLAGS) - flags)


def _result(history: list[dict]) -> SimpleNamespace:
    return SimpleNamespace(run_dir="runs/x", step=7, train_loss=1.5, val_loss=1.25,
                           best_val_loss=1.0, seconds=3.14159, tokens_per_s=1234.56,
                           n_params=99, stopped="max_iters", history=history)  # fmt: skip


def test_the_result_has_one_shape_with_the_stages_figures_after_the_runs_fields(capsys) -> None:
    args = argparse.Namespace(json=True)
    report_result(args, _result([{"accuracy": 0.5}, {"accuracy": 0.75, "margin": 2.0}]),
                  ("accuracy", "margin", "absent"), algo="ppo")  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["run_dir", "algo", *FIELDS[1:5], "accuracy", "margin", *FIELDS[5:]]
    assert out["accuracy"] == 0.75 and out["margin"] == 2.0  # the last evaluation's
    assert (
        out["seconds"] == 3.14 and out["tokens_per_s"] == 1234.6 and out["stopped"] == "max_iters"
    )
    report_result(args, _result([]))  # no evaluation yet: the run's fields alone
    assert list(json.loads(capsys.readouterr().out)) == FIELDS


def test_the_line_names_the_step_the_figures_and_the_run(capsys) -> None:
    args = argparse.Namespace(json=False)
    report_result(args, _result([{"pass_at_1": 0.5, "end_rate": 1.0}]), ("pass_at_1", "end_rate"))
    line = capsys.readouterr().out.strip()
    assert line == "done: step 7, val loss 1.2500, pass@1 0.5000, end rate 1.0000, 3.1 s -> runs/x"
    report_result(args, _result([]))
    assert capsys.readouterr().out.strip() == (
        "done: step 7, val loss 1.2500, 3.1 s, 1,235 tokens/s -> runs/x"
    )


def test_with_json_progress_goes_to_stderr(capsys) -> None:
    args = argparse.Namespace(resume=True, restart=False, force=True, quiet=True, json=True)
    flags = trainer_flags(args)
    assert {k: flags[k] for k in ("resume", "restart", "force", "progress")} == {
        "resume": True, "restart": False, "force": True, "progress": False}  # fmt: skip
    flags["log"]("eval step 5")
    assert capsys.readouterr() == ("", "eval step 5\n")  # stdout keeps only the JSON
