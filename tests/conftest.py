"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture
def tinyshakespeare_path() -> Path:
    """The char-rnn tinyshakespeare file: $FOLIO_TINYSHAKESPEARE, else the shared copy.

    The shared copy lives outside the repository (in /work/shared beside it) and
    is never copied in; tests that need it skip when it is absent.
    """
    default = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"
    path = Path(os.environ.get("FOLIO_TINYSHAKESPEARE", default))
    if not path.is_file():
        pytest.skip(f"tinyshakespeare not found at {path}; set FOLIO_TINYSHAKESPEARE")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Tests train tiny models: one thread each, and the count put back afterwards.

    Tiny models gain nothing from threads, and on a busy machine OpenMP workers
    waiting for each other make every step many times slower. The trainer sets
    the thread count globally, so every test restores it.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session", autouse=True)
def one_thread_everywhere():
    """OMP_NUM_THREADS=1 for the session: a run told `threads 0` in a test, in this process or
    in a `folio` subprocess, takes one thread, as every test does.

    Without it each would take every core, and on a 2-core machine running two test workers
    the extra threads only wait on each other.
    """
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


@pytest.fixture(scope="session", autouse=True)
def folio_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the measured-peak-FLOP/s cache (and anything else Folio caches) out of $HOME.

    Session-wide, set in os.environ, so module fixtures and subprocesses see it too. Under
    pytest-xdist the workers share one (every write into it is a rename, so they never see
    half of a file).
    """
    old = os.environ.get("FOLIO_CACHE")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one cache for the run's workers: kernels built once
        shared = tmp_path_factory.getbasetemp().parent / "folio-cache"
        shared.mkdir(exist_ok=True)
        os.environ["FOLIO_CACHE"] = str(shared)
    else:
        os.environ["FOLIO_CACHE"] = str(tmp_path_factory.mktemp("folio-cache"))
    yield
    if old is None:
        os.environ.pop("FOLIO_CACHE", None)
    else:
        os.environ["FOLIO_CACHE"] = old
