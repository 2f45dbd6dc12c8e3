"""Tests for folio/cli.py: the `folio` command end to end, in-process through `main`.

Every user mistake must end with exit status 2, exactly one line on stderr
starting with "folio: error:", no traceback, and nothing half-written where
the command would have written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from factories import cli

from folio.cli import build_parser, main

VERSE = [
    "FIRST CITIZEN:",
    "Before we proceed any further, hear me speak.",
    "ALL:",
    "Speak, speak.",
    "FIRST CITIZEN:",
    "You are all resolved rather to die than to famish?",
    "ALL:",
    "Resolved. resolved.",
    "FIRST CITIZEN:",
    "First, you know Caius Marcius is chief enemy to the people.",
    "ALL:",
    "We know't, we know't.",
]
CORPUS = "\n".join(VERSE * 8) + "\n"  # about 3 KB
PROMPT = "FIRST"
TRAIN = ["--preset", "tiny", "--max-iters", "20", "--quiet", "--threads", "1"]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> str:
    """Exit 2 and one line `folio: error: ...` containing every fragment."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("folio: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    """The output location is absent and no temporary sits beside it."""
    assert not out.exists()
    if out.parent.exists():
        hidden = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
        assert hidden == []


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@dataclass
class Trained:
    corpus: Path
    data: Path
    run: Path
    prepare_out: str
    train_out: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """`folio prepare` and `folio train --preset tiny --seed 1` once for the whole module."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    code, prepare_out, err = cli("prepare", corpus, "--out", root / "data")
    assert code == 0, err
    code, train_out, err = cli(
        "train", "--data", root / "data", "--out", root / "run", *TRAIN, "--seed", 1
    )
    assert code == 0, err
    return Trained(corpus, root / "data", root / "run", prepare_out, train_out)


@pytest.fixture
def no_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    """For runs whose loss.png nobody looks at: drawing it costs about 0.3 s an eval."""
    import folio.train.trainer

    monkeypatch.setattr(folio.train.trainer, "plot_losses", lambda out_dir, rows: None)


# ----------------------------------------------------------------- happy paths


def test_prepare_output(trained: Trained) -> None:
    out = trained.prepare_out
    assert f"length of dataset in characters: {len(CORPUS):,}" in out
    assert f"vocabulary ({len(set(CORPUS))} characters)" in out
    n_train = int(len(CORPUS) * 0.9)
    assert f"train tokens: {n_train:,}  val tokens: {len(CORPUS) - n_train:,}  (uint16)" in out
    assert sorted(p.name for p in trained.data.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_train_writes_a_run_directory(trained: Trained) -> None:
    assert "done: step 20" in trained.train_out
    for name in ("run.json", "metrics.jsonl", "latest.json", "best.json", "loss.png"):
        assert (trained.run / name).is_file(), name
    assert [p.name for p in (trained.run / "checkpoints").iterdir()] == ["step-00000020"]
    assert json.loads((trained.run / "run.json").read_text())["data"] == str(trained.data)


def test_eval_json(trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "eval", "--checkpoint", trained.run, "--splits", "train", "val",
                         "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["step"] == 20
    for split in ("train", "val"):
        loss = result[f"{split}_loss"]
        assert math.isfinite(loss) and 0 < loss < math.log(len(set(CORPUS))) + 1
        assert result[f"{split}_perplexity"] == pytest.approx(math.exp(loss))
    n_val = len(CORPUS) - int(len(CORPUS) * 0.9)
    assert result["val_tokens"] == n_val - 1  # every val token but the first is predicted


def test_sample_prints_prompt_and_new_tokens(
    trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "sample",
        "--checkpoint",
        trained.run,
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        40,
        "--temperature",
        0.8,
        "--seed",
        3,
    )
    assert code == 0, err
    assert err == ""
    assert out.endswith("\n")
    text = out[:-1]
    assert text.startswith(PROMPT)
    assert len(text) == len(PROMPT) + 40
    assert set(text) <= set(CORPUS)


def test_sample_seed_is_reproducible(trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sample", "--checkpoint", trained.run, "--max-new-tokens", 40, "--prompt", PROMPT]
    first = run(capsys, *args, "--seed", 5)
    again = run(capsys, *args, "--seed", 5)
    other = run(capsys, *args, "--seed", 6)
    assert first[0] == again[0] == other[0] == 0
    assert first[1] == again[1]
    assert first[1] != other[1]


def test_sample_decode_paths_agree(trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sample", "--checkpoint", trained.run, "--max-new-tokens", 40, "--prompt", PROMPT]
    args += ["--seed", 5]
    static = run(capsys, *args, "--decode", "static")
    assert static[0] == 0 and static[1] == run(capsys, *args, "--decode", "module")[1]
    assert static[1] == run(capsys, *args)[1]  # auto takes the static path here
    code, out, err = run(capsys, *args, "--weights", "int8")  # approximate: only its length
    assert code == 0 and len(out) == len(static[1])
    assert_user_error(*run(capsys, *args, "--decode", "module", "--weights", "int8")[::2],
                      "int8 weights need the decode path")  # fmt: skip


def test_train_seed_determinism(trained: Trained, tmp_path: Path, no_plot: None) -> None:
    def losses(run_dir: Path) -> list[float]:
        return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]

    code, out, err = cli(
        "train", "--data", trained.data, "--out", tmp_path / "same", *TRAIN, "--seed", 1, "--json"
    )
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["step"] == 20 and summary["stopped"] == "max_iters"
    assert len(losses(trained.run)) == 4  # log_interval 5
    assert losses(tmp_path / "same") == losses(trained.run)
    evals = [r for r in read_metrics(trained.run) if r.get("eval")]
    assert summary["val_loss"] == evals[-1]["val_loss"]

    code, _, err = cli("train", "--data", trained.data, "--out", tmp_path / "other", *TRAIN)
    assert code == 0, err  # the preset's seed, 1337
    assert losses(tmp_path / "other") != losses(trained.run)


def test_prepare_tinyshakespeare(
    tinyshakespeare_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "prepare",
        "tinyshakespeare",
        "--input",
        tinyshakespeare_path,
        "--out",
        tmp_path / "d",
    )
    assert code == 0, err
    assert "length of dataset in characters: 1,115,394" in out
    assert "vocabulary (65 characters)" in out
    assert "train tokens: 1,003,854  val tokens: 111,540" in out


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    assert text.startswith(f"usage: folio {command}")
    for action in subcommands()[command]._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            says_it = "default" in (action.help or "")  # then the formatter adds no second one
            assert says_it or f"(default: {action.default})" in text, action.dest


def test_top_level_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("prepare", "train", "eval", "sample"):
        assert command in out


def test_module_entry_point() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "folio", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: folio")
    assert "prepare" in r.stdout and "sample" in r.stdout


# ------------------------------------------------------------------ bad input


def test_prepare_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "prepare", tmp_path / "nope.txt", "--out", tmp_path / "d")
    assert_user_error(code, err, "nope.txt", "no such file")
    assert_nothing_written(tmp_path / "d")


@pytest.mark.parametrize("content", [b"", b"  \n\n\t\n", b"\xef\xbb\xbf"])
def test_prepare_empty_file(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty.txt").write_bytes(content)
    code, _, err = run(capsys, "prepare", tmp_path / "empty.txt", "--out", tmp_path / "d")
    assert_user_error(code, err, "empty")
    assert_nothing_written(tmp_path / "d")


def test_prepare_non_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Ophélie sings.\n".encode() + "Café crème\n".encode("latin-1") * 20)
    code, _, err = run(capsys, "prepare", bad, "--out", tmp_path / "d")
    assert_user_error(code, err, "latin1.txt", "byte offset 19", "--errors replace")
    assert_nothing_written(tmp_path / "d")

    code, out, err = run(capsys, "prepare", bad, "--out", tmp_path / "d", "--errors", "replace")
    assert code == 0, err
    assert "\ufffd" in out  # the replacement character is in the vocabulary
    assert (tmp_path / "d" / "meta.json").is_file()


def test_failed_prepare_keeps_previous_dataset(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d"
    shutil.copytree(trained.data, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "bad.txt").write_bytes(b"\xff\xff\n")
    code, _, err = run(capsys, "prepare", tmp_path / "bad.txt", "--out", out)
    assert_user_error(code, err, "byte offset 0")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_prepare_directory_without_txt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    (src / "readme.md").write_text("# not a .txt file\n")
    code, _, err = run(capsys, "prepare", src, "--out", tmp_path / "d")
    assert_user_error(code, err, "no .txt files")
    assert_nothing_written(tmp_path / "d")


@pytest.mark.parametrize("fraction", ["0", "1", "-0.5"])
def test_prepare_bad_val_fraction(
    fraction: str, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "prepare", trained.corpus, "--out", tmp_path / "d", f"--val-fraction={fraction}"
    )
    assert_user_error(code, err, "--val-fraction")
    assert_nothing_written(tmp_path / "d")


def test_train_val_split_shorter_than_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "short.txt").write_text(
        "To be, or not to be, that is the question:\nWhether tis no\n"
    )
    code, _, err = run(capsys, "prepare", tmp_path / "short.txt", "--out", tmp_path / "d")
    assert code == 0, err  # 60 characters: 54 train, 6 val
    code, _, err = run(capsys, "train", "--data", tmp_path / "d", "--out", tmp_path / "r", *TRAIN)
    assert_user_error(code, err, "val split has 6 tokens", "block_size + 1 = 17")
    assert_nothing_written(tmp_path / "r")


def test_train_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "train", "--data", tmp_path / "d", "--out", tmp_path / "r", *TRAIN)
    assert_user_error(code, err, "folio prepare")
    assert_nothing_written(tmp_path / "r")


def test_train_out_is_a_file(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r").write_text("a file, not a run directory")
    code, _, err = run(capsys, "train", "--data", trained.data, "--out", tmp_path / "r", *TRAIN)
    assert_user_error(code, err, "cannot create run directory")
    assert (tmp_path / "r").read_text() == "a file, not a run directory"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_train_again_on_a_run_refuses_and_keeps_it(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One re-run of a shell-history line must not wipe a trained run.
    run_dir = tmp_path / "run"
    shutil.copytree(trained.run, run_dir)
    before = _tree(run_dir)
    code, _, err = run(capsys, "train", "--data", trained.data, "--out", run_dir, *TRAIN)
    assert_user_error(code, err, "already holds a run at step 20", "--resume", "--restart")
    assert _tree(run_dir) == before


def test_train_into_a_directory_of_user_files_refuses(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "train", "--data", trained.data, "--out", tmp_path / "r", *TRAIN)
    assert_user_error(code, err, "is not empty", "notes.txt")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["notes.txt"]


def test_train_restart_moves_the_old_run_aside(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_plot: None
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained.run, run_dir)
    before = _tree(run_dir)
    args = ("train", "--data", trained.data, "--out", run_dir, *TRAIN, "--max-iters", 10)
    code, out, err = run(capsys, *args, "--restart")
    assert code == 0, err
    assert _tree(tmp_path / "run.old-1") == before  # the old run, whole, under a new name
    assert json.loads((run_dir / "latest.json").read_text())["step"] == 10
    code, out, err = run(capsys, *args, "--restart")  # a second restart takes the next name
    assert code == 0, err
    assert (tmp_path / "run.old-2" / "latest.json").exists()
    assert _tree(tmp_path / "run.old-1") == before
    code, _, err = run(capsys, *args, "--restart", "--resume")
    assert_user_error(code, err, "choose one")


@pytest.mark.parametrize("run_json", [None, "{}", '{"data": 5}', "[1]", "{broken"])
def test_eval_run_json_without_dataset(
    run_json: str | None, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained.run, run_dir)
    if run_json is None:
        (run_dir / "run.json").unlink()
    else:
        (run_dir / "run.json").write_text(run_json)
    code, out, err = run(capsys, "eval", "--checkpoint", run_dir)
    assert_user_error(code, err, "run.json")
    assert out == ""
    code, out, err = run(
        capsys, "eval", "--checkpoint", run_dir, "--data", trained.data, "--splits", "val"
    )
    assert code == 0, err  # naming the dataset explicitly works
    assert "val_loss" in out


def test_sample_prompt_outside_vocabulary(
    trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "sample", "--checkpoint", trained.run, "--prompt", "Quoth 🙂", "--seed", 0
    )
    assert_user_error(code, err, "outside the vocabulary", "'Q'", "'🙂'")
    assert out == ""


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_missing_checkpoint(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, command, "--checkpoint", tmp_path / "no-run")
    assert_user_error(code, err, "no-run", "not found")


def _truncate_weights(run_dir: Path) -> None:
    f = next(run_dir.glob("checkpoints/*/model.safetensors"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _empty_weights(run_dir: Path) -> None:
    next(run_dir.glob("checkpoints/*/model.safetensors")).write_bytes(b"")


def _garbage_config(run_dir: Path) -> None:
    next(run_dir.glob("checkpoints/*/config.json")).write_text("{garbage")


def _wrong_model_config(run_dir: Path) -> None:
    f = next(run_dir.glob("checkpoints/*/config.json"))
    config = json.loads(f.read_text())
    config["model"]["n_layer"] = 3
    f.write_text(json.dumps(config))


def _garbage_tokenizer(run_dir: Path) -> None:
    next(run_dir.glob("checkpoints/*/tokenizer.json")).write_text('{"kind": "char"}')


def _latest_points_nowhere(run_dir: Path) -> None:
    (run_dir / "latest.json").write_text('{"checkpoint": "checkpoints/step-99999999"}')


def _latest_is_garbage(run_dir: Path) -> None:
    (run_dir / "latest.json").write_bytes(b"\x00\x01")


def _no_pointer(run_dir: Path) -> None:
    (run_dir / "latest.json").unlink()
    (run_dir / "best.json").unlink()


def _model_config_not_a_table(run_dir: Path) -> None:
    f = next(run_dir.glob("checkpoints/*/config.json"))
    f.write_text(json.dumps({**json.loads(f.read_text()), "model": "gpt"}))


def _newer_format(run_dir: Path) -> None:
    f = next(run_dir.glob("checkpoints/*/config.json"))
    f.write_text(json.dumps({**json.loads(f.read_text()), "version": 99}))


def _garbage_state(run_dir: Path) -> None:
    next(run_dir.glob("checkpoints/*/state.json")).write_text("")


CORRUPTIONS = {
    "truncated weights": (_truncate_weights, "model.safetensors"),
    "empty weights": (_empty_weights, "model.safetensors"),
    "garbage config": (_garbage_config, "config.json"),
    "config not matching weights": (_wrong_model_config, "model.safetensors"),
    "model config not a table": (_model_config_not_a_table, "model config"),
    "newer format": (_newer_format, "upgrade Folio"),
    "garbage state": (_garbage_state, "state.json"),
    "garbage tokenizer": (_garbage_tokenizer, "tokenizer"),
    "latest points nowhere": (_latest_points_nowhere, "missing"),
    "garbage latest": (_latest_is_garbage, "latest.json"),
    "no pointer": (_no_pointer, "latest.json missing"),
}


@pytest.mark.parametrize("command", ["eval", "sample"])
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_checkpoint(
    corruption: str,
    command: str,
    trained: Trained,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    damage, fragment = CORRUPTIONS[corruption]
    run_dir = tmp_path / "run"
    shutil.copytree(trained.run, run_dir)
    damage(run_dir)
    extra = ["--max-new-tokens", 5] if command == "sample" else []
    code, out, err = run(capsys, command, "--checkpoint", run_dir, *extra)
    assert_user_error(code, err, fragment)
    assert out == ""


def test_unknown_preset(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "train", "--data", trained.data, "--out", tmp_path / "r", "--preset", "huge"
    )
    assert_user_error(code, err, "unknown preset 'huge'", "tiny")
    assert_nothing_written(tmp_path / "r")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.no_such_thing=1", "unknown setting 'no_such_thing'"),
        ("model.no_such_thing=1", "unknown setting 'no_such_thing'"),
        ("optim.learning_rate=1", "section must be 'model' or 'train'"),
        ("learning_rate", "expects key=value"),
        ("model.n_embd=33", "n_embd (33) must be divisible by n_head (2)"),
        ("train.learning_rate=-1e-3", "learning_rate must not be negative"),
        ("train.learning_rate=0", "learning_rate must be positive"),
        ("train.batch_size=2.5", "batch_size must be an integer"),
        ("model.n_layer=0", "n_layer must be a positive integer"),
        ("model.dropout=1.5", "dropout"),
        ("model.block_size=100000", "fewer than block_size + 1 = 100001"),
    ],
)
def test_bad_set(
    override: str,
    fragment: str,
    trained: Trained,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(
        capsys, "train", "--data", trained.data, "--out", tmp_path / "r", *TRAIN, "--set", override
    )
    assert_user_error(code, err, fragment)
    assert_nothing_written(tmp_path / "r")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--set", "model.n_hed=4"), "unknown setting 'n_hed' (did you mean 'n_head'?)"),
        (("--train.learnin_rate", "1"), "unrecognized arguments: --train.learnin_rate"),
        (("--set", "train.learnin_rate=1"), "did you mean 'learning_rate'?"),
        (("--model.n_embd", "33"), "n_embd (33) must be divisible"),
    ],
)
def test_misspelled_settings_fail_before_the_dataset_is_opened(
    argv: tuple[str, ...], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The dataset does not exist: an error about the config proves it was checked first.
    args = ("train", "--data", tmp_path / "no-data", "--out", tmp_path / "r", *TRAIN, *argv)
    if argv[0] == "--train.learnin_rate":  # argparse's own error: usage line, then the message
        with pytest.raises(SystemExit) as e:
            run(capsys, *args)
        assert e.value.code == 2
        assert fragment in capsys.readouterr().err
        return
    code, _, err = run(capsys, *args)
    assert_user_error(code, err, fragment)


def test_config_flags_reach_the_run(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_plot: None
) -> None:
    code, _, err = run(
        capsys, "train", "--data", trained.data, "--out", tmp_path / "r", *TRAIN,
        "--train.max_iters", 4, "--model.n_layer", 1, "--train.lr_schedule", "cosine",
    )  # fmt: skip
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "run.json").read_text())
    assert cfg["train"]["max_iters"] == 4 and cfg["train"]["lr_schedule"] == "cosine"
    assert cfg["model"]["n_layer"] == 1


def test_bad_flag_value(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "train",
        "--data",
        trained.data,
        "--out",
        tmp_path / "r",
        *TRAIN,
        "--learning-rate",
        -1,
    )
    assert_user_error(code, err, "learning_rate must not be negative")
    assert_nothing_written(tmp_path / "r")


# ----------------------------------------------------------------- speedruns


@pytest.mark.parametrize("preset", ["cpu-speedrun-188", "cpu-speedrun-148"])
def test_speedrun_presets_train_resume_and_evaluate(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: str
) -> None:
    # A few steps of each speedrun preset (Muon and all) from the CLI, then a resume
    # and the whole-split evaluation the speedrun figures come from.
    # One batch for the in-training evals (the preset's 10 took most of the time): the
    # whole-split evaluation below is the one that scores a speedrun.
    run_dir = tmp_path / "run"
    common = ["--data", trained.data, "--out", run_dir, "--preset", preset, "--quiet"]
    common += ["--threads", 1, "--set", "train.eval_iters=1"]
    code, _, err = run(capsys, "train", *common, "--max-iters", 2)
    assert code == 0, err
    code, _, err = run(capsys, "train", *common, "--max-iters", 3, "--resume")
    assert code == 0, err
    code, out, err = run(capsys, "eval", "--checkpoint", run_dir, "--splits", "val", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["step"] == 3 and math.isfinite(result["val_loss"])
    opt = json.loads(next(run_dir.glob("checkpoints/step-00000003/optimizer.json")).read_text())
    assert opt["param_groups"][0]["muon"] is True


def test_speedrun_benchmark_script_times_and_scores_a_preset(
    tinyshakespeare_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_plot: None,
) -> None:
    # benchmarks/speedrun.py end to end, on the tests' tiny preset so that it takes seconds.
    # The `python -m folio ...` commands it builds go through the same CLI in this process,
    # not three more interpreters that each import torch (test_module_entry_point covers
    # `python -m folio`). Nothing here looks at loss.png.
    import folio.runtime

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("speedrun", root / "benchmarks" / "speedrun.py")
    speedrun = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speedrun)
    commands: list[str] = []

    def run_folio(cmd: list[str], check: bool = False, **kwargs) -> subprocess.CompletedProcess:
        assert cmd[:3] == [sys.executable, "-m", "folio"], cmd
        commands.append(cmd[3])
        code, out, err = cli(*cmd[3:])
        if check and code:
            raise subprocess.CalledProcessError(code, cmd, out, err)
        return subprocess.CompletedProcess(cmd, code, out, err)

    monkeypatch.setattr(speedrun, "subprocess", SimpleNamespace(run=run_folio, DEVNULL=None))
    # One thread, as every test trains: the script leaves the count to `folio train`, which
    # takes every physical core, and the other cores run other tests.
    monkeypatch.setattr(folio.runtime, "physical_cores", lambda: 1)
    capsys.readouterr()
    code = speedrun.main(["--preset", "tiny", "--seeds", "3", "--input", str(tinyshakespeare_path),
                          "--results", str(tmp_path), "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert commands == ["prepare", "train", "eval"]
    rows = json.loads(out.splitlines()[-1])["runs"]
    assert [r["seed"] for r in rows] == [3] and rows[0]["step"] == 40
    assert 0 < rows[0]["val_loss"] < 4.2 and rows[0]["val_tokens"] == 111_539
    log = (tmp_path / "tiny-seed3.log").read_text()
    assert "wall clock of the train command" in log and '"val_loss"' in log


# ----------------------------------------------------------------- benchmarks


def test_bench_train_json_has_the_headline_figures(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "bench", "train", "--preset", "tiny", "--steps", 1, "--warmup", 1,
        "--no-compile", "--no-bf16", "--threads", 1, "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens_per_s"] > 0 and result["baseline_tokens_per_s"] > 0
    assert 0 < result["mfu"] < 1.5  # against a measured peak: a little noise either way
    assert [m["mode"] for m in result["modes"]] == [
        "baseline (fp32, eager, list of heads)",
        "fused (fp32, eager)",
        "fused + fast paths (fp32)",
    ]
    assert result["modes"][0]["speedup_vs_baseline"] == 1.0


def test_bench_sample_json_has_cached_and_uncached(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "bench", "sample", "--preset", "tiny", "--batch-sizes", 1, "--new-tokens", 20,
        "--uncached-tokens", 20, "--paths", "uncached", "module", "static", "static-int8",
        "--agreement-steps", 40, "--repeats", 1, "--threads", 1, "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens_per_s_cached"] > 0 and result["tokens_per_s_uncached"] > 0
    assert result["speedup"] == pytest.approx(
        result["tokens_per_s_cached"] / result["tokens_per_s_uncached"]
    )
    assert result["default_path"] == "static-kv eager float32"
    assert [r["path"] for r in result["grid"]] == [
        "uncached", "module-kv float32", "static-kv eager float32", "static-kv eager int8",
    ]  # fmt: skip
    report = result["precision"]["static-kv eager int8"]  # low precision: its distance to fp32
    assert report["steps"] == 40 and 0 < report["agreement"] <= 1 and report["max_logit_diff"] > 0


def test_bench_sample_table_names_the_path(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "bench", "sample", "--preset", "tiny", "--batch-sizes", 1, "--new-tokens", 5,
        "--paths", "static-bf16", "--agreement-steps", 20, "--repeats", 1, "--threads", 1,
    )  # fmt: skip
    assert code == 0, err
    assert "path: static-kv eager float32 (the default)" in out
    assert "| static-kv eager bfloat16 | 1 | 5 |" in out and "% of 20 |" in out


# ------------------------------------------- issue 19: limits, pipes and papercuts


def _folio_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))


@pytest.mark.parametrize("stream", [True, False])
def test_sample_into_a_closed_pipe_exits_quietly(trained: Trained, stream: bool) -> None:
    """`folio sample | head -c 50`: no BrokenPipeError traceback; exit 141, as `cat` gives.

    With --stream, through a real `head -c 50`; without, the reader closes the
    pipe before the sample is printed at the end.
    """
    # streamed: enough text that head cuts it; at the end: any length (the reader is gone)
    tokens = "3000" if stream else "200"
    argv = [sys.executable, "-m", "folio", "sample", "--checkpoint", str(trained.run),
            "--max-new-tokens", tokens, "--seed", "1"]  # fmt: skip
    if stream:
        import shlex

        script = f"{shlex.join(argv)} --stream | head -c 50; exit ${{PIPESTATUS[0]}}"
        r = subprocess.run(
            ["bash", "-c", script], capture_output=True, env=_folio_env(), timeout=120
        )
        code, out, err = r.returncode, r.stdout, r.stderr
        assert len(out) == 50
    else:
        child = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_folio_env()
        )
        child.stdout.close()  # the reader is gone before anything is written
        err = child.stderr.read()
        child.stderr.close()
        code = child.wait(timeout=120)
    assert err == b"", err.decode(errors="replace")[-600:]
    assert code == 141


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--max-new-tokens", 10**12], ["1,000,000,000,005 tokens", "token buffer", "--force"]),
        (["--num-samples", 10**9], ["1,000,000,000 sample(s)", "KV cache", "--force"]),
        (["--max-new-tokens", 0], ["--max-new-tokens must be a positive integer, got 0"]),
        (["--max-new-tokens", -5], ["--max-new-tokens must be a positive integer, got -5"]),
        (["--num-samples", 0], ["--num-samples must be a positive integer, got 0"]),
    ],
)
def test_sample_limits_are_one_line(
    flags: list, fragments: list[str], trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    """An 8 TB token buffer or a billion samples are refused before anything is allocated."""
    code, out, err = run(capsys, "sample", "--checkpoint", trained.run, "--prompt", PROMPT, *flags)
    assert_user_error(code, err, *fragments)
    assert out == ""


def test_sample_force_goes_past_the_memory_guard(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import folio.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)  # a 1 KiB machine
    args = ["sample", "--checkpoint", trained.run, "--max-new-tokens", 10, "--seed", 1]
    code, _, err = run(capsys, *args)
    assert_user_error(code, err, "0.0 GiB is available")  # loading is refused first
    code, out, err = run(capsys, *args, "--force")  # past both guards: loading and sampling
    assert code == 0, err
    assert len(out) == 10 + 1  # ten new characters and a newline (empty prompt)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--max-batches", 0], "--max-batches must be a positive integer"),
        (["--max-batches", -1], "--max-batches must be a positive integer"),
        (["--batch-size", -1], "--batch-size must be a positive integer, got -1"),
        (["--batch-size", 0], "--batch-size must be a positive integer, got 0"),
    ],
)
def test_eval_refuses_nonsense_limits(
    flags: list, fragment: str, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: --max-batches 0 reported loss 0.0 and perplexity 1.0; --batch-size 0 a traceback."""
    code, out, err = run(capsys, "eval", "--checkpoint", trained.run, *flags)
    assert_user_error(code, err, fragment)
    assert out == ""


