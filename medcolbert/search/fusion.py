"""Hybrid retrieval: reciprocal rank fusion (RRF) or normalised score combination of any number of runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..evaluation.datasets import Run


def _weights(runs: Sequence[object], weights: Sequence[float] | None, what: str) -> list[float]:
    """One weight per run (1 each by default), refusing no runs or a count that does not match."""
    if not runs:
        raise ValueError(f"{what} needs at least one run")
    out = list(weights) if weights is not None else [1.0] * len(runs)
    if len(out) != len(runs):
        raise ValueError(f"{len(out)} weights for {len(runs)} runs")
    return out


def rrf(runs: Sequence[Mapping[str, Mapping[str, float]]], k: int = 60, depth: int | None = None,
        weights: Sequence[float] | None = None) -> Run:
    """Fuse runs: each document scores sum(weight / (k + rank)) over the runs that retrieved it (rank from 1)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    weights = _weights(runs, weights, "rrf")
    fused: Run = {}
    for run, w in zip(runs, weights):
        for qid, hits in run.items():
            scores = fused.setdefault(qid, {})
            # Ties in the input keep their first-seen order, so fusion is deterministic.
            ranked = sorted(hits.items(), key=lambda kv: -kv[1])
            for rank, (doc, _) in enumerate(ranked[:depth] if depth else ranked, start=1):
                scores[doc] = scores.get(doc, 0.0) + w / (k + rank)
    out: Run = {}
    for qid, scores in fused.items():
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        out[qid] = dict(ranked[:depth] if depth else ranked)
    return out


def combine(runs: Sequence[Mapping[str, Mapping[str, float]]], weights: Sequence[float] | None = None) -> Run:
    """Fuse runs by score: each run's scores of a query min-max scaled to [0, 1] (1 where all are equal) and summed
    with weights; a document a run did not retrieve gets 0 from it. Best first."""
    weights = _weights(runs, weights, "combine")
    fused: Run = {}
    for run, w in zip(runs, weights):
        for qid, hits in run.items():
            scores = fused.setdefault(qid, {})
            if not hits:
                continue
            lo, hi = min(hits.values()), max(hits.values())
            for doc, x in hits.items():
                scores[doc] = scores.get(doc, 0.0) + w * ((x - lo) / (hi - lo) if hi > lo else 1.0)
    return {qid: dict(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))) for qid, scores in fused.items()}
