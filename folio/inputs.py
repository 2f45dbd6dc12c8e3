"""What comes from outside, checked in one place: JSON values and text.

Every input boundary (JSONL files, HTTP bodies, chat input, what a tokenizer is
asked to encode) reads JSON with `parse_json` and checks text with
`check_text`. Each refuses what it cannot take with `InputError`, one line that
names where the input came from (the CLI prints it and exits 2; the server
answers 400):

- nesting deeper than `MAX_DEPTH` (Python's parser would raise RecursionError
  at about 1,000 levels, after using the stack);
- integers of more than `MAX_INT_DIGITS` digits (Python refuses over 4,300,
  with a ValueError, after the quadratic work), and NaN or Infinity, which
  are not JSON;
- text that is not UTF-8, and strings holding a lone UTF-16 surrogate (JSON's
  `"\\ud800"` is legal, but no tokenizer can encode it and no file can hold it
  as UTF-8).

A UTF-8 byte-order mark at the start of a document is dropped, as editors
on some systems write one.

Text from the operating system (command-line arguments, a terminal's input)
is decoded by Python with errors="surrogateescape": a byte that is not UTF-8
becomes a lone surrogate. `check_os_text` refuses it naming the byte.

Seeds given on the command line are checked by `check_seed`: every seed
reaches `torch.Generator.manual_seed`, which takes a signed 64-bit integer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from folio.errors import FolioError

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted (a chat message is 4 deep)."""
MAX_INT_DIGITS = 100
"""Longest integer accepted, in digits (a 64-bit seed has 20)."""

SEED_LIMIT = 2**63
"""Seeds are in [0, SEED_LIMIT): what torch's generators take (train.seed's range too)."""

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class InputError(FolioError):
    """Input that cannot be taken: the message says where and why (HTTP 400)."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InputError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_constant(name: str) -> Any:
    raise InputError(f"{name} is not a JSON number")


def check_text(text: str, where: str) -> str:
    """`text` if it can be encoded as UTF-8; else an InputError naming the first bad character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise InputError(
            f"{where}: holds a lone UTF-16 surrogate (U+{ord(bad):04X}) at character {e.start}, "
            f"which is not text"
        ) from None
    return text


def check_os_text(text: str, where: str) -> str:
    """`text` from argv or stdin if it is UTF-8 text; else an InputError naming the first bad byte.

    Python decodes those with errors="surrogateescape", which turns each byte
    b that is not UTF-8 into the lone surrogate U+DC00 + b (b >= 0x80).
    """
    bad = _ESCAPED_BYTE.search(text)
    if bad is not None:
        raise InputError(
            f"{where}: not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02X} "
            f"at character {bad.start()})"
        )
    return check_text(text, where)


def _check_value(value: Any, where: str) -> None:
    """Walk a parsed value without recursion: its depth, and the text of every string."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, where)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def parse_json(data: str | bytes, where: str) -> Any:
    """The JSON value in `data` (text, or UTF-8 bytes), checked as the module docstring says."""
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not UTF-8 (byte {e.start})") from None
    data = data.removeprefix("\ufeff")
    try:
        value = json.loads(data, parse_int=_parse_int, parse_constant=_parse_constant)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    except RecursionError:
        raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # what the parser raises beyond the above
        raise InputError(f"{where}: not valid JSON ({str(e).splitlines()[0][:80]})") from None
    _check_value(value, where)
    return value


def check_seed(seed: int | None, where: str = "--seed") -> int | None:
    """`seed` if it is None or an integer in [0, SEED_LIMIT); else an InputError naming `where`.

    A seed that grows (reply n of a chat uses seed + n) wraps modulo SEED_LIMIT.
    """
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT
    ):
        big = isinstance(seed, int) and seed.bit_length() > 128  # no page of digits in a message
        shown = f"an integer of {seed.bit_length()} bits" if big else repr(seed)[:40]
        raise InputError(f"{where}: must be a non-negative integer below 2**63, got {shown}")
    return seed
