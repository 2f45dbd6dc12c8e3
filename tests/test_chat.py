"""Tests for `folio chat` and its session: modes, history dropping, commands and Ctrl-C."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from serving import ROOT, TEXT, default_sigint, folio_env, random_gpt, save_run

from folio.commands.chat import _command
from folio.errors import FolioError
from folio.sample import Sampler, SamplingConfig
from folio.sample.engine import Engine, GenerationRequest
from folio.serve.prompt import stop_ids_for
from folio.serve.session import ChatSession, ChatSettings
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import render_prompt, with_chat_tokens

CHAT_SEED, CHAT_BLOCK = 6, 64  # random weights whose greedy reply ends with <|end|> early


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="module")
def model(tok):
    return random_gpt(tok.vocab_size, 16)


def session(model, tokenizer, **kw) -> ChatSession:
    return ChatSession(Engine(model, max_batch=1), tokenizer, ChatSettings(**kw))


def greedy(model, tokenizer, ids: list[int], n: int) -> list[int]:
    cfg = SamplingConfig(max_new_tokens=n, temperature=0)
    return [int(t) for t in Sampler(model, tokenizer).generate_ids(ids, cfg)]


def test_a_base_model_continues_the_conversation_text(model, tok):
    s = session(model, tok, max_new_tokens=3, temperature=0)
    first = "".join(s.reply("First"))
    assert first == tok.decode(greedy(model, tok, tok.encode("First"), 3))
    second = "".join(s.reply("All"))
    context = tok.encode("First\n" + first + "\nAll")  # messages joined by newlines
    assert len(context) <= s.budget and s.dropped == 0
    assert second == tok.decode(greedy(model, tok, context, 3))
    assert [m["role"] for m in s.history] == ["user", "assistant"] * 2


def test_the_oldest_turns_are_dropped_when_the_history_outgrows_the_context(model, tok):
    s = session(model, tok, max_new_tokens=4, temperature=0)
    assert s.budget == 16 - 4
    for word in ("First", "hear", "me", "speak"):
        "".join(s.reply(word))
    assert s.dropped >= 2 and s.dropped % 2 == 0  # whole turns: a user message and its reply
    assert s.history[-2] == {"role": "user", "content": "speak"}
    assert s.history[0]["role"] == "user"
    kept = "\n".join(m["content"] for m in s.history[:-1])
    assert len(tok.encode(kept + "\n" + "speak")) <= s.budget + len(s.history[-1]["content"])


def test_a_message_longer_than_the_context_is_refused_and_not_kept(model, tok):
    s = session(model, tok, max_new_tokens=4)
    with pytest.raises(FolioError, match="last message alone"):
        "".join(s.reply("First Citizen: hear me speak"))
    assert s.history == []


def test_a_chat_model_uses_the_template_and_stops_at_end(tmp_path):
    ctok = with_chat_tokens(CharTokenizer.from_text(TEXT))
    m = random_gpt(ctok.vocab_size, CHAT_BLOCK, seed=CHAT_SEED)
    s = session(m, ctok, max_new_tokens=40, temperature=0, system="Be fair")
    assert s.chat
    reply = "".join(s.reply("Speak"))
    messages = [{"role": "system", "content": "Be fair"}, {"role": "user", "content": "Speak"}]
    want = greedy(m, ctok, render_prompt(ctok, messages), 40)
    end = next(i for i, t in enumerate(want) if t in stop_ids_for(ctok))
    assert reply == ctok.decode(want[:end]) and "<|" not in reply
    assert s.history == [
        {"role": "user", "content": "Speak"},
        {"role": "assistant", "content": reply},
    ]


def test_the_next_turn_prefills_only_the_new_tokens_and_equals_a_fresh_prefill():
    ctok = with_chat_tokens(CharTokenizer.from_text(TEXT))
    m = random_gpt(ctok.vocab_size, CHAT_BLOCK, seed=CHAT_SEED)
    s = session(m, ctok, max_new_tokens=8, temperature=0, system="Be fair")
    first = "".join(s.reply("Speak"))
    # A reply cut at max_new_tokens never fed its last token back: the cache lacks it.
    unfed = 1 if s.finish_reason == "length" else 0
    before = dict(s.engine.counts)
    second = "".join(s.reply("All"))
    messages = [
        {"role": "system", "content": "Be fair"},
        {"role": "user", "content": "Speak"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "All"},
    ]
    prompt = render_prompt(ctok, messages)
    assert s.dropped == 0  # the whole history is in the prompt
    held = len(render_prompt(ctok, messages[:2])) + len(ctok.encode(first)) - unfed
    computed = s.engine.counts["prefill_tokens"] - before["prefill_tokens"]
    assert s.engine.counts["reused_tokens"] - before["reused_tokens"] == held
    assert computed == len(prompt) - held  # the new message and what follows the history
    fresh = Engine(m, max_batch=1)  # the whole history prefilled from nothing
    cfg = SamplingConfig(max_new_tokens=8, temperature=0)
    events = fresh.stream(GenerationRequest(prompt, cfg, stop_ids=stop_ids_for(ctok)))
    assert second == ctok.decode([e.token_id for e in events if e.token_id is not None])
    assert fresh.counts["reused_tokens"] == 0


def test_commands_change_the_settings(model, tok, capsys):
    s = session(model, tok, temperature=0.8, top_k=40)
    "".join(s.reply("First"))
    assert _command(s, "/temperature 0.3") and s.settings.temperature == 0.3
    assert _command(s, "/temperature hot") and s.settings.temperature == 0.3
    assert _command(s, "/top_k 0") and s.settings.top_k is None
    assert _command(s, "/top_k 5") and s.settings.top_k == 5
    assert _command(s, "/reset") and s.history == []
    assert _command(s, "/what")
    assert not _command(s, "/quit")
    out = capsys.readouterr().out
    assert "temperature must be" in out and "unknown command" in out


# --- the command: in this process on text input, in a subprocess where the process matters -------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model, tok):
    return save_run(tmp_path_factory.mktemp("chat") / "tiny", model, tok)


class Chat:
    """`folio chat` with pipes; output collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "folio", "chat", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=folio_env(),
            preexec_fn=default_sigint,
        )
        self.out = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            self.out += chunk

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, text: str, after: int = 0, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while (i := self.out.find(text.encode(), after)) < 0:
            assert time.monotonic() < deadline, f"no {text!r} in {self.out[-500:]!r}"
            assert self.proc.poll() is None or text.encode() in self.out, self.out.decode()
            time.sleep(0.02)
        return i + len(text)

    def close(self) -> int:
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(5)


