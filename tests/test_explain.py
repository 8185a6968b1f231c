"""Why a document matched (issue 44): token-level MaxSim evidence joined into words, with character spans in the
stored text and shares of the score, in Python, the CLI and the service."""

from __future__ import annotations

import json

import pytest
import torch

from medcolbert import ColBERT
from medcolbert.explain import explain_text, render
from medcolbert.indexing.index import Index
from medcolbert.scoring import maxsim_one
from medcolbert.search.plaid import Searcher
from tests.conftest import make_tiny_model

DOCS = {
    "a": "Statin therapy (e.g., atorvastatin) is associated with myopathy: muscle aches in 5-10% of patients.",
    "b": "Metformin lowers HbA1c in type 2 diabetes; kidney function should be checked first.",
    "c": "Influenza vaccination of the elderly reduces hospital admissions during the winter season.",
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_tiny_model(seed=44, doc_maxlen=64, query_maxlen=24).save_pretrained(tmp_path_factory.mktemp("m") / "m")
    return ColBERT.from_pretrained(path, device="cpu")


def test_an_explanation_adds_up_to_maxsim_and_points_at_the_text(model):
    query = "Can statins cause muscle pain?"
    e = explain_text(model, query, DOCS["a"])
    # The sum over query tokens of their best similarity is MaxSim over the freshly encoded document.
    q = model.encode_queries([query])[0]
    d = model.encode_documents([DOCS["a"]])[0]
    assert e["maxsim"] == pytest.approx(float(maxsim_one(q, [d])[0]), abs=1e-3)
    words = [g for g in e["groups"] if g["kind"] == "word"]
    assert [g["text"] for g in words] == query.split()   # word pieces joined back into the typed words
    assert sum(g["kind"] == "expansion" for g in e["groups"]) == 1   # [MASK] tokens are one group
    assert sum(g["share"] for g in e["groups"]) == pytest.approx(1.0, abs=1e-3)   # no pooled head here
    for g in e["groups"]:
        for m in g["matches"]:
            if m["span"]:
                a, b = m["span"]
                assert DOCS["a"][a:b] == m["document_token"] and b > a
    assert e["highlights"] and max(h["weight"] for h in e["highlights"]) == 1.0
    for h in e["highlights"]:
        assert 0 <= h["start"] < h["end"] <= len(DOCS["a"])
    plain = render(e, DOCS["a"], color=False)
    assert "[[" in plain[0] and "\x1b[" not in "".join(plain)
    assert "\x1b[" in render(e, DOCS["a"], color=True)[0]
    # Lexical evidence: the stemmed BM25 terms the document holds.
    lex = explain_text(model, query, DOCS["a"], lexical=True)["lexical_terms"]
    assert {t["term"] for t in lex} == {"statin", "muscl"}


def test_the_pooled_heads_share_is_reported(model, tmp_path):
    pooled = ColBERT.from_pretrained(model.save_pretrained(tmp_path / "p"), device="cpu", dense_weight=1.0)
    e = explain_text(pooled, "metformin kidney", DOCS["b"])
    assert e["pooled"] is not None and -1.0 <= e["pooled"]["cosine"] <= 1.0
    total = e["maxsim"] + e["pooled"]["term"]
    assert sum(g["contribution"] for g in e["groups"]) == pytest.approx(e["maxsim"], abs=1e-3)
    assert sum(g["share"] for g in e["groups"]) == pytest.approx(e["maxsim"] / total, abs=1e-3)


def test_searcher_and_reranker_explain_indexed_documents_and_split_passages(model, tmp_path):
    from medcolbert.retrievers import MaxSimReranker

    idx = Index.build(tmp_path / "i", model, DOCS, num_centroids=4, show_progress=False)
    searcher = Searcher(idx, model)
    hits = searcher.search("statin muscle", k=3)
    e = searcher.explain("statin muscle", hits[0][0], score=hits[0][1])
    assert e["id"] == hits[0][0] and e["score"] == hits[0][1]
    with pytest.raises(KeyError, match="not in the index"):
        searcher.explain("statin", "zzz")
    with pytest.raises(ValueError, match="query is empty"):
        searcher.explain("  \u200b ", "a")
    assert MaxSimReranker(model, DOCS).explain("statin", "a")["id"] == "a"
    assert MaxSimReranker(model, idx).explain("statin", "a")["maxsim"] == pytest.approx(
        searcher.explain("statin", "a")["maxsim"])
    with pytest.raises(KeyError):
        MaxSimReranker(model, DOCS).explain("statin", "nope")
    long = {"L": " ".join([DOCS["c"]] * 4) + " " + DOCS["a"]}
    split = Index.build(tmp_path / "s", model, long, split_documents=True, passage_tokens=24, num_centroids=4,
                        show_progress=False)
    got = Searcher(split, model).explain("statin myopathy", "L")
    assert got["id"] == "L" and got["passage"].startswith("L") and got["passage"] != "L"
    passage_text = split.document(got["passage"])["text"]
    for h in got["highlights"]:
        assert h["end"] <= len(passage_text)   # spans are in the passage's own text


def test_cli_and_service_explain(model, tmp_path, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medcolbert.cli import main
    from medcolbert.service import create_app

    Index.build(tmp_path / "i", model, DOCS, num_centroids=4, show_progress=False)
    assert main(["search", "--index", str(tmp_path / "i"), "--query", "statin muscle pain", "--k", "2",
                 "--explain", "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "[[" in out and "%" in out
    rows = json.loads((tmp_path / "out.json").read_text())["hits"]
    assert all("explanation" in r and r["explanation"]["highlights"] for r in rows)
    assert main(["search", "--index", str(tmp_path / "i"), "--data", str(tmp_path), "--explain"]) == 2
    assert "give --query" in capsys.readouterr().err
    client = TestClient(create_app(tmp_path / "i", load_in_background=False))
    body = client.post("/search", json={"query": "statin muscle", "k": 2, "explain": True}).json()
    assert all(r["explanation"]["groups"] for r in body["results"])
    plain = client.post("/search", json={"query": "statin muscle", "k": 2}).json()
    assert [r["id"] for r in plain["results"]] == [r["id"] for r in body["results"]]
    assert all("explanation" not in r for r in plain["results"])
    reranked = client.post("/rerank", json={"query": "statin", "candidates": list(DOCS.values()), "explain": True})
    assert reranked.status_code == 200 and all("explanation" in r for r in reranked.json()["results"])
    by_id = client.post("/rerank", json={"query": "statin", "ids": ["a", "b"], "explain": True}).json()
    assert {r["explanation"]["id"] for r in by_id["results"]} == {"a", "b"}
    assert client.post("/rerank", json={"query": "statin", "ids": ["zz"], "explain": True}).status_code == 404
