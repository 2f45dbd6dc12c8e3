"""What a training run tells its user while it runs: the setup line, the progress bar, MFU
and the line a stop ends with. The `Trainer` calls these; none of them changes training.

MFU (model FLOPs utilisation, as in the PaLM paper) is the FLOPs a token needs
(6N plus attention's, `folio.runtime.flops_per_token`) times tokens per second,
over the device's measured peak (`folio.runtime.peak_flops`), measured once on
first use and cached per machine.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

from folio.runtime import peak_flops


def setup_line(
    model_type: str, n_params: int, device: torch.device, dtype: torch.dtype, tokens_per_step: int
) -> str:
    """'gpt model, 10.75M parameters | device cpu, fp32, 2 threads | 32768 tokens/step'."""
    precision = "fp32" if dtype == torch.float32 else f"{str(dtype).split('.')[-1]} autocast"
    threads = torch.get_num_threads() if device.type == "cpu" else ""
    return (
        f"{model_type} model, {n_params / 1e6:.2f}M parameters | device {device}, "
        f"{precision}, {threads} threads | {tokens_per_step} tokens/step"
    )


class MFU:
    """Model FLOPs utilisation of a tokens/s figure; the peak is measured at first use."""

    def __init__(
        self, flops_per_token: float, device: torch.device, dtype: torch.dtype, world_size: int
    ) -> None:
        self.flops_per_token, self.device, self.dtype = flops_per_token, device, dtype
        self.world_size = world_size
        self.peak: float | None = None

    def of(self, tokens_per_s: float) -> float | None:
        """The share of the peak used, or None where the peak or the FLOPs are unknown."""
        if self.peak is None and self.flops_per_token:
            self.peak = peak_flops(self.device, self.dtype)
        if not self.peak:
            return None
        return self.flops_per_token * tokens_per_s / (self.peak * self.world_size)


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int | None, initial: int) -> Iterator[Any]:
    """A tqdm bar on stderr from `initial` to `total` steps (None: a count, no percentage), or
    None when not enabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(
        total=total, initial=initial, desc="train", unit="it", dynamic_ncols=True, file=sys.stderr
    )
    with bar:
        yield bar


def show_step(bar: Any, stats: dict[str, float]) -> None:
    """Advance the bar by one step, showing its loss, learning rate and tokens/s."""
    bar.update(1)
    bar.set_postfix(
        loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}",
        tok_s=f"{stats['tokens_per_s']:,.0f}", refresh=False,
    )  # fmt: skip


def stop_message(reason: str, step: int, max_time: float) -> str:
    """The line a run that stopped early ends with: the clock, or a signal and how to go on."""
    if reason == "max_time":
        return f"time budget of {max_time:g} s reached at step {step}"
    what = "stopped by SIGTERM" if reason == "terminated" else "interrupted"
    return f"{what}: checkpoint saved at step {step}; continue with --resume"
