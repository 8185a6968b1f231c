"""Long documents split into passages: spans, index build, search per document, updates, truncation warning."""

from __future__ import annotations

import random

import pytest
import torch

from medcolbert.indexing.encoded import EncodedDocuments
from medcolbert.errors import MedColbertError
from medcolbert.indexing.index import Index
from medcolbert.passages import SEPARATOR, PassageSplitter, aggregate, join_passages, split_records
from medcolbert.scoring import maxsim_one
from medcolbert.search.plaid import Searcher

WORDS = ("statin myopathy influenza vaccination metformin diabetes aspirin infarction sleep obesity asthma "
         "corticosteroid hypertension kidney liver antibiotic resistance pregnancy nausea migraine").split()


def long_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + ("," if rng.random() < 0.1 else "") for _ in range(n_words))


def corpus() -> dict[str, dict]:
    docs = {f"long{i}": {"text": long_text(120 + 40 * i, i), "metadata": {"n": i}} for i in range(4)}
    docs.update({f"short{i}": {"text": long_text(8, 100 + i), "metadata": None} for i in range(4)})
    return docs


def test_spans_cover_the_text_fit_the_window_and_overlap(tiny_model):
    splitter = PassageSplitter.for_model(tiny_model, max_tokens=40, overlap=10)
    tok = tiny_model.tokenizer.tokenizer
    text = long_text(300, 1)
    spans = splitter.spans(text)
    assert len(spans) > 3 and spans[0][0] == 0 and spans[-1][1] == len(text)
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert b0 < a1 <= b1           # neighbours overlap, and nothing between them is lost
    for a, b in spans:
        assert len(tok(text[a:b], add_special_tokens=False)["input_ids"]) <= 40
    parts = [(t, m) for _, t, m in split_records(splitter, iter([("d", text, {"x": 1})]))]
    assert join_passages(parts) == (text, {"x": 1})
    assert splitter.spans("short text") == [(0, len("short text"))]


def test_splitter_checks_its_settings(tiny_model):
    with pytest.raises(MedColbertError, match="passage_overlap"):
        PassageSplitter.for_model(tiny_model, max_tokens=20, overlap=15)
    with pytest.raises(MedColbertError, match="passage_tokens"):
        PassageSplitter.for_model(tiny_model, max_tokens=2)


def test_aggregate_keeps_each_documents_best_passage():
    hits = [(f"a{SEPARATOR}1", 9.0), (f"a{SEPARATOR}0", 8.0), (f"b{SEPARATOR}0", 7.0), ("c", 6.0)]
    assert aggregate(hits, 2) == [("a", 9.0, f"a{SEPARATOR}1"), ("b", 7.0, f"b{SEPARATOR}0")]


def test_split_index_ranks_documents_by_their_best_passage(tiny_model, tmp_path):
    docs = corpus()
    path = tmp_path / "split"
    Index.build(path, tiny_model, docs, split_documents=True, num_centroids=16, show_progress=False)
    index = Index.open(path)
    stats = index.stats()
    assert stats["documents"] == 8 and stats["passages"] > 8 and index.passages == {"max_tokens": 61, "overlap": 15}
    assert index.manifest["build"]["passages"] == stats["passages"]
    # The whole document comes back from its passages, metadata without the passage bookkeeping.
    assert index.document("long3") == {"id": "long3", "text": docs["long3"]["text"], "metadata": {"n": 3}}

    query = "statin myopathy metformin diabetes"
    searcher = Searcher(index, tiny_model)
    exact = searcher.search(query, k=8, exact=True)
    # Ground truth by hand: every passage encoded on its own, a document's score is its best passage's.
    splitter = PassageSplitter.for_model(tiny_model)
    q = tiny_model.encode_queries([query], show_progress=False)[0]
    expected = {}
    for d, rec in docs.items():
        passages = [t for _, t, _ in split_records(splitter, iter([(d, rec["text"], None)]))]
        expected[d] = float(maxsim_one(q, tiny_model.encode_documents(passages, show_progress=False)).max())
    assert {d for d, _ in exact} == set(expected)
    for d, score in exact:
        assert score == pytest.approx(expected[d], rel=0.05)   # residual compression (2 bits, 16 dims)
    # The same from the index's own (decompressed) passage vectors: equal up to float rounding, same order.
    stored = {d: float(maxsim_one(q, index.document_vectors(index.passages_of(d))).max()) for d in docs}
    assert [d for d, _ in exact] == sorted(stored, key=lambda d: -stored[d])
    for d, score in exact:
        assert score == pytest.approx(stored[d], abs=1e-4)
    assert len({d for d, _ in exact}) == 8 and all(SEPARATOR not in d for d, _ in exact)

    plaid = searcher.search(query, k=3, ncells=4, ndocs=64)
    assert [d for d, _ in plaid] == [d for d, _ in exact[:3]]
    hits = searcher.search(query, k=2, return_documents=True)
    for hit in hits:
        assert "passage" in hit and hit["text"] in docs[hit["id"]]["text"]
    run = searcher.search_all({"q": query}, k=3)
    assert list(run["q"]) == [d for d, _ in plaid]


