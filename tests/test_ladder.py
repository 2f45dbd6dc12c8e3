"""`folio ladder`: every rung trains, and the table, JSON and chart are written."""

import contextlib
import io
import json

import pytest

import folio.recipes.ladder as ladder_module
import folio.train.trainer as trainer_module
from folio.cli import main
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset
from folio.recipes.ladder import RUNGS, Rung, markdown_table

TEXT = "".join(
    f"LINE {i % 7}:\nto be or not to be, that is the question {i % 5}.\n\n" for i in range(120)
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    (root / "t.txt").write_text(TEXT)
    prepare_dataset(load_corpus([str(root / "t.txt")]), root / "data")
    return root / "data"


def test_rungs_follow_the_video():
    names = [r[0] for r in RUNGS]
    assert names[0] == "bigram" and "LayerNorm" in names[-2] and "scale-up" in names[-1]
    assert [r[3] for r in RUNGS] == [2.49, 2.5, 2.28, 2.24, 2.08, 2.06, 1.48]


@pytest.fixture(scope="module")
def ladder_run(data_dir, tmp_path_factory):
    """`folio ladder --json` trained once for this module: its rows and its OUT."""
    out = tmp_path_factory.mktemp("ladder-run") / "out"
    buffer = io.StringIO()
    real_build = ladder_module.build_run_config
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buffer):
        # One thread per rung, as every test trains: `folio ladder` takes all physical cores,
        # whose OpenMP workers spin against each other on a busy machine. The rungs' own
        # loss plots are not looked at (ladder.png is, and stays).
        mp.setattr(
            ladder_module,
            "build_run_config",
            lambda preset, pairs: real_build(preset, [*pairs, ("train.threads", 1)]),
        )
        mp.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)
        rc = main(
            [
                "ladder",
                "--data",
                str(data_dir),
                "--out",
                str(out),
                "--max-iters",
                "3",
                "--eval-iters",
                "1",
                "--json",
            ]
        )
    assert rc == 0
    return json.loads(buffer.getvalue()), out


def test_ladder_without_scale_up_trains_six_rungs(ladder_run):
    rows, out = ladder_run
    assert len(rows) == 6
    for row in rows:
        assert set(row) == {"rung", "val_loss", "video_val_loss", "params", "seconds"}
        assert 0 < row["val_loss"] < 10 and row["params"] > 0
    assert (out / "ladder.md").read_text().startswith("| rung |")
    assert json.loads((out / "ladder.json").read_text()) == rows
    assert (out / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_has_one_line_per_rung(ladder_run):
    rows, out = ladder_run
    table = markdown_table([Rung(**row) for row in rows])
    assert table.count("\n") == len(rows) + 2
    assert (out / "ladder.md").read_text().strip() == table.strip()
