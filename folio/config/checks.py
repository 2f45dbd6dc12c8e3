"""One validator for the stage configs, driven by each field's annotation and its bounds.

A stage's settings are a dataclass whose fields carry a type annotation and,
where the value is bounded, `metadata=within(...)`. `check_fields` reads both:
a value of the wrong type (JSON's `true` is never a number, a float never an
integer) or outside its bounds is one `FolioError` naming the table and the
field. What a field's type and bounds cannot say (one field must divide
another) stays in the dataclass's own `__post_init__`, after this check.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from folio.errors import FolioError


def within(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    choices: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Field metadata: the value must lie in [lo, hi] (open at an end when asked), or be one of
    `choices`."""
    return {"bounds": (lo, hi, lo_open, hi_open), "choices": choices}


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """What the bounds ask, as the end of "must ...": "be positive", "be in (0, 1)"."""
    if hi is None:
        if (lo == 0 and lo_open) or (lo == 1 and not lo_open):
            return "be positive"
        if lo == 0:
            return "not be negative"
        return f"be above {lo}" if lo_open else f"be at least {lo}"
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"be in {left}{lo}, {hi}{right}"


def _inside(v: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    above = lo is None or (v > lo if lo_open else v >= lo)
    below = hi is None or (v < hi if hi_open else v <= hi)
    return above and below


def check_fields(obj: Any, table: str) -> None:
    """Check every field of the dataclass `obj` against its annotation and `within` bounds.

    Integers given for a float field become floats. `table` names the settings in messages
    ("rl config: epochs must be positive, got 0").
    """
    for f in fields(obj):
        v = getattr(obj, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise FolioError(f"{table}: {f.name} must be an integer, got {v!r}")
        if kind == "float":
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise FolioError(f"{table}: {f.name} must be a finite number, got {v!r}")
            v = float(v)
            setattr(obj, f.name, v)
        if kind == "bool" and not isinstance(v, bool):
            raise FolioError(f"{table}: {f.name} must be true or false, got {v!r}")
        if kind == "str" and not isinstance(v, str):
            raise FolioError(f"{table}: {f.name} must be a string, got {v!r}")
        choices = f.metadata.get("choices")
        if choices is not None and v not in choices:
            raise FolioError(f"{table}: {f.name} must be one of {choices}, got {v!r}")
        bounds = f.metadata.get("bounds")
        if bounds is not None and not _inside(v, *bounds):
            raise FolioError(f"{table}: {f.name} must {_interval(*bounds)}, got {v}")
