"""The benchmark scripts that have no figures of their own to check: they run, and say what they skip."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_passes_on_the_cpu_and_names_what_it_skips(tmp_path: Path) -> None:
    env = {
        **os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path),
        "MPLBACKEND": "Agg",
    }  # fmt: skip
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "gpu_check.sh: dry run (CPU)" in out
    assert "PASS  preset gpu-speedrun-147 parses and stops at val 1.47" in out
    assert "PASS  gpu-speedrun-147's model shape trains 2 steps on the CPU" in out
    assert '"step": 2' in out
    for skipped in ("CUDA tests", "default test suite with CUDA present", "GPU speedrun"):
        assert f"SKIP  {skipped}" in out
    assert ", 0 failed, 3 skipped" in out
    assert not list(tmp_path.glob("folio-gpu-check.*"))  # the dry run's files were temporary


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_refuses_an_unknown_argument() -> None:
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert (
        r.stderr.strip() == "gpu_check.sh: error: unknown argument --fast (use --dry-run or --help)"
    )


# ------------------------------------------------------------------ benchmarks/vs_nanogpt.py


def _vs_nanogpt():
    """benchmarks/vs_nanogpt.py as a module (benchmarks/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "vs_nanogpt", ROOT / "benchmarks" / "vs_nanogpt.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_nanogpt_data_is_written_in_its_format(tmp_path: Path) -> None:
    import pickle

    import numpy as np

    vs = _vs_nanogpt()
    text = "ba ab\ncab\n" * 3  # 30 characters: 27 train, 3 val
    assert vs.write_nanogpt_data(text, tmp_path / "d") == 5
    chars = ["\n", " ", "a", "b", "c"]
    ids = [chars.index(c) for c in text]
    assert np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16).tolist() == ids[:27]
    assert np.fromfile(tmp_path / "d" / "val.bin", dtype=np.uint16).tolist() == ids[27:]
    meta = {
        "vocab_size": 5,
        "itos": dict(enumerate(chars)),
        "stoi": {c: i for i, c in enumerate(chars)},
    }
    # Compared as bytes: the harness writes nanoGPT's pickle and never reads one.
    assert (tmp_path / "d" / "meta.pkl").read_bytes() == pickle.dumps(meta)


def test_nanogpt_copy_refuses_a_directory_that_is_no_checkout(tmp_path: Path) -> None:
    vs = _vs_nanogpt()
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "train.py").write_text("")
    with pytest.raises(SystemExit, match="is no nanoGPT checkout \\(no model.py\\)"):
        vs.nanogpt_copy(tmp_path / "repo", tmp_path / "work", "abc")


def test_nanogpt_log_lines_are_parsed() -> None:
    vs = _vs_nanogpt()
    log = (
        "found vocab_size = 65 (inside data/shakespeare_char/meta.pkl)\n"
        "step 0: train loss 4.2874, val loss 4.2823\n"
        "iter 0: loss 4.2649, time 2034.81ms, mfu -100.00%\n"
        "iter 1: loss 3.9370, time 151.20ms, mfu -100.00%\n"
        "iter 2: loss nan, time 149.80ms, mfu 0.01%\n"
        "step 2000: train loss 1.7652, val loss 1.8857\n"
    )
    assert vs.parse_nanogpt_iters(log) == pytest.approx({0: 2.03481, 1: 0.1512, 2: 0.1498})
    assert vs.parse_nanogpt_evals(log) == [(0, 4.2874, 4.2823), (2000, 1.7652, 1.8857)]


