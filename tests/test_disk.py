"""Disk trouble: a run directory that turns read-only or full mid-run, and prepare into a full disk.

Each case goes through the CLI and expects exit status 2 with one line naming
the run directory and saying the previous checkpoint is intact, then checks
that it really is (it loads, and --resume continues from it).

Tests here usually run as root, for whom chmod does not block writes; the
disk is then simulated by making os.mkdir, os.rename, os.replace and open()
for writing raise OSError(EROFS or ENOSPC) for paths under the run directory.
The real chmod case runs where it can (as a normal user) and skips otherwise.
A real full disk is a small tmpfs mounted for the test (root only, else skipped).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import folio.train.trainer as trainer_module
from folio.checkpoint import load_checkpoint
from folio.cli import main
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("disk")
    rng = random.Random(0)
    words = ["the", "king", "of", "my", "lord", "art", "good"]
    lines = (" ".join(rng.choice(words) for _ in range(10)) for _ in range(100))
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "corpus.txt"


@pytest.fixture(scope="module")
def dataset(corpus: Path) -> Path:
    prepare_dataset(load_corpus([str(corpus)]), corpus.parent / "ds")
    return corpus.parent / "ds"


@pytest.fixture(autouse=True)
def no_plot(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)
    monkeypatch.setenv("FOLIO_CACHE", str(tmp_path_factory.getbasetemp() / "folio-cache"))


def _train(dataset: Path, run_dir: Path, max_iters: int, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(dataset),
        "--preset",
        "tiny",
        "--out",
        str(run_dir),
        "--quiet",
        "--threads",
        "1",
        "--max-iters",
        str(max_iters),
        "--set",
        "train.eval_interval=2",
        "--set",
        "train.eval_iters=1",
        *extra,
    ]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("folio: error: "), err
    return err[0]


def _break_writes(
    monkeypatch: pytest.MonkeyPatch, blocked: Callable[[Path], bool], code: int, dirs: bool = True
) -> None:
    """Writes to paths for which blocked(path) holds fail with OSError(code), as on a bad disk
    (dirs=False: new directories still work, only files fail)."""

    def fail(path) -> None:
        raise OSError(code, os.strerror(code), str(path))

    real_open, real_mkdir = builtins.open, os.mkdir
    real_rename, real_replace = os.rename, os.replace

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, str | Path) and set(mode) & set("wax+") and blocked(Path(file)):
            fail(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if dirs and blocked(Path(path)):
            fail(path)
        return real_mkdir(path, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        if blocked(Path(dst)):
            fail(dst)
        return real_rename(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if blocked(Path(dst)):
            fail(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    ("code", "where"),
    [
        (errno.EROFS, "run"),  # the whole run directory turns read-only
        (errno.ENOSPC, "run"),  # the disk fills: the metrics append fails first
        (errno.ENOSPC, "checkpoint"),  # the disk fills as a checkpoint directory is made
        (errno.ENOSPC, "checkpoint files"),  # ... or as its JSON files are written (atomic_write)
    ],
)
def test_run_directory_turning_read_only_or_full_keeps_the_previous_checkpoint(
    dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: int,
    where: str,
) -> None:
    run_dir = tmp_path / "run"
    real_save = trainer_module.save_checkpoint
    saved: list[int] = []

    def save_then_break(*args, **kwargs):
        path = real_save(*args, **kwargs)
        saved.append(args[4]["step"])
        if len(saved) == 1:  # after the first checkpoint, the disk goes bad
            root = run_dir.resolve() / ("checkpoints" if "checkpoint" in where else "")
            dirs = where != "checkpoint files"
            _break_writes(monkeypatch, lambda p: root in p.resolve().parents, code, dirs)
        return path

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_break)
    assert main(_train(dataset, run_dir, 6)) == 2
    line = _one_error_line(capsys)
    assert str(run_dir) in line and os.strerror(code) in line, line
    assert "the previous checkpoint is intact" in line, line
    monkeypatch.undo()

    ck = load_checkpoint(run_dir)
    assert ck.state["step"] == 2 and ck.path.name == "step-00000002"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000002"]
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)
    assert main(_train(dataset, run_dir, 4, "--resume")) == 0
    assert load_checkpoint(run_dir).state["step"] == 4


@pytest.mark.skipif(IS_ROOT, reason="root writes through chmod 0o555; simulated above instead")
def test_a_really_read_only_run_directory_is_one_line(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(_train(dataset, run_dir, 2)) == 0
    capsys.readouterr()
    for d in (run_dir / "checkpoints", run_dir):
        d.chmod(0o555)
    try:
        assert main(_train(dataset, run_dir, 4, "--resume")) == 2
        line = _one_error_line(capsys)
        assert str(run_dir) in line
    finally:
        for d in (run_dir, run_dir / "checkpoints"):
            d.chmod(stat.S_IRWXU)
    assert load_checkpoint(run_dir).state["step"] == 2


def test_prepare_into_a_full_disk_leaves_no_partial_dataset(
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "ds"
    assert main(["prepare", str(corpus), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()

    def full(fd: int) -> None:  # fsync is where a full disk often reports itself
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    for target in (out, tmp_path / "fresh"):
        assert main(["prepare", str(corpus), "--out", str(target)]) == 2
        line = _one_error_line(capsys)
        assert str(target) in line and "No space left on device" in line, line
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no .partial directory left
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old dataset is whole
    assert np.fromfile(out / "train.bin", dtype=np.uint16).size > 0


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a real tmpfs of a given size (as root), unmounted afterwards."""
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        if not IS_ROOT:
            pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
        point = tmp_path / f"small-fs-{len(mounts)}"
        point.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size // 1024}k", "tmpfs", str(point)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=False)


