"""`folio ARGV` in a real child process that starts without paying for `import torch`.

The children come from a multiprocessing fork server that imported torch and the
training code once. Each child is a separate process with its own PID, the
signal dispositions a fresh interpreter starts with (the server puts them back
before it runs the child) and its own file descriptors, so signals, SIGKILL,
exit statuses and file locks behave as they do for `python -m folio`; what it
skips is the second or two each interpreter spends importing torch.

Output goes straight to a file, unbuffered as under `python -u`, so a SIGKILL
loses nothing that was printed.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
from pathlib import Path

PRELOAD = [
    "forked_trainers",
    "torch",
    "torch._dynamo",  # a torch.optim optimizer imports it when built: 1.3 s
    "matplotlib.pyplot",  # the trainer draws loss.png at every eval
    "folio.cli",
    "folio.commands.train",
    "folio.stages.pretrain",
]
_context = None
_children: list[Folio] = []


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def stop() -> None:
    """Stop the fork server once its children have exited; waiting for it makes its CPU time
    (its children's included) its parent's."""
    global _context
    for child in _children:  # left running by a test that failed midway
        if child.poll() is None:
            child.kill()
            child.wait(60)
    _children.clear()
    if _context is not None:
        server = multiprocessing.forkserver._forkserver
        if server._forkserver_pid is not None:
            # SIGKILL: a clean exit would spend most of a second unloading torch.
            os.kill(server._forkserver_pid, signal.SIGKILL)
        server._stop()
        _context = None


def _unbuffered(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", write_through=True)


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fds, path in (((1, 2), out),) if err == out else (((1,), out), ((2,), err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for fd in fds:
            os.dup2(file, fd)
        os.close(file)
    sys.stdout, sys.stderr = _unbuffered(1), _unbuffered(2)
    from folio.cli import main

    sys.exit(main(argv))


class Folio:
    """A running `folio ARGV`, with the parts of `subprocess.Popen` the tests use.

    Its stdout and stderr go to files in `logs`: one file for both with `merged`
    (as `stderr=subprocess.STDOUT`), else two.
    """

    def __init__(
        self,
        argv: list[str],
        logs: Path,
        env: dict[str, str] | None = None,
        cwd: Path = Path(),
        merged: bool = False,
    ) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("*.out")))
        self.out = logs / f"{n}.out"
        self.err = self.out if merged else logs / f"{n}.err"
        self.args = [str(a) for a in argv]
        env = dict(os.environ if env is None else env)
        self._proc = _forkserver().Process(
            target=_child,
            args=(self.args, env, str(Path(cwd).resolve()), str(self.out), str(self.err)),
        )
        self._proc.start()
        self.pid = self._proc.pid
        _children.append(self)

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        self._proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._proc.exitcode

    def output(self) -> tuple[str, str | None]:
        """What the child wrote so far: (stdout, stderr), stderr None when merged."""

        def read(path: Path) -> str:
            return path.read_text(encoding="utf-8") if path.exists() else ""

        return read(self.out), None if self.err == self.out else read(self.err)

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        """Wait for the exit; then (stdout, stderr), as `output`."""
        self.wait(timeout)
        return self.output()
