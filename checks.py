"""Value checks shared by the config schema (``trainer/schema.py``), the studies and the library
functions' argument checks: each raises ValueError with one line naming the key, the value and
what is allowed, and returns the value."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(key: str, v: Any, lo: int = 0, note: str = "") -> int:
    """An integer >= ``lo`` (a bool is not one)."""
    if not _is_int(v) or v < lo:
        raise ValueError(f"{key}={v!r} must be an integer >= {lo}{note}")
    return v


def number(key: str, v: Any, lo: float = 0.0, strict: bool = True, hi: float | None = None, note: str = "") -> float:
    """A finite number > ``lo`` (``strict``) or >= ``lo``, and < ``hi`` where given."""
    ok = _is_number(v) and (v > lo if strict else v >= lo) and (hi is None or v < hi)
    if not ok:
        bound = f"in [{lo:g}, {hi:g})" if hi is not None else f"a finite number {'>' if strict else '>='} {lo:g}"
        raise ValueError(f"{key}={v!r} must be {bound}{note}")
    return float(v)


def words(allowed: Iterable) -> str:
    """``a, b or c``."""
    names = ["null" if a is None else str(a) for a in allowed]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def choice(key: str, v: Any, allowed: Iterable, note: str = "", unknown: bool = False) -> Any:
    """One of ``allowed`` (``unknown``: the line says the value "is unknown", for names)."""
    allowed = list(allowed)
    if v not in allowed:
        raise ValueError(f"{key}={v!r}{' is unknown' if unknown else ''}; allowed: {allowed}{note}")
    return v


class Rule:
    """A value's rule, stated once where the value is declared (an estimator's hyperparameter:
    ``lam: Annotated[float, Rule(number)] = 2.0``): ``Rule(check, *args, **kw)(key, v)`` is
    ``check(key, v, *args, **kw)``; ``optional``: None passes."""

    def __init__(self, check, *args, optional: bool = False, **kw):
        self.check, self.args, self.kw, self.optional = check, args, kw, optional

    def __call__(self, key: str, v: Any) -> Any:
        return v if self.optional and v is None else self.check(key, v, *self.args, **self.kw)


def integers(key: str, v: Any, lo: int = 0) -> list[int]:
    """One integer or a non-empty list of them, each >= ``lo``."""
    vals = [v] if _is_int(v) or isinstance(v, str) else list(v)
    if not vals or not all(_is_int(x) and x >= lo for x in vals):
        raise ValueError(f"{key}={v!r} is invalid: give a non-empty list of integers >= {lo}")
    return vals


def subset(key: str, v: Any, allowed: Iterable) -> list[str]:
    """One name or a non-empty list of names, each one of ``allowed``."""
    allowed = list(allowed)
    vals = [v] if isinstance(v, str) else list(v)
    if not vals or any(x not in allowed for x in vals):
        raise ValueError(f"{key}={v!r} is invalid: choose from {allowed}")
    return vals