def chat_here(monkeypatch, lines: list[str], *args: str) -> tuple[int, str]:
    """`folio chat ARGS` in this process with `lines` as its input: its exit status, and its
    stdout and stderr as one text, in the order written (as a pipe or a terminal shows them).

    What only a process has (Ctrl-C, a terminal, how Python decodes stdin) is tested on
    subprocesses below.
    """
    from folio.cli import main

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", out)
    return main(["chat", *args]), out.getvalue()


def test_chat_command_streams_replies_and_takes_commands(run_dir, monkeypatch):
    lines = ["First", "/temperature 0.5", "/top_k 0", "/reset", "/quit"]
    args = ["--checkpoint", str(run_dir), "--max-new-tokens", "6", "--temperature", "0"]
    status, out = chat_here(monkeypatch, lines, *args)
    assert status == 0
    assert "in continuation" in out and out.count("model> ") == 1
    assert "(temperature 0.5)" in out and "(top_k off)" in out and "(conversation forgotten)" in out


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(run_dir):
    chat = Chat("--checkpoint", str(run_dir), "--max-new-tokens", "1000000")
    try:
        chat.wait_for("you> ")
        chat.send("First")
        start = chat.wait_for("model> ")
        deadline = time.monotonic() + 30
        while len(chat.out) < start + 50:  # the reply is streaming
            assert time.monotonic() < deadline
            time.sleep(0.02)
        chat.proc.send_signal(signal.SIGINT)
        stopped = chat.wait_for("[stopped]", start)
        chat.wait_for("you> ", stopped)  # back at the prompt, not out of the program
        chat.send("/quit")
        assert chat.close() == 0
    finally:
        chat.close()
    assert "Traceback" not in chat.out.decode(errors="replace")


# --- what the user gives: input bytes, seeds, --system ------------------------------------------


@pytest.fixture(scope="module")
def bpe_chat_run(tmp_path_factory):
    from folio.tokenizers import BPETokenizer

    btok = with_chat_tokens(BPETokenizer.train([TEXT * 20], 300))
    model = random_gpt(btok.vocab_size, CHAT_BLOCK, seed=CHAT_SEED)
    return save_run(tmp_path_factory.mktemp("chat") / "bpe", model, btok)


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_a_byte_that_is_not_utf8_is_refused_and_the_chat_goes_on(bpe_chat_run, errors, monkeypatch):
    # Python reads stdin strictly in most locales and with surrogateescape in the C locale:
    # either way the bad line is one error line and the next line is answered.
    monkeypatch.setenv("PYTHONIOENCODING", f"utf-8:{errors}")
    chat = Chat("--checkpoint", str(bpe_chat_run), "--max-new-tokens", "4", "--temperature", "0")
    try:
        chat.wait_for("you> ")
        chat.proc.stdin.write(b"Spe\xffak\n")
        chat.proc.stdin.flush()
        refused = chat.wait_for("not UTF-8 text (byte 0xFF at character 3); it was not sent")
        chat.send("Speak")
        chat.wait_for("model> ", refused)
        chat.send("/quit")
        assert chat.close() == 0
    finally:
        chat.close()
    out = chat.out.decode(errors="replace")
    assert "Traceback" not in out and out.count("model> ") == 1
    assert "folio: error: the line: not UTF-8 text" in out


