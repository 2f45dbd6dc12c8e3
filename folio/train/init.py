"""Where a run's weights start: fresh, a Hugging Face GPT-2 (`hf:DIR`) or a Folio run (`run:DIR`).

Fine-tuning starts from a trained model, and a trained model reads only the
token ids it was trained with. So the new run's tokenizer is the base
model's, extended where the new data needs it (folio/tokenizers/extend.py):
characters the new text has and the base lacks are appended in sorted order,
then special tokens (a dataset's, the chat turn tokens for SFT). Old ids never
change. The model's token embedding `wte` and head `lm_head` get one new row
per added token (folio/models/resize.py: each new row starts at the mean of
the old rows plus Gaussian noise of 1% of their standard deviation), and
everything else is copied, so on a sequence of old tokens the extended model
gives exactly the base's logits for the old tokens.

A dataset prepared on its own (`folio prepare` of new text) numbers its
characters by its own sorted vocabulary. Its token files are read through an
id map (`folio.tokenizers.extend.token_id_map`, by token string, and
`folio.data.batches.RemappedTokens`), so they arrive in the run's ids; the
files are never rewritten.

`run:DIR` takes a run directory (its latest checkpoint) or one checkpoint
directory (RUN/checkpoints/step-N). The model's shape comes from the base:
of the run's model settings only dropout applies, and a `--model.*` flag
other than dropout is refused (`check_model_overrides`) rather than ignored.

What the run started from is recorded as `"init"` in run.json and in every
checkpoint's state.json (`Start.record`): the source, the base checkpoint and
its step, the base vocabulary size, the added tokens in id order, and the
base's own "init" if it had one, so a chain of fine-tunes can be traced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from folio.checkpoint import load_checkpoint
from folio.config.run import RunConfig
from folio.config.run import check_model_overrides as check_model_overrides
from folio.errors import FolioError
from folio.fsutil import read_json
from folio.models.config import ModelConfig
from folio.models.resize import resize_vocab
from folio.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, tokenizer_from_dict
from folio.tokenizers.chat import with_chat_tokens
from folio.tokenizers.extend import added_tokens, extend_for_text

RUN_PREFIX = "run:"
HF_PREFIX = "hf:"
NEW_ROW_NOISE = 0.01
"""New embedding and head rows: the mean of the old rows plus this times their std of noise."""


@dataclass
class Base:
    """A trained model to start from, the tokenizer it reads, and where it came from."""

    model: nn.Module
    config: ModelConfig
    tokenizer: Tokenizer
    source: dict[str, Any]
    """{"from": the --init-from text, "checkpoint": its directory, "step", "init": the base's own}."""


@dataclass
class Start:
    """What a fine-tuning run starts from: its config, weights and tokenizer, and the record."""

    run: RunConfig
    """The run's config, its model the base's (vocab_size grown, the run's dropout)."""
    weights: dict[str, torch.Tensor] | None
    """None: a fresh initialisation."""
    tokenizer: Tokenizer
    record: dict[str, Any] | None
    """Written as "init" into run.json and every checkpoint's state.json (None: nothing)."""


def parse_init_from(init_from: str) -> tuple[str, Path]:
    """("run:" or "hf:", the directory) of an --init-from value; a FolioError for anything else."""
    for prefix in (RUN_PREFIX, HF_PREFIX):
        if init_from.startswith(prefix) and init_from[len(prefix) :]:
            return prefix, Path(init_from[len(prefix) :]).expanduser()
    raise FolioError(
        f"--init-from {init_from!r}: expected hf:DIR (a local Hugging Face GPT-2 directory) "
        f"or run:DIR (a Folio run or checkpoint directory)"
    )


def _hf_tokenizer(d: Path, vocab_size: int) -> Tokenizer:
    """A Hugging Face directory's tokenizer: Folio's export, else GPT-2's vocab.json/merges.txt."""
    f = d / "folio_tokenizer.json"
    if f.is_file():
        try:
            tok = tokenizer_from_dict(read_json(f, "tokenizer"))
        except FolioError as e:
            raise FolioError(str(e) if str(f) in str(e) else f"{f}: {e}") from None
    elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        tok = BPETokenizer.from_gpt2_files(d)
    else:
        raise FolioError(
            f"{d}: no tokenizer to read the data with (folio_tokenizer.json, or GPT-2's "
            f"vocab.json and merges.txt)"
        )
    if tok.vocab_size != vocab_size:
        raise FolioError(
            f"{d}: the tokenizer has {tok.vocab_size:,} tokens but the model {vocab_size:,}"
        )
    return tok


def load_language_model(init_from: str) -> Base:
    """`load_base`, refusing a reward model: pretraining and SFT start from a language model
    (a fine-tune of a reward model would be taken for one later, by `folio rl --algo ppo`)."""
    base = load_base(init_from)
    if base.config.model_type == "reward":
        raise FolioError(
            f"{base.source['checkpoint']}: this is a reward model; --init-from wants a "
            f"language model (a `folio train` or `folio sft` run)"
        )
    return base


def load_base(init_from: str) -> Base:
    """The model `--init-from run:DIR` or `hf:DIR` names, with its tokenizer, on the CPU."""
    prefix, path = parse_init_from(init_from)
    if prefix == RUN_PREFIX:
        ck = load_checkpoint(path, "latest")
        source = {
            "from": init_from,
            "checkpoint": str(ck.path.resolve()),
            "step": ck.state.get("step"),
        }
        if isinstance(ck.state.get("init"), dict):
            source["init"] = ck.state["init"]
        return Base(ck.model, ck.model_config, ck.tokenizer, source)
    from folio.hf import load_hf_gpt2  # only this source needs the interop module

    model, config = load_hf_gpt2(path)
    tokenizer = _hf_tokenizer(path, config.vocab_size)
    return Base(model, config, tokenizer, {"from": init_from, "checkpoint": str(path.resolve())})


# ------------------------------------------------------------------ vocabulary


def covering_tokenizer(
    base: Tokenizer,
    texts: Iterable[str] = (),
    tokenizers: Sequence[Tokenizer] = (),
    chat: bool = False,
) -> Tokenizer:
    """`base` extended to encode every text, every token of `tokenizers`, and the chat tokens.

    A character tokenizer gets the characters it lacks (from the texts and the
    other tokenizers' characters, sorted together), then the other tokenizers'
    special tokens, then (`chat`) the four chat tokens. A BPE tokenizer
    encodes any text already; another BPE tokenizer must be the same one, or
    one extending it (its extra special tokens are taken over). A tokenizer of
    another kind is refused: its ids cannot be mapped to the base's.
    """
    texts = list(texts)
    specials: list[str] = []
    for other in tokenizers:
        if other.kind != base.kind:
            raise FolioError(
                f"a {other.kind} tokenizer's ids cannot be read by a model trained with a "
                f"{base.kind} tokenizer: prepare the data with the base model's tokenizer kind"
            )
        if isinstance(other, CharTokenizer):
            texts.append("".join(c for c in other.chars if c not in other.specials))
            specials += other.specials
        else:
            try:
                specials += added_tokens(base, other)  # other extends base
            except FolioError:
                try:
                    added_tokens(other, base)  # base extends other: nothing to add
                except FolioError:
                    raise FolioError(
                        "the data's BPE tokenizer is not the base model's (nor an extension of "
                        "it): a BPE model reads only its own tokenizer's ids"
                    ) from None
    tok = extend_for_text(base, texts)
    missing = [s for s in dict.fromkeys(specials) if tok.special_token_id(s) is None]
    if missing:
        tok = tok.with_tokens(specials=missing)
    return with_chat_tokens(tok) if chat else tok


def require_extension(
    base: Tokenizer, tokenizer: Tokenizer, base_name: str, name: str
) -> list[str]:
    """The tokens `tokenizer` adds to `base`; one line naming both if it does not extend it.

    A policy and its reference (or a fine-tuned model and its base) must read
    text as the same ids, up to tokens appended at the end.
    """
    try:
        return added_tokens(base, tokenizer)
    except FolioError as e:
        raise FolioError(
            f"the tokenizer of {name} does not extend that of {base_name}: {e}"
        ) from None


# ------------------------------------------------------------------ the start


def start_from_base(run: RunConfig, base: Base, tokenizer: Tokenizer, seed: int) -> Start:
    """The run's config, weights and record, from `base` read with `tokenizer` (which extends its).

    New rows are drawn from a generator seeded with `seed`, so a resumed run
    rebuilds the same start.
    """
    added = require_extension(base.tokenizer, tokenizer, base.source["from"], "this run")
    model = base.model
    if added:
        model = resize_vocab(
            model,
            tokenizer.vocab_size,
            noise=NEW_ROW_NOISE,
            generator=torch.Generator().manual_seed(seed),
        )
    config = dataclasses.replace(base.config, vocab_size=tokenizer.vocab_size)
    if hasattr(config, "dropout") and hasattr(run.model, "dropout"):
        config = dataclasses.replace(config, dropout=run.model.dropout)
    weights = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    record = {
        **base.source,
        "base_vocab_size": base.tokenizer.vocab_size,
        "added_tokens": added,
    }
    return Start(dataclasses.replace(run, model=config), weights, tokenizer, record)
