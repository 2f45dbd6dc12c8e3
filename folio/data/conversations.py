"""Conversation data for fine-tuning: JSONL files -> checked messages -> packed training rows.

Notation: N rows, T block_size.

A conversation file is JSONL, one `{"messages": [...]}` object a line (the
chat format of `folio.tokenizers.chat`), optionally with a `"task"` name as
`folio tasks make` writes. Each line is checked on reading, and a bad one is
one FolioError naming its file and line number. Blank lines are skipped; a
file with no conversation at all is an error.

For SFT, rendered conversations (ids, mask) are packed into fixed rows of
T + 1 tokens: x is a row's first T tokens, y its last T (the next token at
every position), and loss_mask[t] = 1 exactly when y[t] is assistant content
or the END closing an assistant turn. Several conversations share a row,
each starting at a role token; attention may look back into the previous
conversation of the row, as in packed pretraining, but no target is ever
taken from a user or system turn. A conversation never spans two rows: when
the next one does not fit, the rest of the row is padding (mask 0).

A conversation longer than T + 1 tokens is refused, not truncated: cutting it
would drop the reply's end (and with it END, so the model would not learn to
stop) or its start (the question the reply answers). The error names the
file and line, so the user can shorten it or train with a larger block_size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from folio.errors import FolioError
from folio.tokenizers.chat import ChatTokenizer, render_conversation, validate_conversation


@dataclass
class Conversation:
    """One checked conversation and where it came from."""

    messages: list[dict]
    """The messages, each {"role", "content"}."""
    where: str
    """"FILE:LINE", for error messages."""
    task: str | None = None
    """The line's "task" name, if it has one (task test sets do)."""


def jsonl_files(path: str | Path) -> list[Path]:
    """The file itself, or every *.jsonl under a directory (sorted); a FolioError if none."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.jsonl") if f.is_file())
        if not files:
            raise FolioError(f"{path}: directory contains no .jsonl files")
        return files
    if p.is_file():
        return [p]
    raise FolioError(f"{path}: no such file or directory")


def read_jsonl_file(path: Path, needs_reply: bool = True) -> list[Conversation]:
    """The conversations of one JSONL file, each line checked (see `validate_conversation`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise FolioError(f"{path}:{line}: not UTF-8 text") from None
    except OSError as e:
        raise FolioError(f"{path}: cannot read it ({e.strerror or e})") from None
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FolioError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        messages = validate_conversation(obj, where, needs_reply=needs_reply)
        task = obj.get("task")
        if task is not None and not isinstance(task, str):
            raise FolioError(f'{where}: "task" must be a string, got {task!r}')
        out.append(Conversation(messages, where, task))
    if not out:
        raise FolioError(f"{path}: holds no conversations (the file is empty or blank)")
    return out


def read_conversations(path: str | Path, needs_reply: bool = True) -> list[Conversation]:
    """Every conversation of a JSONL file, or of every *.jsonl under a directory, in order.

    needs_reply: each conversation must have an assistant turn (training and
    test data do; the final assistant message of a test line is its answer).
    """
    return [c for f in jsonl_files(path) for c in read_jsonl_file(f, needs_reply)]


def render_conversations(
    tokenizer: ChatTokenizer, conversations: Iterable[Conversation]
) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of each conversation; a FolioError naming the line for text outside the vocabulary."""
    out = []
    for c in conversations:
        try:
            out.append(render_conversation(tokenizer, c.messages))
        except FolioError as e:
            raise FolioError(f"{c.where}: {e}") from None
    return out


def pack_rows(
    rendered: Sequence[tuple[Sequence[int], Sequence[int]]],
    block_size: int,
    pad_id: int = 0,
    names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack (ids, mask) conversations into rows for next-token training: (x, y, loss_mask).

    Each row holds block_size + 1 tokens, whole conversations in the given
    order, then `pad_id` padding; x = row[:-1], y = row[1:], and
    loss_mask = mask[1:], so a position is supervised iff its target y is
    assistant content or an assistant's END. All three are (N, block_size)
    int64 tensors. A conversation longer than block_size + 1 tokens is refused
    with a FolioError naming it (names[i], else its index); see the module
    docstring for why it is not truncated.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise FolioError(f"block_size must be a positive integer, got {block_size!r}")
    width = block_size + 1
    rows: list[tuple[list[int], list[int]]] = []
    ids_row: list[int] = []
    mask_row: list[int] = []
    for i, (ids, mask) in enumerate(rendered):
        if len(ids) != len(mask):
            raise ValueError(f"conversation {i}: {len(ids)} ids but {len(mask)} mask values")
        if len(ids) > width:
            name = names[i] if names is not None else f"conversation {i}"
            raise FolioError(
                f"{name}: the conversation is {len(ids)} tokens, longer than the model's "
                f"block_size {block_size} + 1; shorten it or train with a larger block_size"
            )
        if len(ids_row) + len(ids) > width:
            rows.append((ids_row, mask_row))
            ids_row, mask_row = [], []
        ids_row += list(ids)
        mask_row += list(mask)
    if ids_row:
        rows.append((ids_row, mask_row))
    if not rows:
        raise FolioError("no conversations to pack")
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (N, T + 1)
    masks = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T + 1)
    for r, (ids_row, mask_row) in enumerate(rows):
        tokens[r, : len(ids_row)] = torch.tensor(ids_row, dtype=torch.long)
        masks[r, : len(mask_row)] = torch.tensor(mask_row, dtype=torch.long)
    return tokens[:, :-1], tokens[:, 1:], masks[:, 1:]


def sft_rows(
    conversations: Sequence[Conversation],
    tokenizer: ChatTokenizer,
    block_size: int,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render and pack conversations: (x, y, loss_mask), each (N, block_size)."""
    rendered = render_conversations(tokenizer, conversations)
    return pack_rows(rendered, block_size, pad_id, names=[c.where for c in conversations])
