"""Tests for folio.serve.protocol (request fields) and the app's CORS switch, in process."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serving import TEXT, random_gpt

from folio.sample.engine import Engine
from folio.serve.app import ServedModel, create_app
from folio.serve.protocol import APIError, Limits, parse_chat, parse_completion
from folio.tokenizers import CharTokenizer


def chat(**kw):
    return parse_chat(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}, Limits()
    )


def test_fields_are_read_as_openai_defines_them():
    params, messages = parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be kind"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "top_p": 0,
            "top_k": -1,
            "seed": -1,
            "stop": "x",
            "stream_options": {"include_usage": True},
            "user": "ignored",
        },
        Limits(),
    )
    assert messages == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "ab"}]
    assert params.max_tokens == 7 and params.top_k is None and params.top_p == 1e-9
    assert params.seed == 2**64 - 1 and params.stop == ["x"]
    assert not params.include_usage  # only with stream
    assert chat()[0].max_tokens == Limits().default_max_tokens
    p, _ = chat(logprobs=True, top_logprobs=3)
    assert (p.logprobs, p.top_logprobs) == (True, 3)
    p, prompt = parse_completion({"model": "m", "prompt": [[1, 2, 3]], "logprobs": 2}, Limits())
    assert prompt == [1, 2, 3] and p.top_logprobs == 2


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"n": 3}, "n"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 2.5}, "top_k"),
        ({"seed": 2**70}, "seed"),
        ({"stop": ["a"] * 5}, "stop"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stream": 1}, "stream"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
    ],
)
def test_bad_fields_are_400_naming_the_field(kw, param):
    with pytest.raises(APIError) as e:
        chat(**kw)
    assert e.value.status == 400 and e.value.param == param


def test_cors_headers_only_for_the_origins_asked_for():
    tok = CharTokenizer.from_text(TEXT)
    served = ServedModel("m", Engine(random_gpt(tok.vocab_size, 16)), tok)
    app = create_app([served], cors_origins=["http://ok.example"])
    with TestClient(app) as c:
        pre = {"Access-Control-Request-Method": "POST"}
        ok = c.options("/v1/models", headers={"Origin": "http://ok.example", **pre})
        assert ok.headers["access-control-allow-origin"] == "http://ok.example"
        other = c.options("/v1/models", headers={"Origin": "http://evil.example", **pre})
        assert "access-control-allow-origin" not in other.headers
        r = c.post("/v1/completions", json={"model": "m", "prompt": "First", "max_tokens": 3})
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 3
