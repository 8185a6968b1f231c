"""Errors medcolbert raises for bad input, so callers can tell them from bugs."""

from __future__ import annotations


class MedColbertError(Exception):
    """Base class of every error medcolbert raises on purpose."""


class DataError(MedColbertError, ValueError):
    """Malformed input data; the message names the file, the line and the field."""

    def __init__(self, message: str, path: object = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class CheckpointError(MedColbertError):
    """A model folder that cannot be read or written as a ColBERT checkpoint."""


class IndexFormatError(MedColbertError):
    """An index folder that is missing, damaged, or from another format version."""
