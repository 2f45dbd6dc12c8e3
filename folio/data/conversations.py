"""Conversation data for fine-tuning: JSONL files -> checked messages -> packed training rows.

Notation: N rows, T block_size.

A conversation file is JSONL, one `{"messages": [...]}` object a line (the
chat format of `folio.tokenizers.chat`), optionally with a `"task"` name as
`folio tasks make` writes. Each line is read by `folio.data.jsonl` and checked,
and a bad one is one FolioError naming its file and line number; a message's
content may be a list of text parts, joined into its text. Blank lines are
skipped; a file with no conversation at all is an error.

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
A conversation certainly too long is refused before it is encoded
(`render_conversations`), so a line of megabytes fails at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from folio.data.jsonl import join_text_parts, read_jsonl
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
    """The conversations of one JSONL file, each line checked (see `validate_conversation`).

    Lines are read by `folio.data.jsonl.read_jsonl`; content given as a list of
    text parts is joined into its text (`join_text_parts`).
    """
    out = []
    for where, obj in read_jsonl(path):
        if isinstance(obj, dict) and "messages" in obj:
            obj = {**obj, "messages": join_text_parts(obj["messages"], where)}
        messages = validate_conversation(obj, where, needs_reply=needs_reply)
        task = obj.get("task")
        if task is not None and not isinstance(task, str):
            raise FolioError(f'{where}: "task" must be a string, got {type(task).__name__}')
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


def _too_long(name: str, n_tokens: int, block_size: int, at_least: bool = False) -> FolioError:
    return FolioError(
        f"{name}: the conversation is {'at least ' if at_least else ''}{n_tokens} tokens, longer "
        f"than the model's block_size {block_size} + 1; shorten it or train with a larger block_size"
    )


def render_conversations(
    tokenizer: ChatTokenizer,
    conversations: Iterable[Conversation],
    block_size: int | None = None,
) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of each conversation; a FolioError naming the line for text outside the vocabulary.

    With `block_size`, a conversation certainly longer than block_size + 1
    tokens is refused before it is encoded: encoding a line of megabytes costs
    seconds and gigabytes for a list of ids that would be refused anyway. The
    bound is the tokenizer's `min_tokens` (a character tokenizer's is exact;
    a BPE tokenizer's divides the bytes by its longest token's) plus the role
    token and END of each message; a conversation within it is encoded and
    measured exactly by `pack_rows`.
    """
    out = []
    min_tokens = getattr(tokenizer, "min_tokens", None)
    for c in conversations:
        if block_size is not None and min_tokens is not None:
            bound = sum(min_tokens(m["content"]) + 2 for m in c.messages)
            if bound > block_size + 1:
                raise _too_long(c.where, bound, block_size, at_least=True)
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
            raise _too_long(name, len(ids), block_size)
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
    rendered = render_conversations(tokenizer, conversations, block_size)
    return pack_rows(rendered, block_size, pad_id, names=[c.where for c in conversations])
