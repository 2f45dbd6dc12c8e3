"""Tests for folio/data/conversations.py and folio/train/losses.py: reading, packing, masked loss."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from folio.data.conversations import pack_rows, read_conversations, sft_rows
from folio.errors import FolioError
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import END, USER, render_conversation, with_chat_tokens
from folio.train.losses import masked_lm_loss


def convo(user: str, reply: str, **extra: object) -> dict:
    return {
        **extra,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
    }


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def tok() -> CharTokenizer:
    return with_chat_tokens(CharTokenizer.from_text("abcdefgh+=0123456789 ?"))


def test_reads_a_file_and_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    write_lines(d / "b.jsonl", [json.dumps(convo("1+1=", "2", task="add"))])
    write_lines(d / "a.jsonl", [json.dumps(convo("ab", "ba")), "", "  "])  # blank lines skipped
    (d / "notes.txt").write_text("not read")
    convos = read_conversations(d)
    assert [c.messages[1]["content"] for c in convos] == ["ba", "2"]  # sorted by file name
    assert [c.task for c in convos] == [None, "add"]
    assert convos[1].where == f"{d / 'b.jsonl'}:1"
    assert read_conversations(d / "a.jsonl")[0].where == f"{d / 'a.jsonl'}:1"


@pytest.mark.parametrize(
    "bad_line, why",
    [
        ('{"messages": [', "not valid JSON"),
        ('{"messages": []}', "empty"),
        (
            json.dumps({"messages": [{"role": "user", "content": "a"}] * 2}),
            "'assistant' was expected",
        ),
        (json.dumps({"messages": [{"role": "user", "content": "a"}]}), "no assistant turn"),
        (json.dumps(convo("a", "b", task=3)), '"task" must be a string'),
    ],
)
def test_each_bad_line_is_one_error_naming_file_and_line(
    tmp_path: Path, bad_line: str, why: str
) -> None:
    f = write_lines(tmp_path / "d.jsonl", [json.dumps(convo("a", "b")), "", bad_line])
    with pytest.raises(FolioError) as e:
        read_conversations(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:3: ") and why in msg and "\n" not in msg


def test_blank_file_missing_path_and_empty_directory_are_errors(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "blank.jsonl", ["", "   "])
    with pytest.raises(FolioError, match="holds no conversations"):
        read_conversations(f)
    with pytest.raises(FolioError, match="no such file"):
        read_conversations(tmp_path / "missing.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolioError, match="no .jsonl files"):
        read_conversations(tmp_path / "empty")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"messages": []}\n"caf\xe9"\n')
    with pytest.raises(FolioError, match=r"latin1.jsonl:2: not UTF-8"):
        read_conversations(tmp_path / "latin1.jsonl")


def test_packing_shifts_targets_and_aligns_the_mask(tok: CharTokenizer) -> None:
    a = render_conversation(tok, convo("ab", "c")["messages"])  # 7 tokens
    b = render_conversation(tok, convo("d", "ef")["messages"])  # 7 tokens
    x, y, m = pack_rows([a, b, a], block_size=15, pad_id=0)
    assert x.shape == y.shape == m.shape == (2, 15)  # a and b share row 0, a is alone in row 1
    row0 = a[0] + b[0] + [0, 0]
    assert x[0].tolist() == row0[:-1] and y[0].tolist() == row0[1:]
    mask0 = a[1] + b[1] + [0, 0]
    assert m[0].tolist() == mask0[1:]
    # Supervised exactly where the target is assistant content or the assistant's END.
    end, user = tok.special_token_id(END), tok.special_token_id(USER)
    supervised = [tok.decode([t]) for t, k in zip(y[0].tolist(), m[0].tolist(), strict=True) if k]
    assert supervised == ["c", END, "e", "f", END]
    assert y[0, 6].item() == user and m[0, 6].item() == 0  # next conversation's start: not learned
    assert y[0].tolist().count(end) == 4 and m[1].sum().item() == 2
    assert x[1, :7].tolist() == a[0] and m[1, 7:].sum().item() == 0  # padding is never learned


def test_too_long_conversation_is_refused_with_its_line(tmp_path: Path, tok) -> None:
    f = write_lines(
        tmp_path / "d.jsonl", [json.dumps(convo("ab", "c")), json.dumps(convo("abcdefgh", "h"))]
    )
    convos = read_conversations(f)
    # The second renders to 13 tokens: it fits block 12 (13 = 12 + 1) but not block 11.
    x, _, m = sft_rows(convos, tok, block_size=12)
    assert x.shape == (2, 12) and m.sum().item() == 4
    with pytest.raises(
        FolioError, match=rf"^{f}:2: the conversation is (at least )?13 tokens.*block_size 11"
    ):
        sft_rows(convos, tok, block_size=11)


def test_text_outside_the_vocabulary_names_its_line(tmp_path: Path, tok) -> None:
    f = write_lines(tmp_path / "d.jsonl", [json.dumps(convo("xyz", "a"))])
    with pytest.raises(FolioError, match=rf"^{f}:1: text contains 3 character"):
        sft_rows(read_conversations(f), tok, block_size=32)


def test_masked_lm_loss_equals_a_hand_computed_value() -> None:
    # Two positions, V = 2. Position 0 logits (0, 0): -log(1/2) = ln 2. Position 1
    # logits (ln 3, 0) with target 0: p = 3/4, loss ln(4/3). Position 2 masked out.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    targets = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[1, 1, 0]])
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert masked_lm_loss(logits, targets, mask).item() == pytest.approx(expected, abs=1e-6)
    # All ones: the plain mean cross-entropy.
    full = masked_lm_loss(logits, targets, torch.ones_like(mask))
    plain = torch.nn.functional.cross_entropy(logits[0], targets[0])
    assert full.item() == pytest.approx(plain.item(), abs=1e-6)
    # No supervised position: zero, not NaN, and a zero gradient.
    leaf = logits.clone().requires_grad_(True)
    zero = masked_lm_loss(leaf, targets, torch.zeros_like(mask))
    zero.backward()
    assert zero.item() == 0.0 and leaf.grad is not None and not leaf.grad.any()


def test_a_byte_order_mark_at_the_start_of_the_file_is_dropped(tmp_path: Path) -> None:
    f = tmp_path / "bom.jsonl"
    f.write_text("\ufeff" + json.dumps(convo("ab", "ba")) + "\n" + json.dumps(convo("a", "b")))
    assert [c.messages[0]["content"] for c in read_conversations(f)] == ["ab", "a"]


@pytest.mark.parametrize(
    "line, why",
    [
        ("[" * 1000 + "]" * 1000, "nested more than 64 levels deep"),
        (
            json.dumps({"messages": [], "n": 0}).replace("0", "9" * 4301),
            "an integer of 4301 digits",
        ),
        (json.dumps(convo("a", "b")).replace('"b"', '"\\ud800"'), "lone UTF-16 surrogate (U+D800)"),
        ('{"messages": [], "x": {"\\udfff": 1}}', "lone UTF-16 surrogate (U+DFFF)"),
    ],
)
def test_a_hostile_line_is_one_error_naming_file_and_line(
    tmp_path: Path, line: str, why: str
) -> None:
    f = write_lines(tmp_path / "d.jsonl", [json.dumps(convo("a", "b")), line])
    with pytest.raises(FolioError) as e:
        read_conversations(f)
    assert str(e.value).startswith(f"{f}:2: ") and why in str(e.value)
    assert "\n" not in str(e.value)


def test_content_given_as_text_parts_is_joined(tmp_path: Path, tok: CharTokenizer) -> None:
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "1+"}, {"type": "text", "text": "1="}]},
            {"role": "assistant", "content": [{"type": "text", "text": "2"}]},
        ]
    }  # fmt: skip
    f = write_lines(tmp_path / "d.jsonl", [json.dumps(parts), json.dumps(convo("1+1=", "2"))])
    a, b = read_conversations(f)
    assert a.messages == b.messages
    assert torch.equal(sft_rows([a], tok, 16)[0], sft_rows([b], tok, 16)[0])
    image = {"type": "image_url", "image_url": {"url": "http://x"}}
    for part, why in [
        (image, "message 1 has a 'image_url' part; only text parts"),
        ("1+1=", "message 1 has an untyped part"),
        ({"type": "text", "text": 3}, 'message 1 has a text part without a string "text"'),
    ]:
        bad = {"messages": [{"role": "user", "content": [part]}, convo("a", "b")["messages"][1]]}
        write_lines(f, [json.dumps(bad)])
        with pytest.raises(FolioError) as e:
            read_conversations(f)
        assert str(e.value) == f"{f}:1: " + str(e.value).split(": ", 1)[1] and why in str(e.value)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_a_line_of_megabytes_is_refused_before_it_is_encoded(
    tmp_path: Path, tok: CharTokenizer, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from folio.tokenizers import BPETokenizer

    long = "ab" * 2_000_000  # 4 MB of text
    if kind == "bpe":
        tok = with_chat_tokens(BPETokenizer.train(["abcdefgh " * 200], 300))
    encoded: list[int] = []
    encode = tok.encode
    monkeypatch.setattr(tok, "encode", lambda text: encoded.append(len(text)) or encode(text))
    f = write_lines(tmp_path / "d.jsonl", [json.dumps(convo("ab", "c")), json.dumps(convo(long, "c"))])  # fmt: skip
    start = time.perf_counter()
    with pytest.raises(FolioError) as e:
        sft_rows(read_conversations(f), tok, block_size=64)
    seconds = time.perf_counter() - start
    msg = str(e.value)
    assert msg.startswith(f"{f}:2: the conversation is at least ") and "\n" not in msg
    assert "longer than the model's block_size 64" in msg
    at_least = int(msg.split("at least ")[1].split()[0])
    assert at_least == tok.min_tokens(long) + 5 and at_least > 64 + 1  # + role tokens and ENDs
    assert max(encoded) < 100  # the long line was never encoded
    assert seconds < 1.0, seconds
