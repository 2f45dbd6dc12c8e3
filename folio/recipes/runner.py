"""The step runner: one `folio` command at a time, each its own process, supervised.

A multi-step recipe (`folio recipe assistant`) is a list of `Step`s, each the
`folio` command a user would type. `Supervisor` runs them: their output goes
to a log, their last stdout line is their JSON result, SIGINT and SIGTERM are
passed on to the running step and waited for (a training step then saves its
checkpoint), and no step outlives the recipe. `finished` and `last_eval` read
a training step's run directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from folio.errors import FolioError


@dataclass
class Step:
    """One `folio` command of the recipe. A training step writes a run directory (`run`)."""

    name: str
    args: list[str]
    run: Path | None = None
    stage: str = ""
    """The table row whose time this step adds to."""
    json: bool = True
    """Whether the command takes --json (its last stdout line is the step's result)."""


def finished(run: Path) -> bool:
    """Whether a run directory's latest checkpoint is at its run's max_iters."""
    try:
        latest = json.loads((run / "latest.json").read_text(encoding="utf-8"))
        config = json.loads((run / "run.json").read_text(encoding="utf-8"))
        return int(latest["step"]) >= int(config["train"]["max_iters"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def last_eval(run: Path) -> dict[str, Any]:
    """The last eval row of a run's metrics.jsonl ({} if none)."""
    try:
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("eval"):
            return row
    return {}


class Stopped(FolioError):
    """The recipe was asked to stop (SIGINT or SIGTERM) and its running step has stopped."""

    def __init__(self, signum: int, step: str) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} during step {step}: it stopped cleanly (a training step keeps its "
            f"checkpoint); rerun the same command to continue"
        )


class Supervisor:
    """Runs one step's process at a time and passes SIGINT and SIGTERM on to it.

    The step runs in its own session, so a Ctrl-C at the terminal reaches the
    recipe alone, which forwards it once: a training step then saves its
    checkpoint at the next step boundary and exits, and the recipe waits for
    that rather than killing it. A second Ctrl-C is forwarded too (a trainer
    then aborts at once). If the recipe itself is killed, the kernel sends
    the step SIGTERM (Linux's parent-death signal), so no step outlives it.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._child: subprocess.Popen | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Catch SIGINT and SIGTERM while the block runs (from the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def check(self, step: str) -> None:
        """Raise Stopped if a stop was asked for."""
        if self.signum is not None:
            raise Stopped(self.signum, step)

    def run(
        self, argv: Sequence[str], log: Path, parse: bool = True, name: str | None = None
    ) -> dict[str, Any]:
        """Run `folio ARGV`, its output to `log`; return its last stdout line as JSON (or
        {} when `parse` is false). Raises Stopped when a signal stopped it."""
        log.parent.mkdir(parents=True, exist_ok=True)
        # stdout goes to a file, not a pipe: a step that outlives a killed recipe by a
        # moment (to save its checkpoint) must not die writing to a pipe nobody reads
        out = log.with_name(f"{log.name}.stdout")
        with log.open("w", encoding="utf-8") as f, out.open("w+", encoding="utf-8") as o:
            f.write(f"$ folio {' '.join(argv)}\n")
            f.flush()
            code = self._execute(list(argv), o, f)
            f.flush()
            error = _last_error(log)
            o.seek(0)
            stdout = o.read()
            f.write(stdout)
        out.unlink()
        self.check(name or argv[0])
        if code != 0:
            raise FolioError(f"{argv[0]} failed (exit {code}): {error} (log: {log})")
        lines = stdout.strip().splitlines()
        if not parse:
            return {}
        try:
            return json.loads(lines[-1]) if lines else {}
        except ValueError as e:
            raise FolioError(f"{argv[0]} printed no JSON result (log: {log})") from e

    def _execute(self, argv: list[str], stdout: IO[str], stderr: IO[str]) -> int:
        """`python -m folio ARGV` in its own session; its exit status once it has exited."""
        self._child = subprocess.Popen(
            [sys.executable, "-m", "folio", *argv], stdout=stdout, stderr=stderr,
            env=_child_env(), start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            self._child.wait()  # a signal handled here runs its handler; the wait goes on
        finally:
            child, self._child = self._child, None
            if child.poll() is None:  # only if this process is going down
                child.kill()
                child.wait()
        return child.returncode


class InProcess(Supervisor):
    """Runs each step in this process through `main` (the CLI's), for tests and notebooks.

    The same logs, results and records as `Supervisor`, without a process per
    step (each would import torch again). Signals are left to the running
    command: a training step stops at its next step boundary on Ctrl-C.
    """

    def __init__(self, main: Callable[[list[str]], int]) -> None:
        super().__init__()
        self.main = main

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        yield

    def _execute(self, argv: list[str], stdout: IO[str], stderr: IO[str]) -> int:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                return self.main(argv)
            except SystemExit as e:  # argparse's usage errors
                return e.code if isinstance(e.code, int) else 2
            finally:
                sys.stdout.flush()


PR_SET_PDEATHSIG = 1
"""Linux's prctl option: the signal this process gets when its parent dies."""


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the recipe dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the recipe's handlers still forward
        pass


def run_folio(argv: Sequence[str], log: Path, parse: bool = True) -> dict[str, Any]:
    """Run one `folio` command as a recipe step would (without a recipe's signal handling)."""
    return Supervisor().run(argv, log, parse)


def _last_error(log: Path) -> str:
    """A step's one-line error: the last `folio: error:` line of its log, else its last line."""
    lines = [s for s in log.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()]
    errors = [s for s in lines if s.startswith("folio: error:")]
    return (errors or lines or ["no output"])[-1].strip()


def _child_env() -> dict[str, str]:
    """The environment of a step: this process's, with this package importable first."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
