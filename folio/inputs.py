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
"""

from __future__ import annotations

import json
from typing import Any

from folio.errors import FolioError

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted (a chat message is 4 deep)."""
MAX_INT_DIGITS = 100
"""Longest integer accepted, in digits (a 64-bit seed has 20)."""


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
