"""What the serving tests share: tiny random-weight checkpoints, a server subprocess, and
an app served in a thread of the test's own process.

Servers bind 127.0.0.1 on a free port (`--port 0`, the port read back from the
server's first line) and are always stopped when the `with` block ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
from factories import wide_gpt

from folio.checkpoint import clean_state_dict, save_checkpoint
from folio.models import GPT, GPTConfig
from folio.sample import SamplingConfig
from folio.sample.engine import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak.\n"


def random_gpt(vocab_size: int, block_size: int = 16, seed: int = 0, **kw) -> GPT:
    """The house tiny model, weights wide enough that greedy text does not repeat at once."""
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=vocab_size,
        n_layer=kw.pop("n_layer", 2),
        n_head=kw.pop("n_head", 4),
        n_embd=kw.pop("n_embd", 32),
        block_size=block_size,
        **kw,
    )
    return wide_gpt(config, seed)


def request(prompt: list[int], n: int, **kw) -> GenerationRequest:
    """An engine request for n tokens; temperature, seed, top_k and top_p go to its sampling."""
    sampling = {k: kw.pop(k) for k in ("temperature", "seed", "top_k", "top_p") if k in kw}
    return GenerationRequest(prompt, SamplingConfig(max_new_tokens=n, **sampling), **kw)


def save_run(run_dir: Path, model: GPT, tokenizer) -> Path:
    """A run directory holding `model` as its latest checkpoint."""
    save_checkpoint(Path(run_dir), clean_state_dict(model), model.config, tokenizer, {"step": 0})
    return Path(run_dir)


def folio_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FOLIO_API_KEY", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_folio(*args: str) -> subprocess.CompletedProcess:
    """`python -m folio ARGS` in a child process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "folio", *args],
        cwd=ROOT,
        env=folio_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def default_sigint() -> None:
    """preexec_fn for a child the test will Ctrl-C: SIGINT back to its default.

    A shell runs a background job (`cmd &`) with SIGINT ignored, its children inherit
    that, and Python then never installs its KeyboardInterrupt handler: a test run that
    way would see a Ctrl-C ignored. Resetting it lets Python install the handler.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """`folio serve` in a subprocess on 127.0.0.1 and a free port; stopped on exit."""

    def __init__(self, *args: str, timeout: float = 90.0) -> None:
        self.args, self.timeout = [str(a) for a in args], timeout
        self.lines: list[str] = []

    def __enter__(self) -> Server:
        cmd = [sys.executable, "-m", "folio", "serve", "--port", "0", "--threads", "1", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=folio_env(),
            cwd=ROOT,
            preexec_fn=default_sigint,
        )
        deadline = time.monotonic() + self.timeout
        self.url = None
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(5)
                raise RuntimeError(f"server exited ({self.proc.returncode}): {''.join(self.lines)}")
            self.lines.append(line)
            m = re.search(r"serving on (http://\S+:\d+)", line)
            if m:
                self.url = m.group(1)
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("server did not start in time")
        # Keep draining the log so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()
        return self

    def _read_rest(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **kw)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class AppServer:
    """An app served by uvicorn in a thread of this process, on 127.0.0.1 and a free port.

    For tests of what the app does over real HTTP (streams, disconnects, a browser) where
    the process is not what is tested: no interpreter and no torch to start. Stopped on exit.
    """

    def __init__(self, app, timeout: float = 30.0) -> None:
        self.app, self.timeout = app, timeout

    def __enter__(self) -> AppServer:
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=3
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("the app did not start")
            time.sleep(0.01)
        return self

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **kw)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def tiny_served(model_id: str = "m", block_size: int = 16, chat: bool = False):
    """A ServedModel of a tiny random GPT on TEXT's characters, with its own engine.

    An app closes its engines when it stops: each in-process app needs fresh ones.
    """
    from folio.sample.engine import Engine
    from folio.serve.app import ServedModel
    from folio.tokenizers import CharTokenizer
    from folio.tokenizers.chat import with_chat_tokens

    tok = CharTokenizer.from_text(TEXT)
    if chat:
        tok = with_chat_tokens(tok)
    return ServedModel(model_id, Engine(random_gpt(tok.vocab_size, block_size)), tok)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    """The error object of `response`, checked to be OpenAI's shape with this status."""
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and "\n" not in error["message"]
    assert "Traceback" not in response.text
    return error
