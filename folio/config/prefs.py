"""`PrefConfig`: the settings of the preference stages, the `[prefs]` table of a preset.

Its own module, with no torch, as `RLConfig` is: `folio reward --help` and
`folio dpo --help` list these fields as flags without loading the models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from folio.errors import FolioError


@dataclass
class PrefConfig:
    """Settings of the preference stages (`folio reward`, `folio dpo`)."""

    beta: float = 0.1
    """DPO: the strength of the implicit KL leash (the reward is beta * log-ratio)."""
    center_coef: float = 0.0
    """Reward model: weight of the centring term mean((r_chosen + r_rejected)^2); 0: none."""
    gold_prompts: int = 64
    """DPO: held-out prompts whose sampled replies the gold rule scores at every eval."""
    max_new_tokens: int = 64
    """DPO: reply length limit of those samples."""
    ptx_coef: float = 0.0
    """DPO: weight of the SFT loss on --ptx-data conversations added to every step (as PPO-ptx),
    so the policy keeps what SFT taught beside what the pairs ask; 0: off."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise FolioError(f"prefs config: {f.name} must be a positive integer, got {v!r}")
            if f.type == "float":
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise FolioError(f"prefs config: {f.name} must be a finite number, got {v!r}")
                setattr(self, f.name, float(v))
        if self.beta <= 0:
            raise FolioError(f"prefs config: beta must be positive, got {self.beta}")
        for name in ("center_coef", "ptx_coef"):
            if getattr(self, name) < 0:
                raise FolioError(
                    f"prefs config: {name} must not be negative, got {getattr(self, name)}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
