"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
