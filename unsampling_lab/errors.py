"""Errors that say what was wrong, what was expected and what to do."""
from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class UnsamplingError(ValueError):
    """Bad input to unsampling_lab: the message says what was wrong and what to do."""


def suggest(name: str, choices: Iterable[str], *, what: str) -> UnsamplingError:
    """`unknown sampler 'eulr'; did you mean 'euler'?` with the valid names listed."""
    choices = list(choices)
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    return UnsamplingError(f"unknown {what} {name!r}{hint} Valid {what}s: {', '.join(choices)}")


def check_choice(name: str, choices: Iterable[str], *, what: str) -> str:
    """Return `name` if it is one of `choices`, else raise with the nearest names."""
    choices = list(choices)
    if name not in choices:
        raise suggest(name, choices, what=what)
    return name


def check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """`value` as a Python int in minimum..maximum: ints and numpy integers pass; bools, floats and strings are
    errors (a whole float is told its int: `steps must be a whole number, got 4.0; use 4`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy bools are not Integral either
        whole = isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer()
        hint = f"; use {int(value)}" if whole else ""
        raise UnsamplingError(f"{name} must be a whole number, got {value!r}{hint}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        limits = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise UnsamplingError(f"{name} must be {limits}, got {value}")
    return value


def user_path(path: Any) -> Path:
    """`Path(path).expanduser()`, where a `~name` with no such user is a one-line error (pathlib raises RuntimeError)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise UnsamplingError(f"cannot expand {str(path)!r}: {str(path).split('/')[0]} names no user's home folder on "
                              "this machine; give the full path") from None


class UnsamplingWarning(UserWarning):
    """Something was changed or dropped on the way in (e.g. a prompt cut to the tokenizer's length)."""
