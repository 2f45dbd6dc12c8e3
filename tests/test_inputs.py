"""One JSON reader and one text check for every input boundary."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from folio.inputs import MAX_DEPTH, InputError, check_text, parse_json


def test_plain_json_reads_as_json() -> None:
    doc = {"messages": [{"role": "user", "content": "hi ü"}], "seed": 2**64, "t": 0.5}
    assert parse_json(json.dumps(doc), "x") == doc
    assert parse_json(json.dumps(doc).encode(), "x") == doc
    assert parse_json("\ufeff[1]", "x") == [1]  # a byte-order mark is dropped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 1000 + "]" * 1000, "nested more than"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested more than"),
        ("1" * 4301, "digits"),
        ('{"seed": ' + "9" * 200 + "}", "digits"),
        ('{"t": NaN}', "NaN is not a JSON number"),
        ('{"content": "\\ud800"}', "lone UTF-16 surrogate (U+D800)"),
        ('{"\\udfff": 1}', "lone UTF-16 surrogate (U+DFFF)"),
        ("{", "not valid JSON"),
    ],
)
def test_hostile_json_is_one_input_error(text: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as e:
        parse_json(text, "data.jsonl line 3")
    assert str(e.value).startswith("data.jsonl line 3: ") and "\n" not in str(e.value)


def test_bytes_that_are_not_utf8_are_an_input_error() -> None:
    with pytest.raises(InputError, match="not UTF-8"):
        parse_json(b'{"a": "\xff"}', "body")


def test_check_text_refuses_lone_surrogates_only() -> None:
    assert check_text("a\U0001f600b", "x") == "a\U0001f600b"
    with pytest.raises(InputError, match=r"\(U\+D83D\) at character 1"):
        check_text("a\ud83d", "--system")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_input_is_a_value_or_one_input_error(data) -> None:
    try:
        parse_json(data, "fuzz")
    except InputError as e:
        assert "\n" not in str(e)


def test_check_seed_takes_what_torch_takes() -> None:
    from folio.inputs import SEED_LIMIT, check_seed

    assert check_seed(None) is None and check_seed(0) == 0
    assert check_seed(SEED_LIMIT - 1) == SEED_LIMIT - 1
    for bad in (SEED_LIMIT, 2**64, -1, True, 1.5, 10**1000):
        with pytest.raises(
            InputError, match=r"^--seed: must be a non-negative integer below 2\*\*63"
        ) as e:
            check_seed(bad)
        assert len(str(e.value)) < 120  # a huge seed is not printed digit by digit


def test_check_os_text_names_a_byte_that_is_not_utf8() -> None:
    from folio.inputs import check_os_text

    line = b"caf\xe9 ok".decode("utf-8", "surrogateescape")  # how Python reads argv and stdin
    with pytest.raises(InputError, match=r"^--system: not UTF-8 text \(byte 0xE9 at character 3\)"):
        check_os_text(line, "--system")
    with pytest.raises(InputError, match="lone UTF-16 surrogate"):
        check_os_text("a\ud800", "--system")
    assert check_os_text("café", "--system") == "café"
