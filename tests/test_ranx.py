"""Cross-check with ranx (a well-kept IR evaluation library): RRF fusion, nDCG@10 and the paired t-test agree."""

from __future__ import annotations

import numpy as np
import pytest

ranx = pytest.importorskip("ranx")

from medcolbert.evaluation.metrics import evaluate, per_query  # noqa: E402
from medcolbert.experiment import paired_test  # noqa: E402
from medcolbert.search.fusion import rrf  # noqa: E402


def runs_and_qrels(seed: int = 0) -> tuple[dict, dict, dict]:
    rng = np.random.default_rng(seed)
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(40, 5, replace=False)} for i in range(40)}
    # Two systems that are better than chance in different ways, with no tied scores.
    a = {q: {f"d{j}": float(rng.random() + (0.6 if f"d{j}" in rel and j % 2 else 0)) for j in range(40)} for q, rel in qrels.items()}
    b = {q: {f"d{j}": float(rng.random() + (0.5 if f"d{j}" in rel else 0)) for j in range(40)} for q, rel in qrels.items()}
    return qrels, a, b


def test_rrf_matches_ranx():
    _, a, b = runs_and_qrels()
    ours = rrf([a, b], k=60)
    theirs = ranx.fuse([ranx.Run(a, name="a"), ranx.Run(b, name="b")], method="rrf", params={"k": 60}).to_dict()
    for q in ours:
        assert list(ours[q])[:10] == list(sorted(theirs[q], key=lambda d: -theirs[q][d]))[:10]
        for d, score in ours[q].items():
            assert score == pytest.approx(theirs[q][d], rel=1e-9)


def test_ndcg_and_paired_t_test_match_ranx():
    qrels, a, b = runs_and_qrels(1)
    ours_a, ours_b = per_query(a, qrels, ["ndcg@10"]), per_query(b, qrels, ["ndcg@10"])
    qids = sorted(qrels)
    xa = np.array([ours_a["ndcg@10"][q] for q in qids])
    xb = np.array([ours_b["ndcg@10"][q] for q in qids])
    Q = ranx.Qrels(qrels)
    ra, rb = ranx.Run(a, name="a"), ranx.Run(b, name="b")
    assert evaluate(a, qrels, ["ndcg@10"])["ndcg@10"] == pytest.approx(ranx.evaluate(Q, ra, "ndcg@10"), abs=1e-9)
    assert xb.mean() == pytest.approx(ranx.evaluate(Q, rb, "ndcg@10"), abs=1e-9)
    report = ranx.compare(Q, [ra, rb], metrics=["ndcg@10"], stat_test="student", rounding_digits=12).to_dict()
    assert paired_test(xb, xa, "paired-t") == pytest.approx(float(report["b"]["comparisons"]["a"]["ndcg@10"]), rel=1e-6)
