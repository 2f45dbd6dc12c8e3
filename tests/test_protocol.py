"""Tests for folio.serve.protocol (request fields) and the app's checks, in process."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from serving import TEXT, assert_openai_error, random_gpt, tiny_served

from folio.sample.engine import Engine
from folio.serve.app import ServedModel, create_app
from folio.serve.hosts import is_loopback_host
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


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"n": True}, "n"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": True}, "max_completion_tokens"),
        ({"temperature": True}, "temperature"),
        ({"top_p": False}, "top_p"),
        ({"top_k": True}, "top_k"),
        ({"seed": True}, "seed"),
        ({"logprobs": True, "top_logprobs": True}, "top_logprobs"),
    ],
)
def test_booleans_are_not_numbers(kw, param):
    with pytest.raises(APIError) as e:
        chat(**kw)
    assert e.value.status == 400 and e.value.param == param


@pytest.mark.parametrize(
    "kw, param", [({"best_of": True}, "best_of"), ({"logprobs": True}, "logprobs")]
)
def test_booleans_are_not_numbers_in_completions(kw, param):
    with pytest.raises(APIError) as e:
        parse_completion({"model": "m", "prompt": "F", **kw}, Limits())
    assert e.value.status == 400 and e.value.param == param


def _app(**kw):
    return create_app([tiny_served("m"), tiny_served("chat", 32, chat=True)], **kw)


ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/folio/attention"]
SURROGATE = "\\ud800"  # JSON's escape for a lone surrogate, as the body's text holds it


def _hostile_bodies() -> list[bytes]:
    ok = {"model": "m", "prompt": "F", "messages": [{"role": "user", "content": "F"}]}
    text = json.dumps(ok)
    return [
        b"[" * 1000 + b"]" * 1000,
        b'{"model": "m", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        text[:-1].encode() + b', "seed": ' + b"9" * 4301 + b"}",
        text[:-1].encode() + b', "temperature": NaN}',
        text.replace('"prompt": "F"', f'"prompt": "F{SURROGATE}"').encode(),
        text.replace('"content": "F"', f'"content": "{SURROGATE}"').encode(),
        text.replace('"model": "m"', f'"model": "m{SURROGATE}"').encode(),
        text[:-1].encode() + f', "stop": ["{SURROGATE}"]}}'.encode(),
        text[:-1].encode() + f', "{SURROGATE}": 1}}'.encode(),
        b'{"model": "m", "prompt": "\xff"}',  # not UTF-8
    ]


def test_hostile_bodies_are_400_in_one_line_never_500(capfd):
    with TestClient(_app(), raise_server_exceptions=False) as c:
        for route in ROUTES:
            for body in _hostile_bodies():
                r = c.post(route, content=body, headers={"Content-Type": "application/json"})
                error = assert_openai_error(r, 400)
                assert error["code"] == "invalid_json", (route, body[:60], error)
        assert c.get("/health").json()["status"] == "ok"
    assert "Traceback" not in capfd.readouterr().err


def test_characters_outside_the_vocabulary_are_not_a_context_error():
    with TestClient(_app()) as c:
        messages = [{"role": "user", "content": "First"}, {"role": "user", "content": "a € b"}]
        for route, body, param in [
            ("/v1/chat/completions", {"model": "m", "messages": messages}, "messages[1].content"),
            ("/v1/completions", {"model": "m", "prompt": "Fir\u00a7st"}, "prompt"),
            ("/v1/folio/attention", {"model": "m", "prompt": "x ☃"}, "prompt"),
            ("/v1/folio/attention", {"model": "chat", "messages": messages}, "messages[1].content"),
        ]:
            error = assert_openai_error(c.post(route, json=body), 400)
            assert error["code"] == "unsupported_characters" and error["param"] == param
        error = assert_openai_error(
            c.post("/v1/chat/completions", json={"model": "m", "messages": messages}), 400
        )
        assert "'€' (U+20AC) at character 2" in error["message"]
        # Only a prompt really too long is a context error, and no room is said to be kept.
        for route, body in [
            (
                "/v1/chat/completions",
                {"model": "chat", "messages": [{"role": "user", "content": "F" * 40}]},
            ),
            ("/v1/completions", {"model": "m", "prompt": "F" * 17}),
        ]:
            error = assert_openai_error(c.post(route, json=body), 400)
            assert error["code"] == "context_length_exceeded", error
            assert "room" not in error["message"] and "reply" not in error["message"]
        fits = {"model": "m", "prompt": "F" * 16, "max_tokens": 2}
        assert c.post("/v1/completions", json=fits).status_code == 200


def test_a_non_ascii_api_key_is_compared_as_utf8_bytes(capfd):
    key = "clé-voilà"  # 'à' ends in the byte 0xA0, which str.strip() would take for a space
    app = _app(api_key=key)

    async def statuses() -> list[int]:
        # httpx's ASGI transport hands the header's bytes over as sent (TestClient re-encodes them).
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            out = []
            for auth in [
                b"Bearer " + key.encode(),
                b"Bearer  " + key.encode() + b" ",
                b"Bearer " + key.encode("latin-1"),
                b"Bearer \xff",
                b"Bearer " + key.encode()[:-1],
                b"\xff",
            ]:
                r = await c.get("/v1/models", headers={"Authorization": auth})
                if r.status_code != 200:
                    assert assert_openai_error(r, 401)["code"] == "invalid_api_key"
                out.append(r.status_code)
            return out

    assert asyncio.run(statuses()) == [200, 200, 401, 401, 401, 401]
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("key", ["", " key", "key\n", "k\x00y", "\udcff"])
def test_a_key_no_client_can_send_is_refused(key):
    from folio.errors import FolioError

    with pytest.raises(FolioError):
        _app(api_key=key)


def test_health_tells_only_that_it_is_up_without_the_key_and_head_answers_like_get():
    with TestClient(_app(api_key="k")) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/health", headers={"Authorization": "Bearer wrong"}).json() == {
            "status": "ok"
        }
        full = c.get("/health", headers={"Authorization": "Bearer k"}).json()
        assert set(full["models"]) == {"m", "chat"}
        for path in ("/", "/health"):
            head, get = c.head(path), c.get(path)
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-type"] == get.headers["content-type"]
    with TestClient(_app()) as c:  # no key: everyone may see it all
        assert set(c.get("/health").json()["models"]) == {"m", "chat"}


def test_loopback_host_names():
    for host in ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.9.8.7:1", "[::1]", "[::1]:80"]:
        assert is_loopback_host(host), host
    for host in [
        "evil.example",
        "evil.example:8000",
        "localhost.evil.example",
        "10.0.0.1",
        "",
        "127.0.0.1.evil.example",
        "[::2]:80",
        "localhost:x",
        "[::1]x",
        "::1",
    ]:
        assert not is_loopback_host(host), host


def test_a_loopback_only_app_refuses_other_host_names():
    with TestClient(_app(loopback_only=True), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/", headers={"Host": "localhost:8000"}).status_code == 200
        body = {"model": "m", "prompt": "F", "max_tokens": 2}
        assert (
            c.post("/v1/completions", json=body, headers={"Host": "[::1]:8000"}).status_code == 200
        )
        for path in ("/", "/health", "/v1/models"):
            error = assert_openai_error(c.get(path, headers={"Host": "rebound.example:8000"}), 400)
            assert error["code"] == "invalid_host"
        r = c.post("/v1/completions", json=body, headers={"Host": "rebound.example"})
        assert_openai_error(r, 400)
    with TestClient(_app()) as c:  # the default: any name ("testserver" here)
        assert c.get("/health").status_code == 200
