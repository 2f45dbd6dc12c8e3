"""Reading a text file the way every Folio corpus is read: UTF-8, normalised, in blocks.

A byte-order mark is dropped, "\\r\\n" and lone "\\r" become "\\n", and a final
"\\n" is added, so a corpus and its SHA-256 do not depend on the platform. A
file is read a block at a time (`iter_text_file`), so one larger than memory
can be streamed; `read_text_file` joins the blocks.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterator
from pathlib import Path

from folio.errors import FolioError

DECODE_ERRORS = ("strict", "replace")
BINARY_SNIFF_BYTES = 64 * 1024  # how much of a file is checked for binary content
BINARY_THRESHOLD = 0.30  # more control bytes than this: a binary file
_CONTROL_BYTES = bytes(range(32)) + b"\x7f"
BLOCK_BYTES = 1 << 22  # files are read this many bytes at a time


def binary_fraction(data: bytes) -> float:
    """The fraction of control bytes (NUL included; not tab, newlines or form feed) in `data`."""
    if not data:
        return 0.0
    text_controls = sum(data.count(b) for b in b"\t\n\r\f")
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    return (controls - text_controls) / len(data)


def _decoded(path: Path, errors: str, allow_binary: bool, size: int) -> Iterator[str]:
    """The file's characters, read `size` bytes at a time, after the binary guard and the BOM."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (a generator: closed by the `with` below)
    except FileNotFoundError:
        raise FolioError(f"{path}: no such file") from None
    except OSError as e:
        raise FolioError(f"{path}: cannot read ({e.strerror or e})") from None

    def reads() -> Iterator[bytes]:
        try:
            head = f.read(BINARY_SNIFF_BYTES)
            fraction = binary_fraction(head)
            if not allow_binary and fraction > BINARY_THRESHOLD:
                raise FolioError(
                    f"{path}: looks like a binary file ({fraction:.0%} of its first 64 KB are "
                    "control bytes such as NUL); pass --allow-binary to read it as text anyway"
                )
            start = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
            yield head[:start]  # the byte-order mark, if any: dropped
            for a in range(start, len(head), size):
                yield head[a : a + size]
            while data := f.read(size):
                yield data
        except OSError as e:
            raise FolioError(f"{path}: cannot read ({e.strerror or e})") from None

    with f:
        decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
        chunks = reads()
        offset = len(next(chunks))
        for data in itertools.chain(chunks, [b""]):
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last read
            try:
                yield decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise FolioError(
                    f"{path}: not valid UTF-8 at byte offset {offset - pending + e.start} "
                    "(use --errors replace to substitute U+FFFD)"
                ) from None
            offset += len(data)


def iter_text_file(
    path: Path, errors: str = "strict", allow_binary: bool = False, size: int = BLOCK_BYTES
) -> Iterator[str]:
    """A UTF-8 text file, normalised, in blocks read `size` bytes at a time.

    The blocks join to `read_text_file(path)`: memory stays bounded whatever
    the file's size, and no block ends inside a character or a "\\r\\n".
    """
    if errors not in DECODE_ERRORS:
        raise FolioError(f"unknown --errors value {errors!r}: use 'strict' or 'replace'")
    carry = ""  # a final "\r" waits for the next block: it may start a "\r\n"
    has_text = False
    last = ""
    for chunk in _decoded(Path(path), errors, allow_binary, size):
        chunk = carry + chunk
        carry = "\r" if chunk.endswith("\r") else ""
        block = chunk[: len(chunk) - len(carry)].replace("\r\n", "\n").replace("\r", "\n")
        if block:
            has_text = has_text or not block.isspace()
            last = block[-1]
            yield block
    if carry:
        last = "\n"
        yield "\n"
    if not has_text:
        raise FolioError(f"{path}: file is empty")
    if last != "\n":
        yield "\n"


def read_text_file(path: Path, errors: str = "strict", allow_binary: bool = False) -> str:
    """Read a UTF-8 text file and normalise it.

    A leading byte-order mark is dropped; "\\r\\n" and lone "\\r" become "\\n";
    a final "\\n" is added if missing. With errors="replace", bytes that are not
    UTF-8 become U+FFFD instead of stopping with an error. A file whose first
    64 KB are more than 30% control bytes is taken for binary and refused,
    unless allow_binary.
    """
    return "".join(iter_text_file(path, errors, allow_binary))
