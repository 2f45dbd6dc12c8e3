"""`folio chat`: talk to a checkpoint in the terminal, the reply streamed as it is generated.

A checkpoint whose tokenizer has the chat tokens is used as an assistant (the
chat template; a reply ends at `<|end|>`); any other is a base model, and
the chat is a plain continuation of the conversation so far (the messages
joined by newlines). Commands: /reset, /temperature X, /top_k N (0: off),
/help, /quit (or Ctrl-D). Ctrl-C stops the reply being written and returns
to the prompt. When the history outgrows the context, the oldest turns are
dropped (see folio/serve/session.py) and a note says so.

Input is read as UTF-8. A line holding bytes that are not UTF-8 (a terminal
in another encoding, a binary file piped in) is refused in one line and not
sent, and the chat goes on: the model would otherwise see text the user did
not write.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from folio.errors import FolioError
from folio.inputs import InputError, check_os_text, check_seed

HELP = "talk to a checkpoint in the terminal"

COMMANDS_HELP = (
    "commands: /reset (forget the conversation), /temperature X, /top_k N (0: off), "
    "/quit (or Ctrl-D); Ctrl-C stops a reply"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `folio chat`."""
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    p.add_argument(
        "--which", choices=["latest", "best"], default="latest", help="checkpoint of a run"
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely (0: off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus threshold in (0, 1]")
    p.add_argument(
        "--seed", type=int, default=None, help="seed in [0, 2**63): reply n uses seed + n"
    )
    p.add_argument("--system", default=None, help="system message (chat models only)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")


def _command(session, line: str) -> bool:
    """Apply a /command; False when it is /quit."""
    from folio.sample.sampler import SamplingConfig

    name, _, value = line.strip().partition(" ")
    value = value.strip()
    s = session.settings
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        print("(conversation forgotten)")
    elif name == "/temperature":
        try:
            t = float(value)
            SamplingConfig(temperature=t)
        except (ValueError, FolioError):
            print(f"(temperature must be a number >= 0, got {value!r})")
        else:
            s.temperature = t
            print(f"(temperature {t:g})")
    elif name == "/top_k":
        try:
            k = int(value)
            if k < 0:
                raise ValueError
        except ValueError:
            print(f"(top_k must be an integer >= 0, got {value!r})")
        else:
            s.top_k = k or None
            print(f"(top_k {k if k else 'off'})")
    elif name == "/help":
        print(COMMANDS_HELP)
    else:
        print(f"(unknown command {name}; {COMMANDS_HELP})")
    return True


def _escape_bytes_not_utf8() -> None:
    """Decode stdin so that no byte ends the chat: a byte that is not UTF-8 becomes a lone
    surrogate (which `check_os_text` refuses) instead of a UnicodeDecodeError out of input()."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")


def run(args: argparse.Namespace) -> None:
    """Load the checkpoint and hold the conversation until /quit or end of input."""
    if args.max_new_tokens < 1:
        raise FolioError("--max-new-tokens must be at least 1")
    check_seed(args.seed)
    if args.system is not None:
        check_os_text(args.system, "--system")
    from folio.checkpoint import (  # torch, only once the flags are known to be good
        load_checkpoint,
        require_language_model,
    )
    from folio.runtime import pick_device
    from folio.sample.engine import Engine
    from folio.serve.session import ChatSession, ChatSettings

    device = pick_device(args.device)
    ck = load_checkpoint(args.checkpoint, args.which, device)
    require_language_model(
        ck, "folio chat wants a language model (a chat model such as a `folio sft` run)"
    )
    settings = ChatSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        seed=args.seed,
        system=args.system,
    )
    session = ChatSession(Engine(ck.model, max_batch=1, max_queue=1), ck.tokenizer, settings)
    mode = (
        "chat mode" if session.chat else "continuation mode (a base model: it continues the text)"
    )
    print(f"folio chat: {ck.path} in {mode}. {COMMANDS_HELP}", flush=True)
    _escape_bytes_not_utf8()
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print("\n(/quit or Ctrl-D to leave)", flush=True)
            continue
        if not line.strip():
            continue
        try:
            line = check_os_text(line, "the line")
        except InputError as e:
            print(f"folio: error: {e}; it was not sent", file=sys.stderr, flush=True)
            continue
        if line.startswith("/"):
            if not _command(session, line):
                return
            continue
        _reply(session, line)


def _reply(session, line: str) -> None:
    """Stream one reply: the prompt is built (and refused, or the history trimmed) before
    `model>` is printed, what is typed meanwhile is neither echoed nor sent, and a reply cut at
    the token limit says so."""
    dropped = session.dropped
    pieces = session.reply(line)
    started = False
    try:
        with _terminal_quiet():
            first = next(pieces, "")  # builds the prompt: its notices and errors come first
            if session.dropped > dropped:
                print(
                    f"(history too long for the context: dropped the oldest "
                    f"{session.dropped - dropped} message(s))"
                )
            sys.stdout.write("model> " + first)
            sys.stdout.flush()
            started = True
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        if session.finish_reason == "length":
            cut = session.settings.max_new_tokens
            sys.stdout.write(f" [... cut at {cut} tokens: --max-new-tokens N for more]")
        elif not session.history[-1]["content"]:
            sys.stdout.write("(an empty reply)")
        sys.stdout.write("\n")
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]\n" if started else "(stopped)\n")
    except FolioError as e:
        if started:
            sys.stdout.write("\n")
        sys.stdout.flush()
        print(f"folio: error: {e}", file=sys.stderr)
    finally:
        pieces.close()
    sys.stdout.flush()


@contextlib.contextmanager
def _terminal_quiet() -> Iterator[None]:
    """While a reply streams on a terminal: no echo of what is typed, and it is discarded after,
    so it neither mixes into the reply nor becomes the next message unseen."""
    try:
        import termios

        fd = sys.stdin.fileno()
        if not os.isatty(fd):
            raise OSError
        old = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):  # not a terminal: nothing to do
        yield
        return
    quiet = list(old)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcflush(fd, termios.TCIFLUSH)
        termios.tcsetattr(fd, termios.TCSANOW, old)
