"""JSONL files as Folio reads them: one JSON value a line, each checked, each error one line.

Every JSONL file a user gives (conversations for `folio sft`, task test sets,
preference pairs) is read here. Each line is parsed by `folio.inputs.parse_json`,
which bounds what a hostile line can cost (nesting, huge integers) and refuses
what no later stage could use (bytes that are not UTF-8, lone UTF-16 surrogates
such as JSON's `"\\ud800"`); its error names the file and the line, as
"FILE:LINE: ...". Blank lines are skipped. A UTF-8 byte-order mark at the start
of the file is dropped, as editors on some systems write one.

Lines are split on "\\n" only (a "\\r" before it is JSON whitespace), so the
line numbers are those every editor shows. A file that is not UTF-8 is refused
before any line is read, naming the line of its first bad byte.

A message's "content" may be a list of parts, `[{"type": "text", "text": "..."}]`,
as the OpenAI API writes it and `folio serve` accepts it; `join_text_parts`
joins the text parts into one string, as the server does, so data logged from
the server trains as it is. A part of another kind (an image) is refused: no
Folio model can read it.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from folio.errors import FolioError
from folio.inputs import parse_json


def read_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """("FILE:LINE", value) for each non-blank line of a JSONL file, in order.

    A file that cannot be read, or a line that is not acceptable JSON (see the
    module docstring), is a FolioError naming it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FolioError(f"{path}: cannot read it ({e.strerror or e})") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:  # the whole file first: a file in another encoding is named as such, not by a line
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        raise FolioError(
            f"{path}:{line}: not UTF-8 text (byte {e.start - start + 1} of the line)"
        ) from None
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            where = f"{path}:{n}"
            yield where, parse_json(line, where)


def join_text_parts(messages: Any, where: str) -> Any:
    """`messages` with each content-part list joined into its text; anything else unchanged.

    A message whose "content" is a list must hold text parts only
    (`{"type": "text", "text": "..."}`); another part is a FolioError naming
    `where` and the message. What is not a list of messages is returned as it
    is, for the conversation's own check to name.
    """
    if not isinstance(messages, list):
        return messages
    out = []
    for n, m in enumerate(messages, 1):
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            texts = []
            for part in m["content"]:
                if not (isinstance(part, dict) and part.get("type") == "text"):
                    kind = part.get("type") if isinstance(part, dict) else None
                    shown = f"a {kind[:40]!r} part" if isinstance(kind, str) else "an untyped part"
                    raise FolioError(
                        f"{where}: message {n} has {shown}; only text parts "
                        f'({{"type": "text", "text": "..."}}) can be read'
                    )
                if not isinstance(part.get("text"), str):
                    raise FolioError(
                        f'{where}: message {n} has a text part without a string "text"'
                    )
                texts.append(part["text"])
            m = {**m, "content": "".join(texts)}
        out.append(m)
    return out
