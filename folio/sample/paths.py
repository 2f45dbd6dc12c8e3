"""Decode paths by name: how a cached step runs, and in which weights.

A path's name is how it runs, then its weights if they are not float32:
`static`, `compiled-bf16`, `aot-w8a8`. The same names select a path in
`folio sample --decode`, `folio serve --decode` and `folio bench sample --paths`.

- `module`: the model's own forward with a KV cache (any model with a cache);
- `static`: the same stack flattened over a static cache (`StaticDecoder`), eager;
- `compiled`: `static` with its one-token step compiled by `torch.compile`;
- `aot`: compiled ahead of time by AOTInductor, kept on disk (`folio.sample.aot`);
- `auto`: `static` where the model and the precision allow it, else `module`.

The weights of the static paths: float32 (the same function as the model's
forward, up to float rounding), or `-bf16`, `-int8`, `-w8a8` (approximations:
`folio bench sample` reports their greedy agreement with float32).
"""

from __future__ import annotations

from dataclasses import dataclass

from folio.errors import FolioError

HOWS = ("auto", "module", "static", "compiled", "aot")
"""How the cached step runs."""
SUFFIXES = {"bf16": "bfloat16", "int8": "int8", "w8a8": "w8a8"}
"""Name suffix -> weight format of the static paths."""
STATIC_HOWS = ("static", "compiled", "aot")


@dataclass(frozen=True)
class DecodePath:
    """One decode path: how its step runs and its weights' format."""

    how: str = "auto"
    """One of HOWS."""
    weights: str = "float32"
    """float32, bfloat16, int8 or w8a8 (the last three on the static paths only)."""

    @property
    def name(self) -> str:
        """The path's name, e.g. 'compiled-w8a8'."""
        suffix = {v: k for k, v in SUFFIXES.items()}.get(self.weights)
        return f"{self.how}-{suffix}" if suffix else self.how

    @property
    def exact(self) -> bool:
        """Whether it computes the model's own function (float32 weights), up to rounding."""
        return self.weights == "float32"


PATH_NAMES = tuple([*HOWS] + [f"{how}-{suffix}" for how in STATIC_HOWS for suffix in SUFFIXES])
"""Every valid name, for --help."""


def parse_decode_path(name: str) -> DecodePath:
    """A path from its name; a FolioError listing the valid names for any other."""
    how, _, suffix = name.partition("-")
    if how in HOWS and not suffix:
        return DecodePath(how)
    if how in STATIC_HOWS and suffix in SUFFIXES:
        return DecodePath(how, SUFFIXES[suffix])
    raise FolioError(f"unknown decode path {name!r} (known: {', '.join(PATH_NAMES)})")
