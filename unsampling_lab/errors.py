"""Errors that say what was wrong, what was expected and what to do."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


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


class UnsamplingWarning(UserWarning):
    """Something was changed or dropped on the way in (e.g. a prompt cut to the tokenizer's length)."""
