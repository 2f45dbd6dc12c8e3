"""Tests for folio.tokenizers.stream: streamed text never splits a character or shows a stop string."""

from __future__ import annotations

import pytest

from folio.tokenizers import BPETokenizer, CharTokenizer
from folio.tokenizers.chat import END, with_chat_tokens
from folio.tokenizers.stream import TextStream, TokenBytes

MULTI = "naïve café — 日本語のテキスト 🙂🎉 Ωμέγα. " * 4


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    # A tiny vocabulary: most multi-byte characters stay split over several byte tokens.
    return with_chat_tokens(BPETokenizer.train([MULTI, "plain ascii text here. " * 5], 300))


def test_token_bytes_concatenate_to_the_utf8_of_the_text(bpe):
    ids = bpe.encode(MULTI)
    tb = TokenBytes(bpe)
    assert b"".join(tb(i) for i in ids) == MULTI.encode("utf-8")
    split = [i for i in ids if tb(i).decode("utf-8", errors="replace") != bpe.decode([i])]
    partial = [i for i in ids if "\ufffd" in bpe.decode([i])]
    assert partial and not split  # some tokens hold part of a character; bytes agree with decode
    assert tb(bpe.special_token_id(END)) == END.encode()


def test_stream_never_releases_half_a_character(bpe):
    ids = bpe.encode(MULTI)
    stream = TextStream(TokenBytes(bpe))
    pieces = [stream.feed(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == MULTI
    assert not any("\ufffd" in p for p in pieces)
    assert sum(p == "" for p in pieces) > 0  # some tokens had to wait for the rest of a character


def test_invalid_bytes_still_come_out_as_replacement_characters(bpe):
    tb = TokenBytes(bpe)
    first_byte = next(i for i in range(256) if tb(i) == "é".encode()[:1])
    stream = TextStream(tb)
    out = stream.feed(first_byte) + stream.feed(bpe.encode("a")[0]) + stream.finish()
    assert out == "\ufffda"  # a lead byte followed by ASCII can never become a character


def test_stop_strings_are_held_back_and_cut(bpe):
    text = "hello café world. naïve end"
    ids = bpe.encode(text)
    stream = TextStream(TokenBytes(bpe), ["é world", "zz"])
    pieces = [stream.feed(i) for i in ids]
    assert stream.done and "".join(pieces) == "hello caf"
    assert stream.finish() == "" and stream.feed(ids[0]) == ""


def test_char_tokenizer_streams_by_character():
    tok = CharTokenizer.from_text("abc é")
    stream = TextStream(TokenBytes(tok), ["c é"])
    pieces = [stream.feed(i) for i in tok.encode("abac éa")]
    assert "".join(pieces) == "aba" and stream.done
