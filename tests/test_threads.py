"""A run told `threads 0` takes $OMP_NUM_THREADS threads where it is set, else the physical cores."""

from __future__ import annotations

import pytest

from folio import runtime


@pytest.mark.parametrize(
    "env, processes, expected",
    [("3", 1, 3), ("1", 2, 1), (None, 1, 8), (None, 2, 4), (None, 16, 1), ("0", 1, 8),
     ("two", 1, 8), (" 5 ", 1, 5)],
)  # fmt: skip
def test_default_threads(monkeypatch, env, processes, expected) -> None:
    monkeypatch.setattr(runtime, "physical_cores", lambda: 8)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert runtime.default_threads(processes) == expected


def test_set_threads_takes_a_count_as_given_and_zero_as_the_default(monkeypatch) -> None:
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    runtime.set_threads(0)
    assert torch.get_num_threads() == 2
    runtime.set_threads(1)  # conftest puts the count back after each test too
    assert torch.get_num_threads() == 1
