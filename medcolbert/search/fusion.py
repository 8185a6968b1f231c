"""Hybrid retrieval by reciprocal rank fusion (RRF) of any number of runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..evaluation.datasets import Run


def rrf(runs: Sequence[Mapping[str, Mapping[str, float]]], k: int = 60, depth: int | None = None,
        weights: Sequence[float] | None = None) -> Run:
    """Fuse runs: each document scores sum(weight / (k + rank)) over the runs that retrieved it (rank from 1)."""
    if not runs:
        raise ValueError("rrf needs at least one run")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    weights = list(weights) if weights is not None else [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
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
