import math

import pytest

from medcolbert import BM25, evaluate
from medcolbert.evaluation.metrics import format_table, parse_metric, per_query
from tests.conftest import DOCS, QRELS, QUERIES


def test_metrics_on_hand_checked_runs():
    qrels = {"a": {"x": 1}, "b": {"y": 1}}
    run = {"a": {"x": 3.0, "z": 1.0}, "b": {"z": 3.0, "y": 2.0}}
    m = evaluate(run, qrels)
    assert m["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert m["recall@100"] == pytest.approx(1.0)
    assert m["map@100"] == pytest.approx(0.75)


def test_queries_missing_from_the_run_count_as_zero():
    qrels = {"a": {"x": 1}, "b": {"y": 1}}
    assert evaluate({"a": {"x": 1.0}}, qrels)["ndcg@10"] == pytest.approx(0.5)
    assert per_query({"a": {"x": 1.0}}, qrels, ["mrr@10"])["mrr@10"] == {"a": 1.0, "b": 0.0}


def test_metric_names_and_table():
    assert str(parse_metric("MAP@100")) == "AP@100"
    assert str(parse_metric("nDCG@10")) == "nDCG@10"
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric("bogus@3")
    table = format_table({"BM25": {"ndcg@10": 0.5}, "a longer name": {"ndcg@10": 0.25}})
    lines = table.splitlines()
    assert lines[0].split() == ["system", "ndcg@10"] and "0.2500" in lines[3]
    assert len({len(line) for line in lines}) == 1  # aligned


def test_bm25_finds_the_relevant_document():
    texts = {d: f"{t} {x}" for d, (t, x) in DOCS.items()}
    run = BM25().index(texts).search(QUERIES, k=3)
    for qid, rel in QRELS.items():
        assert max(run[qid], key=run[qid].get) == next(iter(rel))
    assert evaluate(run, QRELS)["mrr@10"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty corpus"):
        BM25().index({})


def test_benchmark_records_are_written_whole_with_their_table(tmp_path):
    """medcolbert.bench: percentiles as numpy computes them; a record's JSON and table land together."""
    import json

    import numpy as np

    from medcolbert.bench import percentiles, time_each, write_results

    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentiles(values, (50, 95)) == {"p50_ms": 3.0, "p95_ms": float(np.percentile(values, 95))}
    calls: list[int] = []
    assert len(time_each(calls.append, [1, 2, 3, 4], warmup=2)) == 4 and calls == [1, 2, 1, 2, 3, 4]
    path = write_results(tmp_path / "run" / "results.json", {"cpu": "x", "p50_ms": 1.5}, ["| a |", "|---|", "| 1 |"])
    assert json.loads(path.read_text()) == {"cpu": "x", "p50_ms": 1.5}
    assert (tmp_path / "run" / "results.md").read_text() == "| a |\n|---|\n| 1 |\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.json", "results.md"]   # no temporaries