def _disk_usage(root: Path) -> int:
    """Bytes the files under root occupy, each rounded up to whole 4 KiB pages."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in root.rglob("*") if p.is_file())


def test_a_really_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous(
    dataset: Path,
    tmp_path: Path,
    small_filesystem: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # issue 19 item 13: safetensors reports a full disk as SafetensorError, not OSError.
    # The filesystem holds one checkpoint and a half: the second runs out of space.
    assert main(_train(dataset, tmp_path / "measure", 2)) == 0
    size = _disk_usage(tmp_path / "measure")
    per_checkpoint = _disk_usage(tmp_path / "measure" / "checkpoints")
    run_dir = small_filesystem(size + per_checkpoint // 2) / "run"
    capsys.readouterr()
    assert main(_train(dataset, run_dir, 6)) == 2
    line = _one_error_line(capsys)
    assert str(run_dir) in line and "No space left on device" in line, line
    assert "the previous checkpoint is intact" in line, line

    ck = load_checkpoint(run_dir)
    assert ck.state["step"] == 2 and ck.path.name == "step-00000002"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000002"]
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)  # on a disk with room, the run goes on from it
    assert main(_train(dataset, copy, 4, "--resume")) == 0
    assert load_checkpoint(copy).state["step"] == 4


def test_tensor_files_follow_the_umask_like_every_other_file(tmp_path: Path) -> None:
    # issue 19 (smaller): model.safetensors and trainer.safetensors were written 0600.
    from folio.checkpoint import clean_state_dict, save_checkpoint
    from folio.models import GPT, GPTConfig
    from folio.tokenizers import CharTokenizer
    from folio.train.optim import make_optimizer, optimizer_state

    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)
    model = GPT(cfg)
    optimizer = make_optimizer(model, 1e-3, 0.0, (0.9, 0.95), "cpu")
    for mask in (0o022, 0o027):
        old = os.umask(mask)
        try:
            run = tmp_path / f"run-{mask:o}"
            save_checkpoint(
                run, clean_state_dict(model), cfg, CharTokenizer("abcde"), {"step": 1},
                optimizer_state=optimizer_state(optimizer),
            )  # fmt: skip
        finally:
            os.umask(old)
        files = [p for p in run.rglob("*") if p.is_file()]
        assert {"model.safetensors", "trainer.safetensors"} <= {p.name for p in files}
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert modes == {name: 0o666 & ~mask for name in modes}, modes
