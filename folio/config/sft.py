"""`SFTConfig`: the settings of `folio sft`, the `[sft]` table of a preset.

Its own module, with no torch, as `RLConfig` and `PrefConfig` are: `folio sft
--help` lists these fields as `--sft.FIELD` flags without loading the trainer.
The short forms `--mix-fraction`, `--val-fraction` and `--eval-prompts` set the
same fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from folio.config.checks import check_fields, within

VAL_FRACTION = 0.05
MIX_FRACTION = 0.1
EVAL_PROMPTS = 64


@dataclass
class SFTConfig:
    """How `folio sft` holds out, mixes in and evaluates."""

    val_fraction: float = field(
        default=VAL_FRACTION, metadata=within(0, 1, lo_open=True, hi_open=True)
    )
    """Share of the conversations held out for validation when no val.jsonl or test.jsonl is
    given."""
    mix_fraction: float = field(default=MIX_FRACTION, metadata=within(0, 1, hi_open=True))
    """Share of each training batch's rows taken from --mix-data's text (read only with
    --mix-data)."""
    eval_prompts: int = field(default=EVAL_PROMPTS, metadata=within(0))
    """Validation prompts answered greedily at each eval for pass@1 and the end rate (0: none)."""

    def __post_init__(self) -> None:
        check_fields(self, "sft config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
