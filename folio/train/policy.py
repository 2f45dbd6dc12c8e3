"""The models RL and preference stages start from, checked for their role.

A stage names a model as `run:DIR` (a Folio run directory, its latest
checkpoint, or a checkpoint directory). A policy is a chat language model
(`folio sft`'s, or a `folio rl` run's); a reward model is `folio reward`'s.
Giving one where the other is expected, or models whose tokenizers differ
(their token ids would mean different things), is a one-line error.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from folio.errors import FolioError
from folio.models import build_model
from folio.models.config import GPTConfig
from folio.tokenizers.chat import has_chat_template
from folio.train.init import RUN_PREFIX, Base, load_base
from folio.train.rundir import Pins

POLICY_TYPES = ("gpt", "gpt-value")
"""Model types that generate replies (a PPO run's model carries a value head too)."""


def where(model: Base) -> str:
    """The checkpoint directory a model was loaded from, for messages."""
    return model.source["checkpoint"]


def load_initial(spec: str, what: str = "--init-from") -> Base:
    """The model `run:DIR` names (a run directory's latest checkpoint, or a checkpoint
    directory), through the loader every fine-tune uses (folio/train/init.py)."""
    if not spec.startswith(RUN_PREFIX) or not spec[len(RUN_PREFIX) :]:
        raise FolioError(
            f"{what} expects run:DIR (a Folio run or checkpoint directory), got {spec!r}"
        )
    return load_base(spec)


def load_policy(spec: str, what: str = "--init-from") -> Base:
    """A chat language model (not a reward model) from run:DIR."""
    ck = load_initial(spec, what)
    if ck.config.model_type not in POLICY_TYPES:
        role = "a reward model" if ck.config.model_type == "reward" else "not a GPT"
        raise FolioError(
            f"{where(ck)}: this is {role}; {what} wants a chat language model (a `folio sft` run)"
        )
    if not has_chat_template(ck.tokenizer):
        raise FolioError(
            f"{where(ck)}: the checkpoint has no chat template (no <|user|>, <|assistant|>, "
            f"<|end|> tokens); fine-tune it with `folio sft` first"
        )
    return ck


def load_reward_model(spec: str, what: str = "--reward-model") -> Base:
    """A reward model (`folio reward`'s run) from run:DIR."""
    ck = load_initial(spec, what)
    if ck.config.model_type != "reward":
        raise FolioError(
            f"{where(ck)}: this is a language model ({ck.config.model_type}), not a reward "
            f"model; train one with `folio reward`"
        )
    return ck


def same_tokenizer(a: Base, b: Base) -> None:
    """Refuse two models whose token ids mean different things."""
    if a.tokenizer.to_dict() != b.tokenizer.to_dict():
        raise FolioError(
            f"{where(b)}: its tokenizer differs from {where(a)}'s; the policy, its reference and "
            f"the reward model must share one"
        )


def with_scalar_head(ck: Base, config_class: type, **changes) -> tuple[GPTConfig, dict]:
    """(config, weights) of a model with a scalar head on `ck`'s transformer: its weights, and
    the head as a fresh model of `config_class` initialises it (zeros: every score starts at 0)."""
    fields = {**ck.config.to_dict(), **changes}
    config = config_class(**fields)
    model = build_model(config)
    missing, unexpected = model.load_state_dict(ck.model.state_dict(), strict=False)
    if unexpected or not all(k.startswith("score_head.") for k in missing):
        raise FolioError(f"{where(ck)}: its weights do not fit a {config.model_type} model")
    return config, model.state_dict()


def policy_config(ck: Base) -> GPTConfig:
    """The policy's config with dropout off (RL and DPO rescore what they sampled)."""
    return dataclasses.replace(ck.config, dropout=0.0)


def frozen(model: nn.Module) -> nn.Module:
    """`model` as a fixed reference: no gradients, eval mode (no dropout), never stepped."""
    model.requires_grad_(False)
    return model.eval()


def load_pinned_policy(pins: Pins, init_from: str, reference_from: str | None) -> tuple[Base, Base]:
    """The chat model to train and its frozen reference (by default the same model), loaded
    through the run's pins (folio/train/rundir.py): on resume, the copies the run began with."""
    policy = load_policy(pins.spec("init_from", init_from))
    reference = reference_from or init_from
    ref = policy
    if reference != init_from:
        ref = load_policy(pins.spec("reference", reference), "--reference")
    same_tokenizer(policy, ref)
    pins.pin("init_from", init_from, where(policy))
    pins.pin("reference", reference, where(ref))
    return policy, ref
