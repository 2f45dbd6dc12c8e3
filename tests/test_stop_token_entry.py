"""A stream can report how likely its stop token was: `stream_options.include_stop_token`.

OpenAI's streams never show the token that ended a reply. Folio's playground
wants it (hovering `<|end|>` tells how sure the model was that the reply was
over), so a stream that asks gets the stop token's logprob entry, with no text,
in its last chunk. Nothing changes for a client that does not ask, nor for a
whole (non-stream) response, whose entries stay one per token of its text.
"""

from __future__ import annotations

import json
import math

import pytest
from serving import TEXT, random_gpt, save_run

from folio.serve.app import create_app
from folio.serve.served import load_served_model
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import with_chat_tokens

END = "<|end|>"
SEED, BLOCK = 6, 64  # random weights whose greedy reply ends with <|end|> early


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    chat = with_chat_tokens(CharTokenizer.from_text(TEXT))
    run = save_run(
        tmp_path_factory.mktemp("stop") / "chat",
        random_gpt(chat.vocab_size, BLOCK, seed=SEED),
        chat,
    )
    with TestClient(create_app([load_served_model(f"chat={run}")])) as c:
        yield c


def _body(**fields) -> dict:
    """A greedy chat request of "Sir" with log-probabilities, and `fields`."""
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": "Sir"}],
        "max_tokens": 40,
        "temperature": 0,
        "logprobs": True,
        **fields,
    }


def _stream(client, **options) -> list[dict]:
    body = _body(top_logprobs=3, stream=True, stream_options=options)
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    events = [e[len("data: ") :] for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _entries(chunks: list[dict]) -> list[dict]:
    return [
        e
        for c in chunks
        if c["choices"] and c["choices"][0].get("logprobs")
        for e in c["choices"][0]["logprobs"]["content"]
    ]


def test_a_stream_that_asks_ends_with_the_stop_tokens_entry_and_no_text(client) -> None:
    plain = _stream(client)
    asked = _stream(client, include_stop_token=True)
    finish = [c["choices"][0]["finish_reason"] for c in asked if c["choices"]]
    assert finish[-1] == "stop"  # these weights end their greedy reply on <|end|>
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in asked if c["choices"])
    # Asked: one more entry than the text has tokens, the stop token's, in a chunk of no text
    # just before OpenAI's closing chunk (an empty delta and the finish reason).
    closing, last = asked[-1]["choices"][0], asked[-2]["choices"][0]
    assert closing["delta"] == {} and closing["finish_reason"] == "stop"
    assert last["delta"] == {"content": ""} and last["finish_reason"] is None
    end = last["logprobs"]["content"][-1]
    assert end["token"] == END and end["bytes"] == list(END.encode())
    assert end["logprob"] <= 0.0 and 0.0 < math.exp(end["logprob"]) <= 1.0
    assert len(end["top_logprobs"]) == 3
    assert end["top_logprobs"][0]["logprob"] >= end["logprob"]  # the alternatives are the best
    # Not asked: the same stream otherwise, OpenAI's shape, every entry a token of the text.
    assert _entries(asked)[:-1] == _entries(plain)
    assert "".join(e["token"] for e in _entries(plain)) == text
    assert END not in [e["token"] for e in _entries(plain)]


def test_a_whole_response_never_carries_the_stop_token(client) -> None:
    body = _body(stream_options={"include_stop_token": True})  # only a stream reads it
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    tokens = [e["token"] for e in choice["logprobs"]["content"]]
    assert "".join(tokens) == choice["message"]["content"] and END not in tokens


def test_include_stop_token_must_be_a_boolean(client) -> None:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Sir"}],
        "stream": True,
        "stream_options": {"include_stop_token": "yes"},
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "include_stop_token"
