"""Preference pairs: which of two replies to a prompt is better, for a reward model and DPO.

A pair is one JSONL line in the common form

    {"prompt": [messages], "chosen": "...", "rejected": "..."}

where the messages are the chat format's (folio/tokenizers/chat.py) and end
with the user's turn, and chosen and rejected are two assistant replies to it.
Users may write pairs by hand; every line is checked on reading and a bad
one is one FolioError naming its file and line. A preference directory holds
train.jsonl and test.jsonl (the held-out pairs that measure a reward model).

With no people to rank replies, `folio prefs make` ranks them by a hidden
gold rule and flips a share of the labels to simulate disagreeing labellers.
The rule (`gold_score`): to the prompt "Write a line for {SPEAKER} about
{word}", a good reply contains the word, is 20 to 60 characters long, and
ends with the end-of-turn token; the score is the share of the three met.
The reward model never sees the rule, so the gold score of a policy trained
against the reward model shows whether it learned the rule or its loopholes.

Prompts are drawn like the tasks' (folio/data/tasks.py): each has its own
seed, and a prompt's split is a function of its text, so train and test
never share one.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from folio.data.jsonl import join_text_parts, read_jsonl
from folio.data.material import Material
from folio.data.tasks import LINE_PROMPT, MAX_DRAWS, prompt_split
from folio.errors import FolioError
from folio.fsutil import (
    atomic_write_json,
    atomic_write_text,
    check_replaceable_dir,
    file_digests,
    replace_dir,
    scratch_dir,
)
from folio.inputs import InputError, parse_json
from folio.tokenizers.chat import validate_conversation

PREFS_FORMAT = "folio-prefs"
PREFS_FILES = ("train.jsonl", "test.jsonl")
FLIP = 0.1
"""Default share of labels flipped (chosen and rejected swapped) by `folio prefs make`."""
LINE_LENGTHS = (20, 60)
"""A good line is this many characters long, both ends included."""
_PROMPT_RE = re.compile(r"Write a line for (.+) about (\S+)")
_SEED_SPLIT = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Pair:
    """Two replies to one prompt, the first preferred."""

    prompt: list[dict]
    """The conversation so far, ending with the user's turn."""
    chosen: str
    rejected: str
    where: str = ""
    """"FILE:LINE" (for error messages), or "" for a pair made in memory."""

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def check_pair(obj: Any, where: str) -> Pair:
    """One pair from its JSON form; a FolioError naming `where` for anything wrong."""
    if not isinstance(obj, dict) or not {"prompt", "chosen", "rejected"} <= set(obj):
        raise FolioError(f'{where}: expected an object with "prompt", "chosen" and "rejected"')
    messages = validate_conversation({"messages": obj["prompt"]}, where, needs_reply=False)
    if messages[-1]["role"] != "user":
        raise FolioError(f"{where}: the prompt must end with the user's turn")
    for key in ("chosen", "rejected"):
        if not isinstance(obj[key], str):
            raise FolioError(f'{where}: "{key}" must be a string (the reply)')
    if obj["chosen"] == obj["rejected"]:
        raise FolioError(f"{where}: chosen and rejected are the same reply; a pair needs two")
    return Pair(messages, obj["chosen"], obj["rejected"], where)


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of one JSONL file (read by `folio.data.jsonl.read_jsonl`), each line checked."""
    pairs = []
    for where, obj in read_jsonl(path):
        if isinstance(obj, dict) and "prompt" in obj:
            obj = {**obj, "prompt": join_text_parts(obj["prompt"], where)}
        pairs.append(check_pair(obj, where))
    if not pairs:
        raise FolioError(f"{path}: holds no pairs (the file is empty or blank)")
    return pairs


def read_pref_dir(path: str | Path) -> tuple[list[Pair], list[Pair]]:
    """(train, test) pairs of a preference directory; both files are required."""
    d = Path(path)
    if d.is_file():
        raise FolioError(
            f"{path}: a preference file with no held-out split; give a directory holding "
            f"train.jsonl and test.jsonl (the test pairs measure the model)"
        )
    if not d.is_dir():
        raise FolioError(f"{path}: no such directory")
    for name in PREFS_FILES:
        if not (d / name).is_file():
            raise FolioError(
                f"{path}: no {name}; a preference directory holds train.jsonl and test.jsonl "
                f"(the held-out pairs)"
            )
    return read_pairs(d / "train.jsonl"), read_pairs(d / "test.jsonl")


# ------------------------------------------------------------- the gold rule


def line_prompt(rng: random.Random, material: Material) -> str:
    """A prompt of the gold rule: a speaker and one of the corpus's frequent words (topics)."""
    return LINE_PROMPT.format(
        speaker=rng.choice(material.speakers), word=rng.choice(material.topics)
    )


