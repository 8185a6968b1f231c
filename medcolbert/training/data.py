"""Triplet JSONL, the FlagEmbedding / MedEmbed training format: {"query", "pos": [...], "neg": [...]}."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..evaluation.datasets import BeirDataset, iter_jsonl, require_str
from ..validation import is_blank, text_problem


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
        if is_blank(item):
            raise DataError(f"field '{key}[{i}]' is empty", path, line)
        if text_problem(item):
            raise DataError(f"field '{key}[{i}]' {text_problem(item)}", path, line)
    if required and not value:
        raise DataError(f"field '{key}' is an empty list", path, line)
    return tuple(value)


def _scores(obj: dict, key: str, n: int, path: Path, line: int) -> tuple[float, ...] | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError(f"field '{key}' must be a list of numbers", path, line)
    if not all(math.isfinite(v) for v in value):
        raise DataError(f"field '{key}' holds a score that is not finite (NaN or infinity)", path, line)
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


def triplet_to_dict(t: Triplet) -> dict:
    """The JSONL object of one triplet."""
    obj: dict = {"query": t.query, "pos": list(t.pos), "neg": list(t.neg)}
    if t.pos_scores is not None:
        obj["pos_scores"] = list(t.pos_scores)
    if t.neg_scores is not None:
        obj["neg_scores"] = list(t.neg_scores)
    obj.update(t.meta)
    return obj


def write_triplets(path: str | Path, triplets: list[Triplet]) -> Path:
    """Write triplets as JSONL, atomically (a temporary file renamed at the end)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for t in triplets:
            f.write(json.dumps(triplet_to_dict(t), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def pairs_to_triplets(path: str | Path, source: str | None = None) -> list[Triplet]:
    """Question-answer pairs ({"query", "pos"} JSONL, extra fields kept) as triplets without negatives."""
    triplets = read_triplets(path)
    tag = source or Path(path).stem
    # An upstream "source" field (MedQuAD names the NIH website) moves aside for the data-set tag.
    return [Triplet(t.query, t.pos, t.neg, t.pos_scores, t.neg_scores,
                    {**{("upstream_source" if k == "source" else k): v for k, v in t.meta.items()}, "source": tag})
            for t in triplets]


def beir_to_triplets(data: BeirDataset, source: str | None = None) -> list[Triplet]:
    """One triplet per judged query of a BEIR split: its relevant documents are the positives."""
    out = []
    for qid, rels in data.qrels.items():
        pos = tuple(data.corpus[d].full_text for d, r in rels.items() if r > 0 and d in data.corpus)
        if qid in data.queries and pos:
            out.append(Triplet(data.queries[qid], pos, (), meta={"source": source or data.name, "qid": qid,
                                                                  "pos_ids": [d for d, r in rels.items() if r > 0]}))
    if not out:
        raise DataError(f"no judged query of split '{data.split}' has a relevant document in the corpus", data.path)
    return out
