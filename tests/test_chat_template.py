"""Tests for folio/tokenizers/chat.py and the special tokens of both tokenizers."""

from __future__ import annotations

import pytest

from folio.errors import FolioError
from folio.tokenizers import BPETokenizer, CharTokenizer, tokenizer_from_dict
from folio.tokenizers.chat import (
    ASSISTANT,
    CHAT_TOKENS,
    END,
    SYSTEM,
    USER,
    end_of_turn_id,
    has_chat_template,
    render_conversation,
    render_prompt,
    validate_conversation,
    with_chat_tokens,
)

TEXT = "Who says: To be, or not to be?\nHAMLET\n0123456789+=\n"


def char_tok() -> CharTokenizer:
    return with_chat_tokens(CharTokenizer.from_text(TEXT))


def bpe_tok() -> BPETokenizer:
    return with_chat_tokens(BPETokenizer.train([TEXT * 20], 300))


TOKENIZERS = [char_tok, bpe_tok]


@pytest.mark.parametrize("make", TOKENIZERS)
def test_chat_tokens_are_appended_and_old_ids_kept(make) -> None:
    tok = make()
    base = CharTokenizer.from_text(TEXT) if isinstance(tok, CharTokenizer) else None
    assert has_chat_template(tok)
    ids = [tok.special_token_id(t) for t in CHAT_TOKENS]
    assert ids == list(range(tok.vocab_size - 4, tok.vocab_size))  # appended, in order
    if base is not None:
        assert tok.encode(TEXT) == base.encode(TEXT)
        assert not has_chat_template(base)
    assert with_chat_tokens(tok) is tok
    assert tokenizer_from_dict(tok.to_dict()).to_dict() == tok.to_dict()
    assert tok.decode([end_of_turn_id(tok)]) == END


@pytest.mark.parametrize("make", TOKENIZERS)
def test_text_never_encodes_to_a_special_token(make) -> None:
    tok = make()
    if isinstance(tok, CharTokenizer):
        tok = tok.with_tokens(chars="<|>dnearus")
    ids = tok.encode("<|end|><|user|>HAMLET")
    assert not set(ids) & {tok.special_token_id(t) for t in CHAT_TOKENS}
    assert tok.decode(ids) == "<|end|><|user|>HAMLET"


@pytest.mark.parametrize("make", TOKENIZERS)
def test_mask_supervises_exactly_the_assistant_content_and_its_end(make) -> None:
    tok = make()
    messages = [
        {"role": "system", "content": "0"},
        {"role": "user", "content": "Who says: To be"},
        {"role": "assistant", "content": "HAMLET"},
        {"role": "user", "content": "1+2="},
        {"role": "assistant", "content": "3"},
    ]
    ids, mask = render_conversation(tok, messages)
    assert len(ids) == len(mask)
    sp = {t: tok.special_token_id(t) for t in CHAT_TOKENS}
    expected_ids: list[int] = []
    expected_mask: list[int] = []
    for m in messages:
        content = tok.encode(m["content"])
        role = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}[m["role"]]
        learn = int(m["role"] == "assistant")
        expected_ids += [sp[role], *content, sp[END]]
        expected_mask += [0, *[learn] * len(content), learn]
    assert ids == expected_ids
    assert mask == expected_mask
    supervised = [i for i, keep in zip(ids, mask, strict=True) if keep]
    assert tok.decode(supervised) == "HAMLET" + END + "3" + END  # the end token is learned
    # No user, system or role token is ever supervised.
    for i, keep in zip(ids, mask, strict=True):
        if i in (sp[SYSTEM], sp[USER], sp[ASSISTANT]):
            assert keep == 0
    system_part = ids[: ids.index(sp[USER])]
    assert all(mask[i] == 0 for i in range(len(system_part)))


def test_prompt_ends_at_the_assistants_turn() -> None:
    tok = char_tok()
    messages = [{"role": "user", "content": "1+2="}]
    prompt = render_prompt(tok, messages)
    assert prompt[-1] == tok.special_token_id(ASSISTANT)
    full, _ = render_conversation(tok, [*messages, {"role": "assistant", "content": "3"}])
    assert full[: len(prompt)] == prompt  # the reply continues the prompt token for token


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([1, 2], "expected an object"),
        ({"messages": []}, "empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 3}]}, "string"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "'user' was expected"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "message 2 is 'user'",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "b"},
                ]
            },
            "message 2 is 'system'",
        ),
        ({"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
    ],
)
def test_bad_conversations_are_one_line_naming_the_place(obj, fragment: str) -> None:
    with pytest.raises(FolioError, match="data.jsonl:7") as e:
        validate_conversation(obj, "data.jsonl:7")
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_a_prompt_needs_no_reply_and_a_model_without_chat_tokens_is_named() -> None:
    msgs = validate_conversation(
        {"messages": [{"role": "user", "content": "hi"}]}, "req", needs_reply=False
    )
    assert msgs == [{"role": "user", "content": "hi"}]
    with pytest.raises(FolioError, match="not built for chat"):
        render_prompt(CharTokenizer.from_text("hi"), msgs)


def test_a_reply_is_cut_at_the_first_turn_token() -> None:
    from folio.tokenizers import CharTokenizer
    from folio.tokenizers.chat import USER, cut_at_turn_token, with_chat_tokens

    tok = with_chat_tokens(CharTokenizer.from_text("abc"))
    user = tok.special_token_id(USER)
    ids = tok.encode("ab")
    assert cut_at_turn_token(tok, [*ids, user, *tok.encode("c")]) == (ids, True)
    assert cut_at_turn_token(tok, ids) == (ids, False)
    assert cut_at_turn_token(tok, [user]) == ([], True)
