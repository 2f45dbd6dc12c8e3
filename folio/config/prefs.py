"""`PrefConfig`: the settings of the preference stages, the `[prefs]` table of a preset.

Its own module, with no torch, as `RLConfig` is: `folio reward --help` and
`folio dpo --help` list these fields as flags without loading the models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from folio.config.checks import check_fields, within


@dataclass
class PrefConfig:
    """Settings of the preference stages (`folio reward`, `folio dpo`)."""

    beta: float = field(default=0.1, metadata=within(0, lo_open=True))
    """DPO: the strength of the implicit KL leash (the reward is beta * log-ratio)."""
    center_coef: float = field(default=0.0, metadata=within(0))
    """Reward model: weight of the centring term mean((r_chosen + r_rejected)^2); 0: none."""
    gold_prompts: int = field(default=64, metadata=within(1))
    """DPO: held-out prompts whose sampled replies the gold rule scores at every eval."""
    max_new_tokens: int = field(default=64, metadata=within(1))
    """DPO: reply length limit of those samples."""
    ptx_coef: float = field(default=0.0, metadata=within(0))
    """DPO: weight of the SFT loss on --ptx-data conversations added to every step (as PPO-ptx),
    so the policy keeps what SFT taught beside what the pairs ask; 0: off."""

    def __post_init__(self) -> None:
        check_fields(self, "prefs config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
