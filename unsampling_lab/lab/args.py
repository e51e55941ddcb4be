"""The command line's argument types and parser: each error is one line that says what was wrong.

Shared by the sub-commands (`lab.cli` sweep, `lab.bench` bench).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["OneLineParser", "UsageError", "cfg_value", "choice", "control_option", "method_option", "non_negative_int",
           "positive_int", "whole_number", "yes_no"]


class UsageError(Exception):
    """A user error found after parsing: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (no usage block): `unsampling-lab sweep: error: ...`."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


# -- argument types: each says what was wrong -----------------------------------------------------------
def whole_number(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number >= `minimum` (and <= `maximum`), with an error that says what it got."""
    limits = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {limits}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected a whole number {limits}, got {value}")
        return value

    parse.__name__ = f"whole number {limits}"  # argparse names the type in its messages
    return parse


positive_int, non_negative_int = whole_number(1), whole_number(0)


def cfg_value(text: str) -> float:
    """An argparse type: a cfg, checked by the one rule (`inputs.check_cfg`), as a float."""
    from ..errors import UnsamplingError
    from ..inputs import check_cfg

    try:
        return check_cfg(float(text))  # type: ignore[return-value]
    except (ValueError, UnsamplingError):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (1 = no guidance), got {text!r}") from None


def choice(what: str, choices: Sequence[str], *, refused: dict[str, str] | None = None):
    """An argparse type for one of `choices`: a typo gets "did you mean", a known-but-refused name its reason."""
    from ..errors import suggest

    def parse(text: str) -> str:
        if text in choices:
            return text
        if refused and text in refused:
            raise argparse.ArgumentTypeError(f"{what} {text!r} cannot be used here: {refused[text]}")
        raise argparse.ArgumentTypeError(f"invalid choice: {suggest(text, choices, what=what)}")

    parse.__name__ = what
    return parse


def method_option(text: str) -> tuple[str, str, Any]:
    """METHOD.KEY=VALUE (e.g. fixed_point.anderson=5): one option of one inversion method; VALUE is a
    Python literal (number, True/False, string)."""
    return _named_option(text, "METHOD.KEY=VALUE (e.g. fixed_point.anderson=5)")


def control_option(text: str) -> tuple[str, str, Any]:
    """CONTROL.KEY=VALUE (e.g. p2p.cross_steps=0.6; CONTROL:KEY=VALUE is read the same): one option of one
    editing control; VALUE is a Python literal (number, True/False, string, a tuple of words like
    "('red','blue')"; a bare word is one word). Checked with the control's other options by the sweep."""
    return _named_option(text.replace(":", ".", 1) if ":" in text.partition("=")[0] else text,
                         "CONTROL.KEY=VALUE (e.g. p2p.cross_steps=0.6)")


def _named_option(text: str, form: str) -> tuple[str, str, Any]:
    import ast

    head, eq, value = text.partition("=")
    name, dot, key = head.partition(".")
    if not (eq and dot and name and key):
        raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return name, key, parsed


def yes_no(text: str) -> bool:
    """An argparse type: yes/no (also true/false, on/off, 1/0) as a bool."""
    words = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return words[text.lower()]
