"""Tests for folio/tokenizers/char.py: the character tokenizer and its JSON form."""

from __future__ import annotations

import numpy as np
import pytest

from folio.data.batches import Dataset
from folio.data.corpora import Corpus
from folio.data.prepare import prepare_dataset
from folio.errors import FolioError
from folio.tokenizers import CharTokenizer, tokenizer_from_dict

MIXED = "Café naïve, 你好世界 🙂🎭\n\tTab-indented line ß ø Ω\n"


def many_chars(n: int) -> list[str]:
    """n distinct characters from the supplementary planes (no surrogates among them)."""
    return [chr(0x10000 + i) for i in range(n)]


def test_round_trip_non_ascii() -> None:
    tok = CharTokenizer.from_text(MIXED)
    ids = tok.encode(MIXED)
    assert len(ids) == len(MIXED)  # one token per character, emoji included
    assert tok.decode(ids) == MIXED
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_min_tokens_is_the_exact_count() -> None:
    tok = CharTokenizer.from_text(MIXED + "<|>").with_tokens(specials=["<|end|>"])
    assert tok.min_tokens(MIXED) == len(tok.encode(MIXED)) == len(MIXED)
    assert tok.min_tokens("<|end|>") == len(tok.encode("<|end|>")) == 7  # text, not the special
    assert tok.min_tokens("") == 0


def test_vocab_is_sorted_set_of_text() -> None:
    tok = CharTokenizer.from_text(MIXED)
    assert tok.chars == sorted(set(MIXED))
    assert tok.vocab_size == len(set(MIXED))
    assert tok.stoi == {c: i for i, c in enumerate(tok.chars)}
    assert {"\n", "\t", "é", "你", "🙂"} <= set(tok.chars)


def test_from_text_example() -> None:
    tok = CharTokenizer.from_text("hello\n")
    assert tok.chars == ["\n", "e", "h", "l", "o"]
    assert tok.encode("hell") == [2, 1, 3, 3]
    assert tok.decode([4, 0]) == "o\n"


def test_constructor_rejects_bad_vocabularies() -> None:
    with pytest.raises(FolioError, match="at least one"):
        CharTokenizer([])
    with pytest.raises(FolioError, match="distinct"):
        CharTokenizer(["a", "a"])
    with pytest.raises(FolioError, match="single characters"):
        CharTokenizer(["ab"])


def test_encode_unknown_characters_names_them() -> None:
    tok = CharTokenizer.from_text("abc\n")
    with pytest.raises(FolioError, match="2 character") as e:
        tok.encode("abz€")
    msg = str(e.value)
    assert "'z'" in msg and "'€'" in msg
    assert "\n" not in msg  # one line for the CLI


def test_encode_unknown_invisible_character_is_shown_by_code_point() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(FolioError, match="U\\+0009"):
        tok.encode("a\tb")


def test_encode_many_unknown_characters_is_abbreviated() -> None:
    tok = CharTokenizer.from_text("a")
    with pytest.raises(FolioError, match="25 character.* and 15 more"):
        tok.encode("bcdefghijklmnopqrstuvwxyz")


@pytest.mark.parametrize("bad", [5, 100, -1])
def test_decode_out_of_range(bad: int) -> None:
    tok = CharTokenizer.from_text("hello")  # vocab of 4
    with pytest.raises(FolioError, match="out of range"):
        tok.decode([0, bad])


def test_dict_round_trip() -> None:
    tok = CharTokenizer.from_text(MIXED)
    d = tok.to_dict()
    assert d == {"kind": "char", "chars": tok.chars}
    again = tokenizer_from_dict(d)
    assert again.chars == tok.chars
    assert again.decode(again.encode(MIXED)) == MIXED


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "char",
        {},
        {"kind": "bpe", "chars": ["a"]},
        {"kind": "char"},
        {"kind": "char", "chars": "abc"},
        {"kind": "char", "chars": ["a", 1]},
        {"kind": "char", "chars": []},
        {"kind": "char", "chars": ["a", "a"]},
        {"kind": "char", "chars": ["ab"]},
    ],
)
def test_malformed_dict(bad) -> None:
    with pytest.raises(FolioError):
        tokenizer_from_dict(bad)


def test_token_dtype_boundary() -> None:
    assert CharTokenizer.from_text("ab").token_dtype == np.uint16
    assert CharTokenizer(many_chars(2**16)).token_dtype == np.uint16  # ids 0..65535 fit
    assert CharTokenizer(many_chars(2**16 + 1)).token_dtype == np.uint32


def test_large_vocabulary_never_overflows(tmp_path) -> None:
    """70,000 distinct characters: ids above 65,535 are stored as uint32 and read back exactly."""
    chars = many_chars(70_000)
    text = "".join(chars) + "\n"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 70_001
    assert tok.token_dtype == np.uint32
    ids = tok.encode(text)
    assert max(ids) == 70_000
    assert tok.decode(ids) == text

    corpus = Corpus("big", [text], ["big.txt"])
    summary = prepare_dataset(corpus, tmp_path / "big")
    assert summary.dtype == "uint32"
    ds = Dataset.open(tmp_path / "big")
    assert ds.meta["dtype"] == "uint32"
    assert (tmp_path / "big" / "train.bin").stat().st_size == 4 * ds.meta["train_tokens"]
    train, val = ds.tokens("train"), ds.tokens("val")
    assert train.dtype == np.uint32
    stored = np.concatenate([train, val]).astype(np.int64)
    assert stored.tolist() == ids
    assert int(stored.max()) == 70_000
    assert ds.tokenizer.decode(stored) == text