@pytest.mark.parametrize("stream", [True, False])
def test_long_prompt_warning_comes_before_the_sample(trained: Trained, stream: bool) -> None:
    both = io.StringIO()  # stdout and stderr in the order they were written
    long_prompt = "ALL:\nSpeak, speak.\n" * 3  # longer than the tiny preset's block of 16
    argv = ["sample", "--checkpoint", str(trained.run), "--prompt", long_prompt,
            "--max-new-tokens", "20", "--seed", "1"] + (["--stream"] if stream else [])  # fmt: skip
    with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
        assert main(argv) == 0
    text = both.getvalue()
    assert text.startswith(
        f"warning: prompt of {len(long_prompt)} tokens is longer than block_size 16"
    )
    assert text.count("warning:") == 1
    assert text.splitlines()[1] == long_prompt.splitlines()[0]  # then the sample, prompt first


def test_stream_with_several_samples_is_refused(
    trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "sample", "--checkpoint", trained.run, "--stream", "--num-samples", 2
    )
    assert_user_error(code, err, "--stream prints one sample", "--num-samples 1")
    assert out == ""


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_vocab_size_outside_bpe_is_refused(
    tokenizer: str, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "prepare", trained.corpus, "--out", tmp_path / "d",
                       "--tokenizer", tokenizer, "--vocab-size", 300)  # fmt: skip
    assert_user_error(code, err, "--vocab-size applies to --tokenizer bpe only")
    assert_nothing_written(tmp_path / "d")