def line_prompts(split: str, n: int, seed: int, material: Material) -> list[str]:
    """n distinct prompts of one split, each drawn from its own seed (as the tasks' are)."""
    if split not in _SEED_SPLIT:
        raise ValueError(f"split must be train or test, got {split!r}")
    out: list[str] = []
    used: set[str] = set()
    for i in range(n):
        rng = random.Random(((seed << 32 | i) << 1) | _SEED_SPLIT[split])
        for _ in range(MAX_DRAWS):
            prompt = line_prompt(rng, material)
            if prompt not in used and prompt_split(prompt) == split:
                break
        else:
            raise FolioError(f"found only {len(used)} distinct {split} prompts; ask for fewer")
        used.add(prompt)
        out.append(prompt)
    return out


def is_gold_prompt(prompt: str) -> bool:
    """Whether the gold rule applies to a prompt (it has the form LINE_PROMPT)."""
    return _PROMPT_RE.fullmatch(prompt.strip()) is not None


GOLD_TESTS = ("word", "length", "end")
"""The names of the gold rule's three tests, in `gold_tests`' order."""


def gold_tests(prompt: str, reply: str, ended: bool = True) -> tuple[bool, bool, bool]:
    """The hidden rule's three tests of a reply, for "Write a line for {SPEAKER} about {word}":
    it contains the word, is 20 to 60 characters long (stripped), and ended with the
    end-of-turn token. A prompt of another form passes none."""
    m = _PROMPT_RE.fullmatch(prompt.strip())
    if m is None:
        return (False, False, False)
    text = reply.strip()
    lo, hi = LINE_LENGTHS
    return (m.group(2).lower() in text.lower(), lo <= len(text) <= hi, bool(ended))


def gold_score(prompt: str, reply: str, ended: bool = True) -> float:
    """The hidden rule's score of a reply: the share of its three tests passed (0 to 1)."""
    return sum(gold_tests(prompt, reply, ended)) / len(GOLD_TESTS)


def rank_replies(
    prompt: str, replies: Sequence[tuple[str, bool]], flip: float, rng: random.Random
) -> tuple[str, str] | None:
    """(chosen, rejected): the replies with the best and worst gold scores, swapped with
    probability `flip`; None when every reply scores the same (or two texts are equal)."""
    scored = sorted(replies, key=lambda r: gold_score(prompt, *r))
    worst, best = scored[0], scored[-1]
    if gold_score(prompt, *worst) == gold_score(prompt, *best) or worst[0] == best[0]:
        return None
    chosen, rejected = best[0], worst[0]
    if rng.random() < flip:
        chosen, rejected = rejected, chosen
    return chosen, rejected


PAIRINGS = ("extremes", "all")
"""How `make_pairs` pairs a prompt's ranked replies: its best against its worst (one pair a
prompt), or every two replies whose scores differ (InstructGPT's K-choose-2 comparisons: more
pairs from the same samples, among them the ones that differ by a single test)."""


