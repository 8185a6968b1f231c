"""The benchmarks' own computations that a record rests on (their command lines are checked in test_commands.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcolbert.bench.shards_scale import exact_top
from medcolbert.scoring import maxsim_one


def test_brute_force_exact_top_equals_maxsim_over_every_document():
    # The 1M / 10M references of `bench shards-scale`: blocks aligned to documents, several query batches; here
    # blocks far smaller than the collection so that many documents sit at block edges.
    rng = np.random.default_rng(0)
    doclens = rng.integers(1, 40, size=300)
    vectors = rng.normal(size=(int(doclens.sum()), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    Q = rng.normal(size=(7, 5, 16)).astype(np.float32)
    Q[:, 4] = 0.0   # a padding row, as encode_queries leaves for short queries
    ids = [f"d{i}" for i in range(len(doclens))]
    got = exact_top(vectors.astype(np.float16), doclens, ids, Q, k=10, block=97, batch=3)
    docs = np.split(vectors.astype(np.float16).astype(np.float32), np.cumsum(doclens)[:-1])
    for q in range(len(Q)):
        scores = maxsim_one(torch.from_numpy(Q[q]), [torch.from_numpy(d) for d in docs]).numpy()
        assert got[q] == [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]


def test_overlap_at_k_counts_the_shared_top_k_per_reference():
    from medcolbert.bench import overlap_at_k
    from medcolbert.bench.shards import overlap

    assert overlap_at_k([["a", "b", "c"], ["x", "y"]], [["c", "a", "z"], ["y", "q"]], k=2) == (1 / 2 + 1 / 2) / 2
    # the shard benchmark's runs ({query: {doc: score}}), over the reference's queries
    assert overlap({"q1": {"a": 2.0, "b": 1.0}, "q2": {"c": 1.0}}, {"q1": {"b": 3.0, "a": 1.0}}, k=2) == 1.0
    with pytest.raises(ValueError):   # unpaired runs are a mistake, not a shorter mean
        overlap_at_k([["a"]], [["a"], ["b"]])


def test_the_engines_table_gives_the_distilled_encoders_ratios_to_the_peers_and_to_the_full_one():
    from medcolbert.bench.engines import report

    def engine(p50s: list[float]) -> dict:
        rounds = [{key: {"p50_ms": p, "p95_ms": 2 * p, "ndcg@10": 0.7} for key in ("k10", "k100", "k10_with_encoding")}
                  for p in p50s]
        return {"build": {"build_s": 1.0, "bytes_per_vector": 36.0, "settings": "-"}, "rounds": rounds}

    result = {"source": "s", "documents": 1, "vectors": 1, "queries": 1, "cpu": "c", "cpu_features": ["avx2"],
              "cores": 2, "model": "m", "nbits": 2, "rounds": 2,
              "engines": {"medcolbert": engine([4.0, 6.0]), "medcolbert-distilled": engine([2.0, 3.0]),
                          "colbert-ai": engine([10.0, 10.0])}}
    text = report(result)
    mine = text.split("Ratios medcolbert-distilled / engine")[1]
    assert "- vs colbert-ai, k10_with_encoding: 0.20 / 0.30 (median 0.25)" in mine
    assert "- vs medcolbert, k10: 0.50 / 0.50" in mine
    full = text.split("Ratios medcolbert / engine")[1].split("Ratios medcolbert-distilled")[0]
    assert "- vs colbert-ai, k10: 0.40 / 0.60 (median 0.50)" in full and "- vs medcolbert-distilled, k10: 2.00 / 2.00" in full