def test_vocab_size_defaults_to_4096_for_bpe_and_is_unset_for_char(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import folio.data.prepare as prepare_module

    seen = []

    def fake_prepare(corpus, out, **kw):
        seen.append(kw["vocab_size"])
        raise KeyboardInterrupt  # stop there: only the arguments matter

    monkeypatch.setattr(prepare_module, "prepare_dataset", fake_prepare)
    for tokenizer in ("char", "bpe"):
        assert cli("prepare", trained.corpus, "--out", tmp_path / "d", "--tokenizer", tokenizer)[0]
    assert cli("prepare", trained.corpus, "--out", tmp_path / "d", "--tokenizer", "bpe",
               "--vocab-size", 300)[0]  # fmt: skip
    assert seen == [4096, 4096, 300]  # char ignores it; the library default is kept


def _all_parsers(
    parser: argparse.ArgumentParser, name: str = "folio"
) -> dict[str, argparse.ArgumentParser]:
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                found.update(_all_parsers(p, f"{name} {sub}"))
    return found


def test_help_prints_each_default_once() -> None:
    """Before: `--threads ... (default: physical cores) (default: None)`."""
    for name, parser in _all_parsers(build_parser()).items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.default == argparse.SUPPRESS:
                continue
            text = formatter._get_help_string(action)
            said = len(re.findall(r"\bdefault\b", text.replace("%(default)s", "")))
            required = action.required or "required" in text
            assert said == 1 or (said == 0 and required), (name, action.dest, text)


def test_train_without_a_preset_names_the_presets(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: it trained the bigram model for 3000 iterations without a word."""
    code, _, err = run(capsys, "train", "--data", trained.data, "--out", tmp_path / "r")
    assert_user_error(code, err, "--preset is required", "bigram", "tiny", "video")
    assert_nothing_written(tmp_path / "r")
    code, _, err = run(capsys, "train", "--data", trained.data, "--out", trained.run, "--resume")
    assert_user_error(code, err, "--preset is required")