def test_a_lone_surrogate_never_reaches_the_tokenizer(bpe_chat_run):
    from folio.checkpoint import load_checkpoint

    ck = load_checkpoint(bpe_chat_run)
    s = session(ck.model, ck.tokenizer, max_new_tokens=2)
    with pytest.raises(FolioError, match=r"lone UTF-16 surrogate \(U\+DCFF\)"):
        "".join(s.reply("Spe\udcffak"))
    assert s.history == []


def test_a_seed_at_the_top_of_the_range_wraps_for_the_next_reply(model, tok):
    top = 2**63 - 1
    assert ChatSettings(seed=top).sampling(1).seed == 0
    s = session(model, tok, max_new_tokens=3, seed=top)
    "".join(s.reply("First"))
    "".join(s.reply("All"))  # reply 1 uses seed 0, not 2**63, which no generator takes
    again = session(model, tok, max_new_tokens=3, seed=top)
    assert [("".join(again.reply(w))) for w in ("First", "All")] == [
        m["content"] for m in s.history if m["role"] == "assistant"
    ]
    for seed in (2**63, 2**64, -1):
        with pytest.raises(
            FolioError, match=r"--seed: must be a non-negative integer below 2\*\*63"
        ):
            session(model, tok, seed=seed)


def test_system_is_checked_at_start_up(model, tok):
    ctok = with_chat_tokens(CharTokenizer.from_text(TEXT))
    m = random_gpt(ctok.vocab_size, CHAT_BLOCK, seed=CHAT_SEED)
    with pytest.raises(FolioError, match=r"^--system needs a chat model"):
        session(model, tok, system="Be fair")  # a base model has no system turn
    with pytest.raises(FolioError, match=r"^--system: text contains 1 character\(s\) outside"):
        session(m, ctok, system="Be quick")
    with pytest.raises(
        FolioError, match=r"^--system: the system message takes 65 tokens of the 32"
    ):
        session(m, ctok, max_new_tokens=40, system="Speak" * 12)
    with pytest.raises(FolioError, match=r"^--system: holds a lone UTF-16 surrogate"):
        session(m, ctok, system="Be\ud800")
    s = session(m, ctok, max_new_tokens=40, system="Speak" * 4)  # 25 tokens: room for a message
    "".join(s.reply("Speak"))
    assert s.history[0] == {"role": "user", "content": "Speak"}
    assert session(model, tok, system="").settings.system == ""  # empty: no system message


def test_chat_command_refuses_a_bad_system_in_one_line(run_dir, capsys):
    from folio.cli import main

    assert main(["chat", "--checkpoint", str(run_dir), "--system", "Be fair"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("folio: error: --system needs a chat model")


def test_model_is_printed_only_for_a_reply_notices_come_first_and_a_cut_is_marked(
    run_dir, monkeypatch
):
    """No empty `model>` before an error, the history notice before the reply it affects, and
    a reply cut at the token limit says so."""
    lines = [
        "First",
        "e" * 200,  # longer than the context (16 tokens) on its own
        *["First"] * 4,  # the history outgrows the context
        "/quit",
    ]
    args = ["--checkpoint", str(run_dir), "--max-new-tokens", "3", "--temperature", "0"]
    status, out = chat_here(monkeypatch, lines, *args)
    assert status == 0
    assert "cut at 3 tokens" in out and "folio: error:" in out
    assert "model> \nfolio: error" not in out and "model> folio: error" not in out
    assert out.count("model> ") == 5
    assert "message(s))\nmodel> " in out  # the notice, then the reply it belongs to
    assert "[... cut at 3 tokens: --max-new-tokens N for more]" in out


def test_text_typed_while_a_reply_streams_is_neither_echoed_nor_sent(run_dir):
    """On a terminal (a pseudo-terminal here): echo is off while a reply streams, and what was
    typed is dropped after."""

    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "folio", "chat", "--checkpoint", str(run_dir),
         "--max-new-tokens", "3000", "--seed", "1"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=folio_env(),
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    out = b""

    def read_until(text: bytes, timeout: float = 60) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while text not in out:
            assert time.monotonic() < deadline, out[-300:]
            try:
                out += os.read(master, 4096)
            except OSError:
                break

    try:
        read_until(b"you> ")
        os.write(master, b"First\n")
        read_until(b"model> ")
        os.write(master, b"zzzz\n")  # typed mid-reply
        read_until(b"cut at 3000 tokens")
        read_until(b"you> ")
        os.write(master, b"/quit\n")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    reply = out[out.index(b"model> ") :]
    assert b"zzzz" not in reply  # not echoed into the reply, and never sent as a message
    assert out.count(b"model> ") == 1
