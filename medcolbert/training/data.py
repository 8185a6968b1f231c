"""Triplet JSONL, the FlagEmbedding / MedEmbed training format: {"query", "pos": [...], "neg": [...]}."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..evaluation.datasets import iter_jsonl, require_str


@dataclass(frozen=True)
class Triplet:
    """A query with its positive passages, hard negatives and optional teacher scores."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    pos_scores: tuple[float, ...] | None = None
    neg_scores: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict, compare=False)


def _text_list(obj: dict, key: str, path: Path, line: int, required: bool) -> tuple[str, ...]:
    if key not in obj:
        if required:
            raise DataError(f"missing field '{key}'", path, line)
        return ()
    value = obj[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"field '{key}' must be a list of strings, got {type(value).__name__}", path, line)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"field '{key}[{i}]' must be a string, got {type(item).__name__}", path, line)
        if not item.strip():
            raise DataError(f"field '{key}[{i}]' is empty", path, line)
    if required and not value:
        raise DataError(f"field '{key}' is an empty list", path, line)
    return tuple(value)


def _scores(obj: dict, key: str, n: int, path: Path, line: int) -> tuple[float, ...] | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError(f"field '{key}' must be a list of numbers", path, line)
    if len(value) != n:
        raise DataError(f"field '{key}' has {len(value)} scores for {n} passages", path, line)
    return tuple(float(v) for v in value)


def read_triplets(path: str | Path) -> list[Triplet]:
    """All triplets of a JSONL file; malformed lines raise a DataError naming file, line and field."""
    path = Path(path)
    out: list[Triplet] = []
    for line, obj in iter_jsonl(path):
        query = require_str(obj, "query", path, line)
        pos = _text_list(obj, "pos", path, line, required=True)
        neg = _text_list(obj, "neg", path, line, required=False)
        meta = {k: v for k, v in obj.items() if k not in ("query", "pos", "neg", "pos_scores", "neg_scores")}
        out.append(Triplet(query, pos, neg, _scores(obj, "pos_scores", len(pos), path, line),
                           _scores(obj, "neg_scores", len(neg), path, line), meta))
    if not out:
        raise DataError("no triplets", path)
    return out
