"""`folio serve`: an OpenAI-compatible HTTP API and the playground, for one or more checkpoints.

Safe by default: it binds 127.0.0.1. Binding any other address without
`--api-key` is refused unless `--allow-remote-without-key` is given, and then
a warning is printed. A server on a loopback address without a key answers
only requests addressed to a loopback name, so a web page cannot reach it
through DNS rebinding. The key is best given in `$FOLIO_API_KEY`: a flag's
value shows in `ps` to every user of the machine. Requests name models by id
only, never a file; bodies are capped (`--max-body-bytes`); CORS is off unless
`--cors-origin` names an origin.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from folio.errors import FolioError

HELP = "serve checkpoints over an OpenAI-compatible HTTP API, with a playground"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `folio serve`."""
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="[ID=]RUN",
        help="run or checkpoint directory to serve, optionally as ID=RUN (the id defaults to "
        "the run's folder name); repeat to serve several models at once",
    )
    p.add_argument(
        "--which", choices=["latest", "best"], default="latest", help="checkpoint of a run"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=8000, help="port to bind (0: any free port)")
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1 (default: $FOLIO_API_KEY, else none); "
        "prefer FOLIO_API_KEY=KEY in the environment: a flag's value shows in `ps` to every "
        "user of this machine",
    )
    p.add_argument(
        "--allow-remote-without-key",
        action="store_true",
        help="allow binding a non-loopback address without --api-key (anyone who can reach "
        "the port can use the model)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages from ORIGIN to call the API (repeatable; default: none)",
    )
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; past it, 429")
    p.add_argument("--max-tokens", type=int, default=2048, help="largest max_tokens per request")
    p.add_argument(
        "--default-max-tokens", type=int, default=256, help="max_tokens when a request has none"
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="longest prompt in tokens (default: the model's block_size)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="largest request body; past it, 413"
    )
    p.add_argument(
        "--decode",
        default="auto",
        metavar="PATH",
        help="decode path of every served model (folio/sample/paths.py): auto (static for a "
        "float32 GPT, else module: exact and batch invariant), module, static, compiled, aot, "
        "or a static, compiled or aot path with -bf16, -int8 or -w8a8 weights (approximate, "
        "faster; compiled paths compile at start-up, aot ones keep the result in $FOLIO_CACHE)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--access-log", action="store_true", help="log every request")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None, allow_without_key: bool) -> str | None:
    """The warning to print for a bind that others can reach without a key, else None.

    Such a bind without `allow_without_key` is refused with a FolioError.
    """
    if _is_loopback(host) or api_key:
        return None
    if not allow_without_key:
        raise FolioError(
            f"--host {host} would let anyone who reaches this machine use the model: "
            f"pass --api-key KEY, or --allow-remote-without-key if you mean it"
        )
    return (
        f"warning: serving on {host} without an API key: anyone who can reach it can use the model"
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise FolioError(f"cannot listen on {host}:{port}: {why}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _check_limits(args: argparse.Namespace) -> None:
    """Refuse a limit below one before anything loads."""
    for name in ("max_batch", "max_queue", "max_tokens", "default_max_tokens", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise FolioError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise FolioError("--max-prompt-tokens must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise FolioError("--threads must be at least 1")


def _announce(models: list, warning: str | None, key_in_flag: bool) -> None:
    """Say what is exposed and how each model decodes; compile the compiled paths' steps now."""
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if key_in_flag:
        print(
            "note: --api-key shows in `ps` to every user of this machine; "
            "FOLIO_API_KEY=KEY in the environment does not",
            file=sys.stderr,
            flush=True,
        )
    for m in models:
        mode = "chat" if m.chat else "completion"
        e = m.engine
        print(
            f"model {m.id!r}: {mode} mode, block_size {e.block_size}, decode path "
            f"{e.path.name} ({e.invariance_note})",
            flush=True,
        )
        if e.path.how in ("compiled", "aot"):
            print(f"model {m.id!r}: compiling the decode steps ...", flush=True)
            e.warm_up()


def run(args: argparse.Namespace) -> None:
    """Load the checkpoints, bind, and serve until Ctrl-C or SIGTERM."""
    try:
        import uvicorn

        from folio.serve.app import create_app, load_served_model
        from folio.serve.deps import api_key_bytes
        from folio.serve.protocol import Limits
    except ImportError as e:
        raise FolioError(
            f"folio serve needs the 'serve' extra ({e.name} is missing): pip install 'folio[serve]'"
        ) from None
    import torch

    from folio.runtime import pick_device
    from folio.sample.paths import parse_decode_path

    key_in_flag = bool(args.api_key)
    args.api_key = args.api_key or os.environ.get("FOLIO_API_KEY") or None
    if args.api_key is not None:
        api_key_bytes(args.api_key)  # a key no client could send is refused before loading
    _check_limits(args)
    decode = parse_decode_path(args.decode)  # a bad name is refused before loading anything
    warning = exposure_warning(args.host, args.api_key, args.allow_remote_without_key)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    models = [
        load_served_model(
            spec,
            device=device,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            which=args.which,
            decode=decode,
        )
        for spec in args.checkpoint
    ]
    limits = Limits(
        max_tokens=args.max_tokens,
        default_max_tokens=min(args.default_max_tokens, args.max_tokens),
        max_prompt_tokens=args.max_prompt_tokens,
        max_body_bytes=args.max_body_bytes,
    )
    app = create_app(
        models,
        api_key=args.api_key,
        cors_origins=args.cors_origin,
        limits=limits,
        # Without a key, a loopback server trusts its callers: keep web pages from
        # reaching it under another name (DNS rebinding).
        loopback_only=_is_loopback(args.host) and not args.api_key,
    )
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    _announce(models, warning, key_in_flag)
    print(f"serving on http://{shown}:{port} (playground at /, API at /v1)", flush=True)
    config = uvicorn.Config(
        app,
        log_level="info" if args.access_log else "warning",
        access_log=args.access_log,
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run(sockets=[sock])
