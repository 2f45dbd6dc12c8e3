"""Tests for `folio serve --decode` and `folio sample --decode`: the path is chosen per process,
named in the server's log and in /v1/models, and a bad name is one line.

Also: clients that disconnect mid-stream give their slots back, so the next
ones run at once.

A bad name given to `folio serve` goes through a real process (exit status 2, one line on
stderr); the other commands run in this process, where `folio.cli.main` returns the status
the process would exit with.
"""

from __future__ import annotations

import time

import httpx
import pytest
from serving import TEXT, AppServer, Server, random_gpt, run_folio, save_run

from folio.cli import main
from folio.serve.app import create_app, load_served_model
from folio.serve.protocol import Limits
from folio.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tok = CharTokenizer.from_text(TEXT)
    return save_run(
        tmp_path_factory.mktemp("decode-run") / "tiny", random_gpt(tok.vocab_size, 32), tok
    )


def _folio_here(capsys, *args: str) -> tuple[int, str, str]:
    """`folio ARGS` in this process: its exit status, stdout and stderr."""
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("command", ["serve", "sample"])
def test_a_bad_decode_path_is_one_line_naming_the_good_ones(run_dir, command, capsys):
    args = (command, "--checkpoint", str(run_dir), "--decode", "fastest")
    if command == "serve":  # a real process: its exit status and all it writes to stderr
        r = run_folio(*args)
        status, err = r.returncode, r.stderr
    else:  # in this process, where an exception would fail the test instead of a traceback
        status, _, err = _folio_here(capsys, *args)
    assert status == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("folio: error: unknown decode path")
    assert "aot-w8a8" in err


def test_sample_takes_a_path_with_its_weights_and_refuses_two_different_weights(run_dir, capsys):
    base = ["sample", "--checkpoint", str(run_dir), "--max-new-tokens", "12", "--seed", "1"]
    named = _folio_here(capsys, *base, "--decode", "static-int8")
    flagged = _folio_here(capsys, *base, "--decode", "static", "--weights", "int8")
    assert named[0] == 0 and named[1] == flagged[1]
    status, _, err = _folio_here(capsys, *base, "--decode", "static-int8", "--weights", "bfloat16")
    assert status == 2 and err.count("\n") == 1 and "give one" in err


def _stream(url: str, max_tokens: int) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(timeout=30)
    body = {"model": "tiny", "prompt": "First", "max_tokens": max_tokens, "stream": True}
    response = client.send(
        client.build_request("POST", url + "/v1/completions", json=body), stream=True
    )
    return client, response


def _health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=30).json()["models"]["tiny"]


def test_an_approximate_path_is_named_with_why_it_is_not_batch_invariant_and_serves(run_dir):
    with Server(f"--checkpoint=tiny={run_dir}", "--decode", "static-w8a8", "--max-batch", "2") as s:
        assert "decode path static-w8a8 (decode path 'static-w8a8' is not batch invariant" in s.log
        info = s.get("/v1/models/tiny").json()["folio"]
        assert info["decode"] == "static-w8a8" and info["batch_invariant"] is False
        assert "padded rows" in info["invariance_note"]
        assert not _health(s.url)["batch_invariant"]
        r = s.post("/v1/completions", json={"model": "tiny", "prompt": "First", "max_tokens": 7})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 7


def test_clients_that_disconnect_mid_stream_free_their_slots_for_the_next(run_dir):
    # What `folio serve --max-batch 2 --max-tokens 100000` serves, in this process: the
    # disconnects are the app's and the engine's to notice, not the process's.
    served = load_served_model(f"tiny={run_dir}", max_batch=2)
    with AppServer(create_app([served], limits=Limits(max_tokens=100000))) as s:
        info = s.get("/v1/models/tiny").json()["folio"]
        assert info["decode"] == "static" and info["batch_invariant"] is True
        for _ in range(2):  # twice over: both slots taken, both given back
            opened = [_stream(s.url, 100000) for _ in range(2)]
            readers = [response.iter_lines() for _, response in opened]  # kept: dropping closes
            for lines in readers:
                for _ in range(4):
                    next(lines)
            assert _health(s.url)["active"] == 2
            for client, response in opened:  # disconnect mid-stream
                response.close()
                client.close()
            deadline = time.monotonic() + 20
            while _health(s.url)["active"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _health(s.url)["active"] == 0
        assert _health(s.url)["cancelled"] == 4
        r = s.post("/v1/completions", json={"model": "tiny", "prompt": "First", "max_tokens": 5})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
