"""Checks for numbers, ids and texts where they enter: one-line errors that name the option and its range."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

import numpy as np

# C0/C1 control characters (NUL included) and DEL: never part of an id, and they truncate or hide ids in
# TREC files, logs and terminals.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    """value as an int in [lo, hi], or a ValueError naming `name` and the accepted range."""
    accepted = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    # A float, even 5.0, is refused: accepting it here let it reach a slice later ("slice indices must be integers").
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer {accepted}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer {accepted}, got {value}")
    return int(value)


def check_float(name: str, value: object, lo: float, hi: float) -> float:
    """value as a finite float in [lo, hi], or a ValueError naming `name` and the accepted range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value}")
    return value


def check_finite(name: str, value: float) -> float:
    """value, or a ValueError when it is NaN or infinite (a score that would silently reorder a ranking)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} is {value}; scores must be finite")
    return value


def _invisible(ch: str) -> bool:
    # Whitespace, control and format characters (Cc, Cf, Zs and the line/paragraph separators) and variation
    # selectors carry no words: a text made only of them is empty to a tokenizer, which would then score it by
    # its markers alone.
    import unicodedata

    code = ord(ch)
    return (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp")
            or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or code == 0x180B or 0x180C <= code <= 0x180F)


def is_blank(text: str) -> bool:
    """Whether a text is empty once whitespace, control and format characters and variation selectors are removed."""
    return all(_invisible(ch) for ch in text)


def text_problem(text: str) -> str | None:
    """Why a text cannot be used (a lone UTF-16 surrogate, which no UTF-8 file can hold), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds an invalid character (a lone surrogate \\u{ord(text[exc.start]):04x} at position {exc.start})"
    return None


def id_problem(value: str) -> str | None:
    """Why a document or query id cannot be used (empty, control characters, whitespace, invalid Unicode), or None."""
    if not value:
        return "is empty"
    bad = text_problem(value)
    if bad:
        return bad
    m = _CONTROL.search(value)
    if m:
        return f"holds a control character (U+{ord(m.group()):04X} at position {m.start()})"
    if any(c.isspace() for c in value):
        # TREC run and qrels files are whitespace-separated: an id with a space cannot be written back.
        return "holds whitespace (TREC files separate fields by whitespace)"
    return None


def check_id_list(value: object, what: str) -> list:
    """A collection of ids as a list, refusing a bare string or bytes (which would iterate as characters)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} takes a list of ids, not one {type(value).__name__} ({value!r}): wrap it, "
                        f"e.g. [{value!r}]")
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{what} takes a list of ids, got {type(value).__name__}") from None


def check_id(value: object, what: str = "id") -> str:
    """value as a usable id, or a ValueError naming the problem."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    bad = id_problem(value)
    if bad:
        raise ValueError(f"{what} {value[:40]!r} {bad}")
    return value


def check_text(value: object, what: str = "text", allow_empty: bool = False) -> str:
    """value as a usable text (valid Unicode, not blank unless allowed), or a ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not allow_empty and is_blank(value):
        raise ValueError(f"{what} is empty (nothing but whitespace, control or format characters)")
    bad = text_problem(value)
    if bad:
        raise ValueError(f"{what} {bad}")
    return value


def int_option(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (the error names the range)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {_range(lo, hi)}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {_range(lo, hi)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_option(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in [{lo}, {hi}], got {text!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be a finite number in [{lo}, {hi}], got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _range(lo: int, hi: int | None) -> str:
    return f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
