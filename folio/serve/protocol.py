"""The OpenAI wire format: request fields checked into dataclasses, and response bodies.

Plain Python, no web framework, so every rule is testable on its own. The
fields follow OpenAI's Chat Completions and (legacy) Completions APIs; `top_k`
is a Folio extension, as in vLLM. Unknown fields are ignored, as clients send
many optional ones (`user`, `presence_penalty`, ...). Every bad value raises an
`APIError` naming the field: the server answers it as HTTP 400 with OpenAI's
error body `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
MAX_TOP_LOGPROBS_CHAT = 20  # OpenAI's limits
MAX_LOGPROBS_COMPLETION = 5
MIN_LOGPROB = -9999.0  # JSON has no -inf; OpenAI reports very unlikely tokens like this
ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """An error a client caused (or an overload), as OpenAI reports it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str, message: str, code: str | None = None) -> APIError:
    """A 400 for field `param`."""
    return APIError(400, message, param=param, code=code or "invalid_value")


@dataclass
class Limits:
    """What one request may ask of the server."""

    max_tokens: int = 2048
    """Largest max_tokens a request may ask for (more is a 400)."""
    default_max_tokens: int = 256
    """max_tokens when a request gives none."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens; None: the model's block_size."""
    max_body_bytes: int = 1 << 20
    """Largest request body (more is a 413)."""


@dataclass
class GenerationParams:
    """The decoding fields shared by both endpoints, checked."""

    model: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    include_stop_token: bool = False
    """A Folio extension of `stream_options`: a stream that ends on a stop token carries that
    token's logprob entry, with no text, in its last chunk (the playground shows it)."""
    logprobs: bool = False
    top_logprobs: int = 0


# --- field checks ----------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _opt_bool(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(name, f"'{name}' must be true or false")
    return v


def opt_int(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    """Field `name` of `body`: None if absent, else an integer in [lo, hi] (a 400 if not)."""
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        where = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad(name, f"'{name}' must be an integer {where}, got {v!r}")
    return v


def _opt_number(body: dict, name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_number(v) or not lo <= v <= hi:
        raise bad(name, f"'{name}' must be a number between {lo:g} and {hi:g}, got {v!r}")
    return float(v)


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in stops)
    ):
        raise bad(
            "stop",
            f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} "
            f"non-empty strings of up to {MAX_STOP_LENGTH} characters",
        )
    return stops


def _common(body: Any, limits: Limits) -> GenerationParams:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "'model' is required: the id of a served model (GET /v1/models)")
    # Checked as integers first: Python's True == 1, but JSON's true is not a count.
    n = body.get("n")
    if n is not None and not (_is_int(n) and n == 1):
        raise bad("n", "only n=1 is supported: send several requests for several completions")
    max_tokens = opt_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens", 1)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise bad(
            "max_tokens",
            f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
        )
    temperature = _opt_number(body, "temperature", 0.0, 2.0)
    top_p = _opt_number(body, "top_p", 0.0, 1.0)
    top_k = body.get("top_k")
    if top_k is not None and not (_is_int(top_k) and (top_k >= 1 or top_k in (0, -1))):
        raise bad("top_k", f"'top_k' must be a positive integer (0 or -1: off), got {top_k!r}")
    seed = body.get("seed")
    if seed is not None and not (_is_int(seed) and -(2**63) <= seed < 2**64):
        raise bad("seed", f"'seed' must be a 64-bit integer, got {seed!r}")
    stream = _opt_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "'stream_options' must be an object")
    include_usage = _opt_bool(options or {}, "include_usage")
    include_stop_token = _opt_bool(options or {}, "include_stop_token")
    return GenerationParams(
        model=model,
        max_tokens=max_tokens if max_tokens is not None else limits.default_max_tokens,
        temperature=1.0 if temperature is None else temperature,
        # top_p 0 keeps only the most likely token, as the nucleus filter always does.
        top_p=None if top_p is None or top_p == 1.0 else max(top_p, 1e-9),
        top_k=top_k if top_k is not None and top_k >= 1 else None,
        stop=_stop(body),
        seed=None if seed is None else seed % 2**64,
        stream=stream,
        include_usage=stream and include_usage,
        include_stop_token=stream and include_stop_token,
    )


def _content(message: dict, n: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # the parts form: [{"type": "text", "text": "..."}]
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise bad(f"messages[{n}].content", "only text content parts are supported")
            if not isinstance(part.get("text"), str):
                raise bad(f"messages[{n}].content", "a text part needs a string 'text'")
            texts.append(part["text"])
        return "".join(texts)
    if content is None and message.get("role") == "assistant":
        return ""
    raise bad(f"messages[{n}].content", "'content' must be a string or a list of text parts")


def parse_chat(body: Any, limits: Limits) -> tuple[GenerationParams, list[dict]]:
    """A /v1/chat/completions body -> its parameters and messages (role, content)."""
    params = _common(body, limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' must be a non-empty list")
    out = []
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(f"messages[{n}].role", f"message {n} needs a 'role' among {', '.join(ROLES)}")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _content(m, n)})
    params.logprobs = _opt_bool(body, "logprobs")
    top = opt_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS_CHAT)
    if top is not None and not params.logprobs:
        raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    params.top_logprobs = top or 0
    return params, out


def parse_completion(body: Any, limits: Limits) -> tuple[GenerationParams, str | list[int]]:
    """A /v1/completions body -> its parameters and prompt (text, or token ids)."""
    params = _common(body, limits)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, list):
        if not prompt or not all(_is_int(i) for i in prompt):
            raise bad(
                "prompt", "'prompt' must be a string, or one list of token ids (one prompt only)"
            )
    elif not isinstance(prompt, str):
        raise bad("prompt", "'prompt' must be a string")
    if _opt_bool(body, "echo"):
        raise bad("echo", "'echo' is not supported")
    best_of = body.get("best_of")
    if best_of is not None and not (_is_int(best_of) and best_of == 1):
        raise bad("best_of", "only best_of=1 is supported")
    top = opt_int(body, "logprobs", 0, MAX_LOGPROBS_COMPLETION)
    params.logprobs, params.top_logprobs = top is not None, top or 0
    return params, prompt


# --- responses -------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """A unique response id such as chatcmpl-3f2a..."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def clamp_logprob(lp: float) -> float:
    """A finite log-probability for JSON."""
    return max(lp, MIN_LOGPROB) if not math.isnan(lp) else MIN_LOGPROB


def chat_logprob_entry(
    token: bytes, logprob: float, alternatives: list[tuple[bytes, float]]
) -> dict[str, Any]:
    """One token of a chat choice's `logprobs.content`, with its top alternatives."""

    def one(b: bytes, lp: float) -> dict[str, Any]:
        return {
            "token": b.decode("utf-8", errors="replace"),
            "logprob": clamp_logprob(lp),
            "bytes": list(b),
        }

    return {**one(token, logprob), "top_logprobs": [one(b, lp) for b, lp in alternatives]}


def completion_logprobs(entries: list[dict[str, Any]], offset0: int = 0) -> dict[str, Any]:
    """Chat-style token entries -> the legacy Completions `logprobs` object."""
    offsets, pos = [], offset0
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }
