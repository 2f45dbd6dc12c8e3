"""Fuzzing the server in process: no body, however hostile, gets a 5xx or leaves a traceback.

Hypothesis POSTs random bytes, random JSON, request-shaped objects with random
field values, and the hostile shapes (deep nesting, huge integers, NaN, lone
surrogates, bytes that are not UTF-8) to the three endpoints that read a body,
on an app with an API key and on one without. Every answer must be a 2xx, or
a 4xx in OpenAI's error shape; the app must still answer /health at the end,
and nothing may have written a traceback to stderr. Requests generate at most
4 tokens of a tiny random model, so the whole file takes seconds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import tiny_served

from folio.serve.app import create_app
from folio.serve.protocol import Limits

KEY = "fuzz-kéy"
ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/folio/attention"]
FIELDS = [
    "model", "prompt", "messages", "n", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "top_k", "seed", "stop", "stream", "stream_options", "logprobs", "top_logprobs",
    "best_of", "echo", "layer", "head", "user",
]  # fmt: skip
HOSTILE = [
    b"",
    b"null",
    b"[" * 1000 + b"]" * 1000,
    b'{"model": "m", "prompt": ' + b"[" * 100_000,
    b'{"model": "m", "prompt": "F", "seed": ' + b"9" * 4301 + b"}",
    b'{"model": "m", "prompt": "F", "temperature": NaN}',
    b'{"model": "m", "prompt": "F", "top_p": -Infinity}',
    b'{"model": "m", "prompt": "\\ud800"}',
    b'{"model": "\\udfff", "prompt": "F"}',
    b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d"}]}',
    b'{"model": "m", "prompt": "F", "stop": ["\\udc00"]}',
    b'{"model": "m", "prompt": "\xff\xfe"}',
    b'\xef\xbb\xbf{"model": "m", "prompt": "F", "max_tokens": 1}',
    b'{"model": "m", "prompt": "F", "n": true, "best_of": true}',
    b'{"model": "m", "prompt": [1e400]}',
    b'{"model": "m", "prompt": [99999999999999999999]}',
    b'{"model": "m", "prompt": "' + "€".encode() * 1000 + b'"}',
    b'{"model": "m", "prompt": "' + b"F" * 5000 + b'"}',
]


def _settings(n: int) -> settings:
    """n examples, no deadline (a shared machine is slow), the same examples every run."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=40)
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**200)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["m", "chat", "user", "assistant", "system", "text", "F", "First", "€"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer", "robot"])},
        optional={"content": json_values | st.text(max_size=20)},
    ),
    max_size=4,
)
requests = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "chat", "nope"]) | json_values},
    optional={
        **{name: json_values for name in FIELDS if name != "model"},
        "prompt": st.text(max_size=30) | json_values,
        "messages": messages | json_values,
        "max_tokens": st.integers(min_value=-2, max_value=6) | json_values,
    },
)


def _encode(value: Any, ascii_only: bool) -> bytes:
    # Without ensure_ascii, a lone surrogate that st.text() drew is written as such:
    # bytes that are not UTF-8, another thing a client may send.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


bodies = (
    st.binary(max_size=64)
    | st.sampled_from(HOSTILE)
    | st.builds(_encode, json_values, st.booleans())
    | st.builds(_encode, requests, st.booleans())
)


def _check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and "\n" not in error["message"]
    elif response.headers["content-type"].startswith("text/event-stream"):
        # A stream's status line goes out first: an error must not come inside it either.
        assert '"server_error"' not in response.text


@pytest.mark.parametrize("api_key", [None, KEY], ids=["no-key", "key"])
def test_no_body_gets_a_5xx_or_a_traceback(api_key, capfd):
    app = create_app(
        [tiny_served("m"), tiny_served("chat", 32, chat=True)],
        api_key=api_key,
        limits=Limits(max_tokens=4, default_max_tokens=2, max_body_bytes=1 << 16),
    )
    right = {"Authorization": ("Bearer " + KEY).encode()}
    wrong = [{}, {"Authorization": b"Bearer wrong"}, {"Authorization": b"Bearer \xff\xfe"}]
    auths = st.sampled_from([right, right, right, *wrong])
    with TestClient(app, raise_server_exceptions=False) as client:

        @_settings(150)
        @given(st.sampled_from(ROUTES), bodies, auths)
        def post(route: str, body: bytes, auth: dict[str, bytes]) -> None:
            headers = {"Content-Type": "application/json", **auth}
            _check(client.post(route, content=body, headers=headers))

        post()
        health = client.get("/health", headers=right)
        assert health.status_code == 200 and set(health.json()["models"]) == {"m", "chat"}
    assert "Traceback" not in capfd.readouterr().err
