"""Two runs compared query by query (issue 44): per-query metric, wins/ties/losses, the harness's paired test, the
top-10 lists side by side, one offline HTML file; bad runs refused in one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from medcolbert.cli import main
from medcolbert.evaluation.compare import compare_runs, report_html
from medcolbert.evaluation.datasets import write_run
from medcolbert.evaluation.metrics import per_query
from medcolbert.experiment import paired_test


def _beir(tmp_path):  # type: ignore[no-untyped-def]
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = {f"d{i}": f"document number {i} about <b>topic</b> {i % 3}" for i in range(12)}
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()))
    queries = {f"q{i}": f"question {i} & more" for i in range(6)}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    qrels = {q: {f"d{2 * i}": 1, f"d{2 * i + 1}": 2} for i, q in enumerate(queries)}
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, rel in qrels.items() for d, g in rel.items()))
    rng = np.random.default_rng(3)
    run_a = {q: {d: float(rng.random()) for d in docs} for q in queries}
    run_b = {q: {d: float(rng.random()) for d in docs} for q in queries}
    run_b["q0"] = dict(run_a["q0"])   # one tie
    write_run(run_a, tmp_path / "a.trec")
    write_run(run_b, tmp_path / "b.trec")
    return folder, docs, queries, qrels, run_a, run_b


def test_the_comparison_counts_and_tests_as_the_harness_does(tmp_path):
    folder, docs, queries, qrels, run_a, run_b = _beir(tmp_path)
    c = compare_runs(run_a, run_b, qrels, "ndcg@10", ("A", "B"))
    a = per_query(run_a, qrels, ["ndcg@10"])["ndcg@10"]
    b = per_query(run_b, qrels, ["ndcg@10"])["ndcg@10"]
    diffs = [a[q] - b[q] for q in sorted(qrels)]
    assert c["wins"] == sum(d > 1e-9 for d in diffs) and c["losses"] == sum(d < -1e-9 for d in diffs)
    assert c["ties"] >= 1 and c["wins"] + c["ties"] + c["losses"] == 6
    assert c["p_paired_t"] == pytest.approx(paired_test(np.array([a[q] for q in sorted(qrels)]),
                                                        np.array([b[q] for q in sorted(qrels)]), "paired-t"))
    page = report_html(c, run_a, run_b, qrels, queries, lambda d: docs.get(d), shown=2)
    # Self-contained: no script, nothing fetched; texts escaped, not interpreted.
    assert "<script" not in page and not re.search(r"(src|href)=[\"']?https?:", page)
    assert "&lt;b&gt;topic&lt;/b&gt;" in page and "question 3 &amp; more" in page
    assert page.count("<section") == 2 and "<svg" in page
    worst = max(c["per_query"], key=lambda q: abs(c["per_query"][q]["delta"]))
    assert f"id='q-{worst}'" in page


def test_cli_writes_the_report_and_refuses_bad_runs(tmp_path, capsys):
    folder, docs, queries, qrels, run_a, run_b = _beir(tmp_path)
    out = tmp_path / "report.html"
    assert main(["compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec"), "--data", str(folder),
                 "--output", str(out), "--names", "first,second"]) == 0
    assert "first" in capsys.readouterr().out and out.read_text().startswith("<!doctype html>")
    (tmp_path / "empty.trec").write_text("")
    assert main(["compare", str(tmp_path / "empty.trec"), str(tmp_path / "b.trec"), "--data", str(folder),
                 "--output", str(out)]) == 2
    assert "the run is empty" in capsys.readouterr().err
    (tmp_path / "ghost.trec").write_text("q1 Q0 nowhere 1 3.0 x\n")
    assert main(["compare", str(tmp_path / "ghost.trec"), str(tmp_path / "b.trec"), "--data", str(folder),
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown document id 'nowhere'" in err and "ghost.trec" in err and "Traceback" not in err
    (tmp_path / "other.trec").write_text("zz Q0 d1 1 3.0 x\n")
    assert main(["compare", str(tmp_path / "other.trec"), str(tmp_path / "b.trec"), "--qrels",
                 str(folder / "qrels" / "test.tsv"), "--output", str(out)]) == 2
    assert "holds none of the judged queries" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec"), "--data", str(folder),
                 "--output", str(tmp_path / "r.txt")]) == 2
    assert "name it .html" in capsys.readouterr().err
