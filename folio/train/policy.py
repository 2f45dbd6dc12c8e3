"""The models RL and preference stages start from, checked for their role.

A stage names a model as `run:DIR` (a Folio run directory, its latest
checkpoint, or a checkpoint directory). A policy is a chat language model
(`folio sft`'s, or a `folio rl` run's); a reward model is `folio reward`'s.
Giving one where the other is expected, or models whose tokenizers differ
(their token ids would mean different things), is a one-line error.
"""

from __future__ import annotations

import dataclasses

from folio.checkpoint import Checkpoint, load_checkpoint
from folio.errors import FolioError
from folio.models import build_model
from folio.models.config import GPTConfig
from folio.tokenizers.chat import has_chat_template

POLICY_TYPES = ("gpt", "gpt-value")
"""Model types that generate replies (a PPO run's model carries a value head too)."""


def load_initial(spec: str, what: str = "--init-from") -> Checkpoint:
    """The checkpoint `run:DIR` names (a run directory's latest, or a checkpoint directory)."""
    kind, sep, path = spec.partition(":")
    if not sep or kind != "run" or not path:
        raise FolioError(
            f"{what} expects run:DIR (a Folio run or checkpoint directory), got {spec!r}"
        )
    return load_checkpoint(path, "latest")


def load_policy(spec: str, what: str = "--init-from") -> Checkpoint:
    """A chat language model (not a reward model) from run:DIR."""
    ck = load_initial(spec, what)
    if ck.model_config.model_type not in POLICY_TYPES:
        role = "a reward model" if ck.model_config.model_type == "reward" else "not a GPT"
        raise FolioError(
            f"{ck.path}: this is {role}; {what} wants a chat language model (a `folio sft` run)"
        )
    if not has_chat_template(ck.tokenizer):
        raise FolioError(
            f"{ck.path}: the checkpoint has no chat template (no <|user|>, <|assistant|>, "
            f"<|end|> tokens); fine-tune it with `folio sft` first"
        )
    return ck


def load_reward_model(spec: str, what: str = "--reward-model") -> Checkpoint:
    """A reward model (`folio reward`'s run) from run:DIR."""
    ck = load_initial(spec, what)
    if ck.model_config.model_type != "reward":
        raise FolioError(
            f"{ck.path}: this is a language model ({ck.model_config.model_type}), not a reward "
            f"model; train one with `folio reward`"
        )
    return ck


def same_tokenizer(a: Checkpoint, b: Checkpoint) -> None:
    """Refuse two models whose token ids mean different things."""
    if a.tokenizer.to_dict() != b.tokenizer.to_dict():
        raise FolioError(
            f"{b.path}: its tokenizer differs from {a.path}'s; the policy, its reference and "
            f"the reward model must share one"
        )


def with_scalar_head(ck: Checkpoint, config_class: type, **changes) -> tuple[GPTConfig, dict]:
    """(config, weights) of a model with a scalar head on `ck`'s transformer: its weights, and
    the head as a fresh model of `config_class` initialises it (zeros: every score starts at 0)."""
    fields = {**ck.model_config.to_dict(), **changes}
    config = config_class(**fields)
    model = build_model(config)
    missing, unexpected = model.load_state_dict(ck.model.state_dict(), strict=False)
    if unexpected or not all(k.startswith("score_head.") for k in missing):
        raise FolioError(f"{ck.path}: its weights do not fit a {config.model_type} model")
    return config, model.state_dict()


def policy_config(ck: Checkpoint) -> GPTConfig:
    """The policy's config with dropout off (RL and DPO rescore what they sampled)."""
    return dataclasses.replace(ck.model_config, dropout=0.0)
