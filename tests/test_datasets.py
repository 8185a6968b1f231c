import json

import pytest

from medcolbert import DataError, load_beir, read_run, read_triplets, write_run
from medcolbert.evaluation.datasets import load_qrels


def test_beir_folder_loads_with_titles_and_split_queries(tiny_beir):
    data = load_beir(tiny_beir, "test")
    assert len(data.corpus) == 6 and set(data.queries) == {"q1", "q2", "q3", "q4"}
    assert data.corpus["d1"].full_text.startswith("Statins and muscle pain Statin therapy")
    assert data.corpus["d3"].full_text == data.corpus["d3"].text  # no title
    assert data.qrels["q2"] == {"d3": 1}


def _lines(path):
    return path.read_text().splitlines()


@pytest.mark.parametrize("bad_line, message", [
    ('{"_id": "d9", "text": "ok"', "invalid JSON"),
    ('{"text": "no id"}', "missing field '_id'"),
    ('{"_id": "d9", "title": "", "text": "  "}', "empty 'text' and 'title'"),
    ('{"_id": "d1", "text": "again"}', "duplicate document id 'd1'"),
    ('["a", "list"]', "expected a JSON object"),
    ('{"_id": "d9", "text": 5}', "field 'text' must be a string"),
])
def test_corpus_errors_name_file_and_line(tiny_beir, bad_line, message):
    corpus = tiny_beir / "corpus.jsonl"
    lines = _lines(corpus)
    lines.insert(2, bad_line)
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_beir(tiny_beir)
    assert "corpus.jsonl:3" in str(err.value)


def test_query_and_qrels_errors_name_file_and_line(tiny_beir):
    queries = tiny_beir / "queries.jsonl"
    original = queries.read_text()
    queries.write_text(original + json.dumps({"_id": "q9", "text": ""}) + "\n")
    with pytest.raises(DataError, match=r"queries.jsonl:5: field 'text' is empty"):
        load_beir(tiny_beir)
    queries.write_text(original)
    qrels = tiny_beir / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q1\tnope\t1\n")
    with pytest.raises(DataError, match=r"test.tsv:6: unknown document id 'nope'"):
        load_beir(tiny_beir)
    qrels.write_text("query-id\tcorpus-id\tscore\nq7\td1\t1\n")
    with pytest.raises(DataError, match=r"test.tsv:2: unknown query id 'q7'"):
        load_beir(tiny_beir)
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\tyes\n")
    with pytest.raises(DataError, match=r"test.tsv:2: relevance 'yes'"):
        load_beir(tiny_beir)
    with pytest.raises(DataError, match="no qrels for split 'dev' \\(available: test\\)"):
        load_beir(tiny_beir, "dev")
    with pytest.raises(DataError, match="not a folder"):
        load_beir(tiny_beir / "nope")


def test_run_round_trip_and_errors(tmp_path, tiny_beir):
    run = {"q1": {"d1": 2.5, "d2": 1.0}, "q2": {"d3": 0.5}}
    path = write_run(run, tmp_path / "run.trec", tag="t")
    assert _lines(path)[0] == "q1 Q0 d1 1 2.500000 t"
    assert read_run(path) == run
    data = load_beir(tiny_beir)
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 2.5 t\nq1 Q0 zzz 2 1.0 t\n")
    with pytest.raises(DataError, match=r"bad.trec:2: unknown document id 'zzz'"):
        read_run(bad, corpus=data.corpus)
    bad.write_text("q1 Q0 d1 1 high t\n")
    with pytest.raises(DataError, match=r"bad.trec:1: score 'high'"):
        read_run(bad)
    bad.write_text("q1 d1 1 2.5\n")
    with pytest.raises(DataError, match=r"bad.trec:1: expected 6 fields"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 2.5 t\nq1 Q0 d1 2 2.0 t\n")
    with pytest.raises(DataError, match="listed twice"):
        read_run(bad)


def test_trec_qrels(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 2\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}


def test_triplets_and_their_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["p"], "neg": ["n1", "n2"], "neg_scores": [0.1, 0.2],
                                "source": "x"}) + "\n" + json.dumps({"query": "q2", "pos": "single"}) + "\n")
    triplets = read_triplets(path)
    assert triplets[0].neg == ("n1", "n2") and triplets[0].neg_scores == (0.1, 0.2)
    assert triplets[0].meta == {"source": "x"} and triplets[1].pos == ("single",) and triplets[1].neg == ()
    for bad, message in [({"pos": ["p"]}, "missing field 'query'"),
                         ({"query": "q", "pos": []}, "'pos' is an empty list"),
                         ({"query": "q", "pos": ["p"], "neg": [""]}, r"'neg\[0\]' is empty"),
                         ({"query": "q", "pos": ["p"], "neg": ["n"], "neg_scores": [1, 2]}, "2 scores for 1")]:
        path.write_text(json.dumps({"query": "ok", "pos": ["fine"]}) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=rf"t.jsonl:2: .*{message}"):
            read_triplets(path)


def test_real_triplet_file_reads(tmp_path):
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "medical_question_pairs" / "triplets.jsonl"
    if not path.is_file():
        pytest.skip("../shared/data is not beside the project")
    triplets = read_triplets(path)
    assert len(triplets) == 1524 and all(t.pos and t.neg for t in triplets)