def test_ratio_table_takes_best_against_best_and_shows_the_spread() -> None:
    vs = _vs_nanogpt()
    figures = {
        "train": ([{"tokens_per_s": 1000.0}, {"tokens_per_s": 1300.0}],
                  [{"tokens_per_s": 5200.0}, {"tokens_per_s": 2600.0}]),
        "speedrun": ([{"seconds": 101.3, "val_loss": 1.8857}, {"seconds": 120.0, "val_loss": 1.88}],
                     [{"seconds": 20.0, "val_loss": 1.87}, {"seconds": 18.6, "val_loss": 1.867}]),
    }  # fmt: skip
    report = {
        "figures": {
            f: {"nanogpt": n, "folio": fo, "summary": vs.summarize(f, n, fo)}
            for f, (n, fo) in figures.items()
        },
        "plan": {"shape": {"preset": "video"}, "new_tokens": 500},
        "machine": {"cpu": "Some CPU", "cores": 2, "flags": ["avx2"], "load_before": "1.00",
                    "load_after": "2.00"},
        "date": "2026-11-28 09:00", "repeats": 2, "nanogpt_commit": "abc", "quick": False,
    }  # fmt: skip
    assert report["figures"]["train"]["summary"]["ratio"] == 4.0
    assert report["figures"]["speedrun"]["summary"]["ratio"] == pytest.approx(101.3 / 18.6)
    table = vs.markdown(report).splitlines()
    assert table[0] == "| figure | nanoGPT | Folio | ratio | goal |"
    assert table[2] == (
        "| training the `video` model, tokens/s | 1,300 (1,000-1,300) tok/s "
        "| 5,200 (2,600-5,200) tok/s | 4.00x | >= 5x |"
    )
    assert table[3] == (
        "| `cpu-speedrun-188`: whole command to val <= 1.88 | 101.3 s (101.3 s-120.0 s) "
        "(val 1.8857) | 18.6 s (18.6 s-20.0 s) (val 1.8670) | 5.45x "
        "| >= 8x, and <= 10 s where bf16 is native |"
    )
    assert "Some CPU, 2 physical cores, flags avx2; 2026-11-28 09:00" in table[-1]


def test_vs_nanogpt_flags_are_checked() -> None:
    vs = _vs_nanogpt()
    assert vs.parse_only("speedrun,train,speedrun") == ["speedrun", "train"]
    with pytest.raises(Exception, match="unknown figure 'infer'"):
        vs.parse_only("train,infer")
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "vs_nanogpt.py"), "--nanogpt", "x", "--repeats", "1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 2
    assert "--repeats must be at least 2" in r.stderr.splitlines()[-1]


