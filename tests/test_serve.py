"""Tests for `folio serve` through OpenAI's own Python client, against a server subprocess.

One server serves three tiny random-weight checkpoints at once (a character
model in completion mode, a chat-template model, a byte-level BPE model) on
127.0.0.1 and a free port, with an API key; it is stopped at the end. What a
process adds (argv, a busy port, the exit status, the key and Host checks the
command sets up) is tested on real processes; an app with a batch of one and a
queue of one, there to be overloaded, and the command's refusals that come
before it binds run in this process.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from serving import TEXT, AppServer, Server, random_gpt, run_folio, save_run

from folio.cli import main
from folio.sample import Sampler, SamplingConfig
from folio.serve.app import create_app, load_served_model
from folio.serve.prompt import stop_ids_for
from folio.serve.protocol import Limits
from folio.tokenizers import BPETokenizer, CharTokenizer
from folio.tokenizers.chat import render_prompt, with_chat_tokens

KEY = "test-key-123"
MULTI = "naïve café — 日本語のテキスト 🙂🎉 Ωμέγα. plain words too. " * 4
CHAT_SEED, CHAT_BLOCK = 6, 64  # random weights whose greedy reply ends with <|end|> early


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-runs")
    char = CharTokenizer.from_text(TEXT)
    chat = with_chat_tokens(CharTokenizer.from_text(TEXT))
    bpe = BPETokenizer.train([MULTI], 300)
    return {
        "tiny": (save_run(root / "tiny", random_gpt(char.vocab_size, 16), char), char),
        "chat": (
            save_run(root / "chat", random_gpt(chat.vocab_size, CHAT_BLOCK, seed=CHAT_SEED), chat),
            chat,
        ),
        "bpe": (save_run(root / "bpe", random_gpt(bpe.vocab_size, 32), bpe), bpe),
    }


@pytest.fixture(scope="module")
def server(runs):
    specs = [f"--checkpoint={name}={path}" for name, (path, _) in runs.items()]
    with Server(*specs, "--api-key", KEY, "--max-tokens", "20000") as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def health(server) -> dict:
    return server.get("/health", headers=_auth()).json()["models"]


def sse_events(response: httpx.Response) -> list[str]:
    """The data fields of a raw SSE body, in order."""
    return [e[len("data: ") :] for e in response.text.split("\n\n") if e.startswith("data: ")]


# --- the API through the official client ------------------------------------------------------------


def test_models_list_and_health(server, client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny", "chat", "bpe"}  # several checkpoints, each by its own id
    assert models["chat"].model_extra["folio"]["mode"] == "chat"
    assert models["tiny"].model_extra["folio"]["mode"] == "completion"
    h = server.get("/health", headers=_auth()).json()
    assert h["status"] == "ok" and all(m["batch_invariant"] for m in h["models"].values())


def test_health_without_the_key_says_only_that_the_server_is_up(server):
    assert server.get("/health").json() == {"status": "ok"}
    assert server.get("/health", headers={"Authorization": "Bearer wrong"}).json() == {
        "status": "ok"
    }
    assert set(server.get("/health", headers=_auth()).json()["models"]) == {"tiny", "chat", "bpe"}


def test_head_on_the_page_and_health_answers_like_get_without_a_body(server):
    for path in ("/", "/health"):
        head, get = httpx.head(server.url + path, timeout=30), server.get(path)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == get.headers["content-length"]


def test_chat_completion_create_and_stream_agree(server, client):
    kw = dict(model="tiny", messages=user("First"), max_tokens=12, seed=5, temperature=0.9)
    whole = client.chat.completions.create(**kw)
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens == 5 and whole.usage.completion_tokens == 12
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(text) == 12
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_raw_stream_is_role_then_content_then_finish_then_usage_then_done(server):
    r = server.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "model": "tiny",
            "messages": user("First"),
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_events(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("content" in c["choices"][0]["delta"] for c in chunks[1:-2])
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5 + 4


def test_completions_with_logprobs(client):
    r = client.completions.create(model="tiny", prompt="First", max_tokens=8, seed=1, logprobs=3)
    choice = r.choices[0]
    assert r.object == "text_completion" and len(choice.text) == 8
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == 8
    assert all(len(top) == 3 for top in lp.top_logprobs)
    assert lp.text_offset == list(range(8))
    stream = client.completions.create(
        model="tiny", prompt="First", max_tokens=8, seed=1, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == choice.text


def test_chat_logprobs_as_openai_defines_them(client):
    r = client.chat.completions.create(
        model="tiny",
        messages=user("First"),
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=4,
    )
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        alts = [a.logprob for a in t.top_logprobs]
        assert len(alts) == 4 and alts == sorted(alts, reverse=True)
        assert t.top_logprobs[0].token == t.token and t.logprob == alts[0]  # greedy
        assert bytes(t.bytes).decode() == t.token


def test_stop_strings_cut_the_text(client):
    kw = dict(model="tiny", messages=user("First"), max_tokens=30, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[10:13]
    r = client.chat.completions.create(**kw, stop=[stop, "@@"])
    assert r.choices[0].message.content == full[: full.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_chat_template_mode_renders_the_prompt_and_stops_at_end(runs, client):
    _, tok = runs["chat"]
    messages = [{"role": "system", "content": "Be fair"}, *user("Speak")]
    prompt = render_prompt(tok, messages)
    path, _ = runs["chat"]
    from folio.checkpoint import load_checkpoint

    greedy = Sampler(load_checkpoint(path).model, tok).generate_ids(
        prompt, SamplingConfig(max_new_tokens=40, temperature=0)
    )
    greedy = [int(t) for t in greedy]
    stops = stop_ids_for(tok)
    end = next(i for i, t in enumerate(greedy) if t in stops)  # this model's reply does end
    r = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=40, temperature=0
    )
    assert r.usage.prompt_tokens == len(prompt)
    assert r.choices[0].message.content == tok.decode(greedy[:end])
    assert r.choices[0].finish_reason == "stop" and "<|" not in r.choices[0].message.content


def test_bpe_stream_never_splits_a_character(client):
    kw = dict(model="bpe", messages=user("café 日本"), max_tokens=60, seed=3, logprobs=True)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    tokens = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    raw = b"".join(bytes(t.bytes) for t in tokens)
    assert "".join(pieces) == raw.decode("utf-8", errors="replace")  # chunk by chunk = whole
    assert any(not _valid(bytes(t.bytes)) for t in tokens)  # some token held part of a character
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].message.content == "".join(pieces)


def _valid(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_attention_extension_endpoint(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = server.post(
        "/v1/folio/attention",
        headers=auth,
        json={"model": "tiny", "prompt": "First", "layer": 1, "head": 3},
    ).json()
    assert r["tokens"] == list("First") and (r["layer"], r["head"]) == (1, 3)
    assert [len(row) for row in r["weights"]] == [1, 2, 3, 4, 5]  # causal: row t sees 0..t
    assert all(abs(sum(row) - 1) < 1e-3 for row in r["weights"])
    chat = server.post(
        "/v1/folio/attention",
        headers=auth,
        json={"model": "chat", "messages": [*user("Sir"), {"role": "assistant", "content": "So"}]},
    ).json()
    assert chat["tokens"] == ["<|user|>", "S", "i", "r", "<|end|>", "<|assistant|>", "S", "o"]
    bad = server.post("/v1/folio/attention", headers=auth, json={"model": "tiny", "layer": 9})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "layer"


# --- errors --------------------------------------------------------------------------------------------


def test_every_error_has_its_status_and_openai_body_and_the_server_keeps_serving(server, client):
    bad_requests = [
        dict(model="tiny", messages=user("F"), n=2),
        dict(model="tiny", messages=user("F"), temperature=5),
        dict(model="tiny", messages=user("F"), max_tokens=0),
        dict(model="tiny", messages=user("F"), max_tokens=10**6),
        dict(model="tiny", messages=user("F"), top_logprobs=3),
        dict(model="tiny", messages=[{"role": "robot", "content": "F"}]),
        dict(model="tiny", messages=user("F" * 100)),  # longer than the context: 400
        dict(model="tiny", messages=user("F"), stop=["a", "b", "c", "d", "e"]),
        dict(model="tiny", messages=user("€ is not in this vocabulary")),
        dict(model="chat", messages=[*user("a"), *user("b")]),  # turns must alternate
    ]
    for kw in bad_requests:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**kw)
        assert e.value.status_code == 400 and set(e.value.body) == {
            "message",
            "type",
            "param",
            "code",
        }
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=user("F"))
    assert e.value.body["code"] == "model_not_found"
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="tiny", messages=user("F"))
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    raw = [
        (server.post("/v1/chat/completions", json={"model": "tiny"}), 401),  # no key at all
        (server.post("/v1/chat/completions", headers=_auth(), content=b"{not json"), 400),
        (server.post("/v1/chat/completions", headers=_auth(), json=[1, 2]), 400),
        (server.post("/v1/chat/completions", headers=_auth(), content=b"x" * (2 << 20)), 413),
        (server.post("/v1/chat/completions", headers=_auth(), json={"messages": 3}), 400),
        (server.get("/v1/nothing-here"), 404),
    ]
    for response, status in raw:
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert "Traceback" not in response.text
    # Unknown fields are ignored, and the server still serves after all of the above.
    ok = client.chat.completions.create(
        model="tiny", messages=user("F"), max_tokens=3, extra_body={"frobnicate": {"x": 1}}
    )
    assert len(ok.choices[0].message.content) == 3
    assert server.proc.poll() is None and "Traceback" not in server.log


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_characters_outside_the_vocabulary_are_their_own_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=user("First, you €"))
    assert e.value.code == "unsupported_characters" and e.value.param == "messages[0].content"
    assert "'€' (U+20AC) at character 11" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=user("F" * 100))
    assert e.value.code == "context_length_exceeded" and "room" not in e.value.message


def test_cors_is_off_unless_asked_for(server):
    r = server.get("/v1/models", headers={**_auth(), "Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_a_client_that_disconnects_cancels_its_generation(server):
    before = health(server)["tiny"]["cancelled"]
    body = {"model": "tiny", "prompt": "First", "max_tokens": 20000, "stream": True}
    with httpx.stream(
        "POST", server.url + "/v1/completions", json=body, headers=_auth(), timeout=30
    ) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert health(server)["tiny"]["active"] == 1  # still generating while connected
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h = health(server)["tiny"]
        if h["cancelled"] > before and h["active"] == 0:
            break
        time.sleep(0.1)
    assert h["cancelled"] == before + 1 and h["active"] == 0


# --- many users at once ------------------------------------------------------------------------------


def test_32_concurrent_streams_all_complete_each_equal_to_the_same_request_alone(server):
    async def one(c: openai.AsyncOpenAI, i: int) -> tuple[str, list[float], str]:
        stream = await c.chat.completions.create(
            model="tiny",
            messages=user(TEXT[i : i + 1 + i % 6]),
            max_tokens=12 + i % 5,
            seed=1000 + i,
            temperature=1.0,
            logprobs=True,
            stream=True,
        )
        text, logprobs, finish = [], [], None
        async for chunk in stream:
            choice = chunk.choices[0]
            text.append(choice.delta.content or "")
            logprobs += [t.logprob for t in (choice.logprobs.content if choice.logprobs else [])]
            finish = choice.finish_reason or finish
        return "".join(text), logprobs, finish

    async def together() -> list:
        async with openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120
        ) as c:
            return await asyncio.gather(*(one(c, i) for i in range(32)))

    async def alone() -> list:
        async with openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120
        ) as c:
            return [await one(c, i) for i in range(32)]

    steps = health(server)["tiny"]["steps"]
    batched = asyncio.run(together())
    batched_steps = health(server)["tiny"]["steps"] - steps
    single = asyncio.run(alone())
    assert all(finish == "length" for _, _, finish in batched)  # none lost
    assert [len(t) for t, _, _ in batched] == [12 + i % 5 for i in range(32)]
    assert batched == single  # text and every log-probability, bit for bit: none mixed up
    assert batched_steps < sum(12 + i % 5 for i in range(32)) / 4  # they shared decode steps


# --- overload and command-line safety -------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after(runs):
    path, _ = runs["tiny"]
    # What `folio serve --max-batch 1 --max-queue 1 --max-tokens 100000` serves, in this
    # process: the queue is the engine's, the 429 the app's.
    served = load_served_model(f"tiny={path}", max_batch=1, max_queue=1)
    with AppServer(create_app([served], limits=Limits(max_tokens=100000))) as s:
        long = {"model": "tiny", "prompt": "F", "max_tokens": 100000, "stream": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=long, timeout=30) as first:
            lines = first.iter_lines()  # kept: dropping the iterator closes the stream
            next(lines)  # the batch is full
            queued = threading.Thread(
                target=lambda: s.post(
                    "/v1/completions", json={"model": "tiny", "prompt": "F", "max_tokens": 2}
                )
            )
            queued.start()
            deadline = time.monotonic() + 10
            while health(s)["tiny"]["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            r = s.post("/v1/completions", json={"model": "tiny", "prompt": "F", "max_tokens": 2})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(
                    base_url=s.url + "/v1", api_key="x", max_retries=0
                ).completions.create(model="tiny", prompt="F", max_tokens=2)
        queued.join(30)  # the first stream closed: the queued request ran
        assert health(s)["tiny"]["completed"] >= 1
        assert (
            s.post(
                "/v1/completions", json={"model": "tiny", "prompt": "F", "max_tokens": 2}
            ).status_code
            == 200
        )


def _folio_here(capsys, *args: str) -> tuple[int, str]:
    """`folio ARGS` in this process, for a command refused before it binds: status, stderr.

    `folio.cli.main` returns the status the process exits with (a real process gives it
    in test_a_busy_port_and_a_missing_checkpoint_are_one_line_errors).
    """
    capsys.readouterr()
    status = main(list(args))
    return status, capsys.readouterr().err


def _never_bind(host, port):
    raise AssertionError(f"the command went on to bind {host}:{port}")


def test_binding_beyond_loopback_needs_a_key_or_an_explicit_flag(runs, capsys, monkeypatch):
    path, _ = runs["tiny"]
    # Refused before binding: were it not, this fails here rather than serving for ever.
    monkeypatch.setattr("folio.commands.serve._bind", _never_bind)
    status, err = _folio_here(
        capsys, "serve", "--checkpoint", str(path), "--host", "0.0.0.0", "--port", "0"
    )
    assert status == 2 and err.count("\n") == 1
    assert "--allow-remote-without-key" in err and "--api-key" in err
    from folio.commands.serve import exposure_warning

    assert exposure_warning("127.0.0.1", None, False) is None
    assert exposure_warning("::1", None, False) is None
    assert exposure_warning("10.1.2.3", "key", False) is None
    assert "without an API key" in exposure_warning("0.0.0.0", None, True)


def test_a_busy_port_and_a_missing_checkpoint_are_one_line_errors(runs, server, tmp_path, capsys):
    path, _ = runs["tiny"]
    port = server.url.rsplit(":", 1)[1]
    r = run_folio("serve", "--checkpoint", str(path), "--port", port)  # a real process
    assert r.returncode == 2 and r.stderr.startswith("folio: error:") and r.stderr.count("\n") == 1
    status, err = _folio_here(capsys, "serve", "--checkpoint", str(tmp_path / "no"))
    assert status == 2 and err.startswith("folio: error:") and err.count("\n") == 1


# --- keys and host names -----------------------------------------------------------------------------

NON_ASCII_KEY = "clé-voilà"


def test_a_non_ascii_api_key_works_and_the_flag_says_to_prefer_the_environment(runs):
    path, _ = runs["tiny"]
    with Server(f"--checkpoint=tiny={path}", "--api-key", NON_ASCII_KEY) as s:
        right = {"Authorization": b"Bearer " + NON_ASCII_KEY.encode()}
        assert s.get("/v1/models", headers=right).status_code == 200
        for auth in (b"Bearer " + NON_ASCII_KEY.encode("latin-1"), b"Bearer \xff", b"\xc3"):
            r = s.get("/v1/models", headers={"Authorization": auth})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        body = {"model": "tiny", "prompt": "F", "max_tokens": 2}
        assert s.post("/v1/completions", headers=right, json=body).status_code == 200
        # With a key, the key guards the server: any Host name is served.
        assert s.get("/v1/models", headers={**right, "Host": "example.com"}).status_code == 200
    assert "--api-key shows in `ps`" in s.log and "FOLIO_API_KEY" in s.log
    assert "Traceback" not in s.log


def test_the_api_key_help_prefers_the_environment_which_is_read(tmp_path, capsys, monkeypatch):
    assert "prefer FOLIO_API_KEY" in " ".join(run_folio("serve", "--help").stdout.split())
    # A key from the environment counts as a key: binding beyond loopback is allowed, and
    # the missing checkpoint is the error, with no note about the flag.
    monkeypatch.setenv("FOLIO_API_KEY", "from-the-environment")
    monkeypatch.setattr("folio.commands.serve._bind", _never_bind)
    status, err = _folio_here(
        capsys, "serve", "--checkpoint", str(tmp_path / "no"), "--host", "0.0.0.0", "--port", "0"
    )
    assert status == 2 and err.count("\n") == 1
    assert "--allow-remote-without-key" not in err and "ps" not in err


def test_a_keyless_loopback_server_answers_loopback_host_names_only(runs):
    path, _ = runs["tiny"]
    with Server(f"--checkpoint=tiny={path}") as s:
        port = s.url.rsplit(":", 1)[1]
        body = {"model": "tiny", "prompt": "F", "max_tokens": 2}
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2"):
            assert s.get("/health", headers={"Host": host}).status_code == 200
            assert s.post("/v1/completions", headers={"Host": host}, json=body).status_code == 200
        # What a page whose domain now resolves to 127.0.0.1 (DNS rebinding) would send.
        for host in (f"rebound.example:{port}", "rebound.example", "192.168.1.20"):
            for r in (
                s.get("/", headers={"Host": host}),
                s.get("/health", headers={"Host": host}),
                s.post("/v1/completions", headers={"Host": host}, json=body),
            ):
                assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert s.get("/health").json()["models"]["tiny"]["completed"] == 4
    assert "Traceback" not in s.log
