"""What a run carries across a stop: `TrainState` (counters and every random
stream) and `StopFlag` (Ctrl-C and SIGTERM become "stop at the next step").

Resume is exact because everything that decides the next step is here or in
the weights and optimizer: the step, tokens seen, the best val loss and the
patience count, and the Python, numpy, torch (CPU and CUDA) and batch
generators' states, per rank under torchrun.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from folio.errors import FolioError
from folio.train import distributed


@dataclass
class TrainState:
    """Everything resume restores besides weights and optimizer: counters and every RNG."""

    data_gen: torch.Generator
    """Draws the training batches (rank r: seeded with seed + r)."""
    step: int = 0
    tokens_seen: int = 0
    best_val: float = math.inf
    evals_since_best: int = 0
    elapsed: float = 0.0
    """Seconds of training in earlier sessions (the time budget and a time schedule count them)."""

    def state_dict(self, device: torch.device) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able counters and Python/numpy RNG, RNG tensors). A collective under torchrun."""
        np_state = np.random.get_state()
        plain = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "evals_since_best": self.evals_since_best,
            "elapsed_seconds": self.elapsed,
            "python_rng": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        }
        tensors = {"rng.torch": torch.get_rng_state(), "rng.data": self.data_gen.get_state()}
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        tensors.update(distributed.rank_rng_tensors(self.data_gen))  # ranks 1.., gathered
        return plain, tensors

    def load_state_dict(
        self,
        plain: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        *,
        seed: int,
        rank: int,
        device: torch.device,
        where: Path,
    ) -> None:
        try:
            self.step = int(plain["step"])
            self.best_val = float(plain.get("best_val_loss") or math.inf)
            self.evals_since_best = int(plain.get("evals_since_best", 0))
            self.tokens_seen = int(plain.get("tokens_seen", 0))
            self.elapsed = float(plain.get("elapsed_seconds", 0.0))
        except (KeyError, TypeError, ValueError):
            raise FolioError(f"{where / 'state.json'}: training state is malformed") from None
        distributed.restore_rank_rng(tensors, self.data_gen, seed, self.step, rank)
        if "rng.cuda" in tensors and device.type == "cuda" and rank == 0:
            torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        if "python_rng" in plain:
            v, internal, gauss = plain["python_rng"]
            random.setstate((v, tuple(internal), gauss))
        if "numpy_rng" in plain:
            name, keys, pos, has_gauss, cached = plain["numpy_rng"]
            np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


class StopFlag:
    """Ctrl-C or SIGTERM asks the loop to stop at the next step boundary; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Catch SIGINT and SIGTERM while the block runs (signals reach only the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def seed_everything(seed: int, rank: int) -> torch.Generator:
    """Seed Python, numpy and torch; return the batch generator (rank r: seed + r)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + rank)