def _nanogpt_checkout() -> Path | None:
    for candidate in (os.environ.get("FOLIO_NANOGPT"), ROOT.parent / "nanoGPT"):
        if candidate and (Path(candidate) / "model.py").is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(
    _nanogpt_checkout() is None,
    reason="no nanoGPT checkout: set FOLIO_NANOGPT to one (CI has none)",
)
def test_vs_nanogpt_quick_runs_every_figure(tinyshakespeare_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "vs.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "vs_nanogpt.py"), "--nanogpt",
         str(_nanogpt_checkout()), "--quick", "--repeats", "1", "--input", str(tinyshakespeare_path),
         "--json-out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert list(report["figures"]) == ["train", "sample", "speedrun"]
    for entry in report["figures"].values():
        assert len(entry["nanogpt"]) == len(entry["folio"]) == 1
        assert entry["summary"]["ratio"] > 0
    assert report["figures"]["speedrun"]["nanogpt"][0]["step"] == 4
    assert "| figure | nanoGPT | Folio | ratio | goal |" in r.stdout


def test_frontier_times_the_folio_side_and_shifts_it_by_the_whole_command(
    tinyshakespeare_path: Path, tmp_path: Path
) -> None:
    # benchmarks/frontier.py's Folio side on the tests' tiny preset, with a budget of 0.6 s
    # (the script gives training its minutes less 30 s). Evals at the start and before the
    # stop make a curve of two points or more however few steps fit; no loss.png, as in
    # the speedrun presets the script is for.
    budget = 0.6
    out = tmp_path / "frontier.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--nanogpt", str(tmp_path),
         "--only", "folio", "--preset", "tiny", "--minutes", f"{0.5 + budget / 60:g}",
         "--folio-eval-interval", "5", "--set", "train.max_iters=100000",
         "--set", "train.threads=1", "--set", "train.plot=false",
         "--input", str(tinyshakespeare_path), "--json-out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    folio = json.loads(out.read_text())["folio"]
    curve = folio["curve"]
    assert len(curve) >= 2 and all(
        a["step"] < b["step"] for a, b in zip(curve, curve[1:], strict=False)
    )
    assert curve[-1]["seconds"] == pytest.approx(folio["wall_s"])  # the whole command
    assert budget <= folio["wall_s"] < 60 and folio["val_whole_split"] > 0
    assert "| seconds | step | val |" in r.stdout


# ------------------------------------------------------------------ benchmarks/grpo_room.py


def test_grpo_room_runs_sft_grpo_and_the_control_and_tabulates_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step of the benchmark, run in this process through the same runner interface
    (`folio recipe assistant`'s tests keep the process boundary)."""
    import importlib.util

    import folio.train.trainer as trainer_module
    from folio.cli import main
    from folio.recipes.runner import InProcess

    # Nothing here looks at loss.png, and its eight redraws were a third of the test's time.
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)

    spec = importlib.util.spec_from_file_location("grpo_room", ROOT / "benchmarks" / "grpo_room.py")
    grpo_room = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grpo_room)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("HAMLET:\nTo be, or not to be, 12+34=46.\n\n" * 40, encoding="utf-8")
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "ds"), "--tokenizer", "char"]) == 0
    assert main(["train", "--data", str(tmp_path / "ds"), "--preset", "tiny",
                 "--model.block_size", "64", "--max-iters", "2", "--set", "train.eval_iters=1",
                 "--dtype", "float32", "--out", str(tmp_path / "base"), "--quiet"]) == 0  # fmt: skip
    room = tmp_path / "room"
    argv = ["--out", str(room), "--base", str(tmp_path / "base"), "--mix-data",
            str(tmp_path / "ds"), "--n", "40", "--n-test", "8", "--n-val", "8", "--sft-iters", "3",
            "--grpo-iters", "2", "--lr", "3e-5", "--dtype", "float32", "--threads", "1"]  # fmt: skip
    a = grpo_room.parse_args(argv)
    grpo_room.write_result(a, grpo_room.Room(a, InProcess(main)).run(), argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = json.loads((room / "grpo_room.json").read_text())["rows"]
    assert list(rows) == ["sft", "control", "grpo-3e-05"]
    assert rows["sft"]["steps"] <= 3 and [rows[k]["steps"] for k in list(rows)[1:]] == [3, 2]
    assert len((room / "tasks" / "val.jsonl").read_text().splitlines()) == 8
    assert len((room / "tasks" / "train.jsonl").read_text().splitlines()) == 32
    assert all(0 <= row["pass_at_1"] <= row["pass_at_k"] <= 1 for row in rows.values())
    assert "kl" in rows["grpo-3e-05"] and "kl" not in rows["sft"]
    table = grpo_room.table(rows).splitlines()
    assert table[0].startswith("| model | steps | add pass@1 | vs SFT")
    assert table[2].startswith("| sft | ") and "+0.0" in table[2]
    # The command itself, rerun, finds every step's record and runs nothing.
    script = [sys.executable, str(ROOT / "benchmarks" / "grpo_room.py"), *argv]
    again = subprocess.run(script, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and again.stderr == "" and again.stdout.splitlines() == table


def test_grpo_room_wants_the_base_and_its_data_together(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "grpo_room.py"), "--out", str(tmp_path),
         "--base", str(tmp_path)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--base and --mix-data go together" in r.stderr.splitlines()[-1]


def test_grpo_room_records_no_step_that_a_signal_stopped(tmp_path: Path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("grpo_room", ROOT / "benchmarks" / "grpo_room.py")
    room_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(room_module)
    calls: list[list[str]] = []

    class FakeRunner:
        def run(self, argv, log, parse=True, name=None):
            calls.append(list(argv))
            return {"stopped": "terminated", "step": 7}

    args = room_module.parse_args(["--out", str(tmp_path), "--base", "b", "--mix-data", "d"])
    room = room_module.Room(args, FakeRunner())
    run = tmp_path / "sft"
    run.mkdir()
    (run / "latest.json").write_text("{}")
    with pytest.raises(room_module.FolioError, match="sft was stopped at step 7; rerun to resume"):
        room.step("sft", ["sft", "--out", str(run)], parse=True)
    assert calls == [["sft", "--out", str(run), "--resume"]]  # a started run is resumed
    assert not (tmp_path / "records" / "sft.json").exists()