def test_split_index_updates_whole_documents(tiny_model, tmp_path):
    path = tmp_path / "split"
    index = Index.build(path, tiny_model, corpus(), split_documents=True, num_centroids=16, show_progress=False)
    before = len(index)
    n_long0 = len(index.passages_of("long0"))
    done = index.update(delete=["long0"])
    assert done["deleted"] == 1 and done["passages_deleted"] == n_long0 and len(index) == before - n_long0
    assert index.passages_of("long0") == []
    with pytest.raises(MedColbertError, match="not in the index"):
        index.delete(["long0"])
    text = long_text(200, 42)
    done = index.update(add=EncodedDocuments.encode(tiny_model, {"new": text}, {"new": {"source": "test"}}, index=index))
    assert done["added"] == 1 and done["passages_added"] > 1
    reopened = Index.open(path)
    assert reopened.document("new") == {"id": "new", "text": text, "metadata": {"source": "test"}}
    with pytest.raises(MedColbertError, match="already in the index"):
        reopened.add(EncodedDocuments.encode(tiny_model, {"new": "again"}, index=reopened))
    with pytest.raises(MedColbertError, match="passages"):   # vectors made without the index's split
        reopened.add(EncodedDocuments({"v": "x"}, [torch.zeros(3, 16)]))
    with pytest.raises(TypeError, match="EncodedDocuments"):   # texts straight in: the index runs no model
        reopened.update(add={"v": "x"})


def test_truncation_is_counted_and_warned(tiny_model, tmp_path):
    with pytest.warns(UserWarning, match=r"4 of 8 documents are longer than doc_maxlen=64"):
        index = Index.build(tmp_path / "cut", tiny_model, corpus(), num_centroids=16, show_progress=False)
    assert index.manifest["build"]["truncated_documents"] == 4 and index.passages is None


def test_rerank_scores_long_documents_by_their_best_passage(tiny_model, tmp_path):
    from medcolbert.retrievers import MaxSimReranker
    from medcolbert.search.rerank import rerank_run

    docs = {d: rec["text"] for d, rec in corpus().items()}
    query = "aspirin infarction kidney"
    run = {"q": {d: 1.0 for d in docs}}
    splitter = PassageSplitter.for_model(tiny_model)
    out = rerank_run(tiny_model, {"q": query}, run, docs, splitter=splitter)
    q = tiny_model.encode_queries([query], show_progress=False)[0]
    for d, score in out["q"].items():
        passages = [t for _, t, _ in split_records(splitter, iter([(d, docs[d], None)]))]
        best = float(maxsim_one(q, tiny_model.encode_documents(passages, show_progress=False)).max())
        assert score == pytest.approx(best, abs=1e-4)
    truncated = rerank_run(tiny_model, {"q": query}, run, docs)
    assert truncated["q"]["short0"] == pytest.approx(out["q"]["short0"], abs=1e-4)   # short: one passage
    assert any(abs(truncated["q"][d] - out["q"][d]) > 1e-3 for d in docs if d.startswith("long"))
    assert MaxSimReranker(tiny_model, docs, split_documents=True).rerank({"q": query}, run) == out
    # From a split index: every passage's stored vectors, the document scored by its best.
    index = Index.build(tmp_path / "split", tiny_model, corpus(), split_documents=True, num_centroids=16,
                        show_progress=False)
    from_index = MaxSimReranker(tiny_model, index).rerank({"q": query}, run)
    assert set(from_index["q"]) == set(docs)
    for d, score in from_index["q"].items():
        assert score == pytest.approx(out["q"][d], rel=0.05)


def test_service_serves_a_split_index(tmp_path):
    """Over HTTP: hits are documents with their best passage as the snippet, rerank by id scores the best
    passage, and a delete removes the whole document."""
    from fastapi.testclient import TestClient

    from medcolbert.service import create_app
    from tests.conftest import make_tiny_model

    model = make_tiny_model(seed=5)
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    docs = corpus()
    Index.build(tmp_path / "index", model, docs, split_documents=True, num_centroids=16, show_progress=False)
    app = create_app(tmp_path / "index", str(checkpoint), api_key=None, load_in_background=False)
    with TestClient(app) as client:
        r = client.post("/search", json={"query": "aspirin kidney", "k": 8, "return_documents": True})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert sorted(h["id"] for h in hits) == sorted(docs)
        for h in hits:
            assert h["text"] in docs[h["id"]]["text"] and "passage" in h
        r = client.post("/rerank", json={"query": "aspirin kidney", "ids": ["long2", "short1"]})
        assert r.status_code == 200, r.text
        index = Index.open(tmp_path / "index")
        q = model.encode_queries(["aspirin kidney"], show_progress=False)[0]
        best = float(maxsim_one(q, index.document_vectors(index.passages_of("long2"))).max())
        assert {x["id"]: x["score"] for x in r.json()["results"]}["long2"] == pytest.approx(best, abs=1e-4)
        assert client.post("/rerank", json={"query": "aspirin", "ids": ["nope"]}).status_code == 404
        r = client.post("/documents/delete", json={"ids": ["long2"]})
        assert r.status_code == 200, r.text
        r = client.post("/search", json={"query": "aspirin kidney", "k": 8})
        assert "long2" not in [h["id"] for h in r.json()["results"]]
        # An added document is split like the build's (its passages each hold their place in it).
        text = long_text(200, 77)
        r = client.post("/documents", json={"documents": {"added": text}, "metadata": {"added": {"source": "api"}}})
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
        reopened = Index.open(tmp_path / "index")
        assert len(reopened.passages_of("added")) > 1
        assert reopened.document("added") == {"id": "added", "text": text, "metadata": {"source": "api"}}