def check_pairing(pairing: str) -> None:
    """A FolioError unless `pairing` is a name of PAIRINGS."""
    if pairing not in PAIRINGS:
        raise FolioError(f"--pairs must be one of {', '.join(PAIRINGS)}, got {pairing!r}")


def all_comparisons(
    prompt: str, replies: Sequence[tuple[str, bool]], flip: float, rng: random.Random
) -> list[tuple[str, str]]:
    """(chosen, rejected) for every two replies (in sampled order) whose gold scores differ
    and whose texts differ, the better one chosen, each pair swapped with probability `flip`."""
    scores = [gold_score(prompt, *r) for r in replies]
    out = []
    for i in range(len(replies)):
        for j in range(i + 1, len(replies)):
            if scores[i] == scores[j] or replies[i][0] == replies[j][0]:
                continue
            better, worse = (i, j) if scores[i] > scores[j] else (j, i)
            chosen, rejected = replies[better][0], replies[worse][0]
            if rng.random() < flip:
                chosen, rejected = rejected, chosen
            out.append((chosen, rejected))
    return out


def make_pairs(
    prompts: Sequence[str],
    sample: Callable[[Sequence[str]], list[list[tuple[str, bool]]]],
    flip: float,
    seed: int,
    pairing: str = "extremes",
) -> list[Pair]:
    """Pairs from sampled replies: `sample(prompts)` gives (text, ended) replies per prompt,
    paired as `pairing` (a name of PAIRINGS) says."""
    check_pairing(pairing)
    rng = random.Random(seed)
    pairs = []
    for prompt, replies in zip(prompts, sample(prompts), strict=True):
        messages = [{"role": "user", "content": prompt}]
        if pairing == "all":
            ranked = all_comparisons(prompt, replies, flip, rng)
        else:
            one = rank_replies(prompt, replies, flip, rng)
            ranked = [one] if one is not None else []
        pairs += [Pair(messages, *r) for r in ranked]
    return pairs


def _is_prefs_dir(path: Path) -> bool:
    try:
        names = {p.name for p in path.iterdir()}
        meta = parse_json((path / "prefs.json").read_bytes(), "prefs.json")
    except (OSError, InputError):
        return False
    return (
        names <= {*PREFS_FILES, "prefs.json"}
        and isinstance(meta, dict)
        and meta.get("format") == PREFS_FORMAT
    )


def check_prefs_target(out_dir: str | Path, force: bool = False) -> Path:
    """The absolute path `folio prefs make` may write to: new, empty, or a preference
    directory whose files are as it wrote them (any, with `force`)."""
    return check_replaceable_dir(
        out_dir, _is_prefs_dir, "a Folio preference directory", manifest="prefs.json", force=force
    )


def write_pref_dir(
    out_dir: str | Path,
    train: list[Pair],
    test: list[Pair],
    manifest: dict[str, Any],
    force: bool = False,
) -> Path:
    """Write train.jsonl, test.jsonl and prefs.json, built aside and renamed into place.

    A new or empty directory, or an earlier preference directory whose files
    are as written (prefs.json keeps their digests; pairs edited by hand are
    the user's), may be written, or any preference directory with `force`; a
    directory holding anything else is refused.
    """
    out = check_prefs_target(out_dir, force)
    if not train or not test:
        raise FolioError(
            f"no {'training' if not train else 'held-out'} pairs: every sampled reply scored the "
            f"same; sample more replies per prompt (--replies) or more prompts"
        )

    def jsonl(pairs: list[Pair]) -> str:
        return "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs)

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    with scratch_dir(tmp, f"cannot write preferences to {out_dir}: {{why}}"):
        atomic_write_text(tmp / "train.jsonl", jsonl(train))
        atomic_write_text(tmp / "test.jsonl", jsonl(test))
        files = file_digests(tmp, ["train.jsonl", "test.jsonl"])
        atomic_write_json(tmp / "prefs.json", {"format": PREFS_FORMAT, **manifest, "files": files})
        replace_dir(tmp, out)
    return out
