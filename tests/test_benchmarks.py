"""The benchmark scripts that have no figures of their own to check: they run, and say what they skip."""

from __future__ import annotations

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
