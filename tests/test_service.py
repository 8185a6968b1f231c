"""The HTTP service on a tiny index: endpoints, limits and validation, auth, live updates, a fuzz of every endpoint."""

import json
import os

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcolbert.indexing.encoded import EncodedDocuments
from medcolbert.indexing.index import Index
from medcolbert.service import Limits, create_app
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    model = make_tiny_model(seed=31)
    checkpoint = model.save_pretrained(root / "ckpt")
    corpus = make_corpus(60, seed=9)
    Index.build(root / "index", model, corpus, show_progress=False)
    app = create_app(root / "index", str(checkpoint), api_key=None,
                     limits=Limits(max_batch=4, max_candidates=5, max_k=50, max_body_bytes=20_000),
                     load_in_background=False)
    with TestClient(app) as client:
        yield client, corpus, root


def test_health_search_batch_and_openapi(served):
    client, corpus, _ = served
    health = client.get("/health").json()
    assert health["status"] == "ready" and health["documents"] == 60
    one = client.post("/search", json={"query": corpus["doc3"], "k": 5}).json()
    assert len(one["results"]) == 5 and one["results"][0]["id"] == "doc3"
    batch = client.post("/search", json={"queries": [corpus["doc3"], corpus["doc7"]], "k": 3, "ncells": 4}).json()
    assert [r[0]["id"] for r in batch["results_batch"]] == ["doc3", "doc7"]
    assert "/search" in client.get("/openapi.json").json()["paths"]


def test_rerank_by_text_and_by_id(served):
    client, corpus, _ = served
    texts = [corpus["doc1"], corpus["doc2"], corpus["doc5"]]
    by_text = client.post("/rerank", json={"query": corpus["doc2"], "candidates": texts}).json()["results"]
    assert by_text[0]["index"] == 1 and len(by_text) == 3
    by_id = client.post("/rerank", json={"query": corpus["doc5"], "ids": ["doc1", "doc5"], "k": 1}).json()["results"]
    assert by_id == [{"id": "doc5", "score": pytest.approx(by_id[0]["score"])}]


@pytest.mark.parametrize("path,body,status,message", [
    ("/search", {"query": "", "k": 5}, 422, "query is empty"),
    ("/search", {"query": "   ", "k": 5}, 422, "query is empty"),
    ("/search", {"query": "x", "k": 0}, 422, "k must be between 1 and 50"),
    ("/search", {"query": "x", "k": 51}, 422, "k must be between"),
    ("/search", {"query": "x", "k": "10"}, 422, "k"),
    ("/search", {"query": 3}, 422, "query"),
    ("/search", {"query": "x", "queries": ["y"]}, 422, "exactly one"),
    ("/search", {"queries": ["a", "b", "c", "d", "e"]}, 413, "limit per request is 4"),
    ("/search", {"query": "x", "unknown": 1}, 422, "unknown"),
    ("/search", {"query": "x" * 2001}, 413, "2001 characters"),
    ("/rerank", {"query": "x", "ids": ["doc1", "nope"]}, 404, "unknown document id"),
    ("/rerank", {"query": "x", "candidates": ["a"] * 6}, 413, "limit is 5"),
    ("/rerank", {"query": "x"}, 422, "exactly one"),
    ("/rerank", {"query": "x", "candidates": ["ok", ""]}, 422, "candidates\\[1\\] is empty"),
    ("/documents/delete", {"ids": ["nope"]}, 404, "unknown document id"),
    ("/documents", {"documents": {"doc1": "again"}}, 409, "already in the index"),
    ("/documents", {"documents": {"new": ""}}, 422, "is empty"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(served, path, body, status, message):
    client, _, _ = served
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert __import__("re").search(message, response.json()["detail"])


def test_malformed_json_oversized_body_and_missing_length(served):
    client, _, _ = served
    response = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["detail"]
    big = client.post("/search", content=json.dumps({"query": "x" * 30_000}), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "limit is 20000" in big.json()["detail"]
    chunked = client.post("/search", content=iter([b'{"query": "x"}']), headers={"content-type": "application/json"})
    assert chunked.status_code == 411


def test_documents_added_and_deleted_are_visible_at_once(served):
    client, corpus, _ = served
    text = "zebra quagga okapi giraffe unusual words nobody else uses"
    assert client.post("/documents", json={"documents": {"fresh": text}}).json()["added"] == 1
    assert client.post("/search", json={"query": text, "k": 1}).json()["results"][0]["id"] == "fresh"
    assert client.post("/documents/delete", json={"ids": ["fresh"]}).json()["deleted"] == 1
    hits = client.post("/search", json={"query": text, "k": 50}).json()["results"]
    assert "fresh" not in [h["id"] for h in hits]


def test_a_write_by_another_process_is_picked_up(served):
    client, _, root = served
    text = "walrus narwhal beluga arctic mammals rarely mentioned"
    model = make_tiny_model(seed=31)
    (idx := Index.open(root / "index")).add(EncodedDocuments.encode(model, {"outside": text}, index=idx))   # as another process would, straight on disk
    assert client.post("/search", json={"query": text, "k": 1}).json()["results"][0]["id"] == "outside"
    metrics = client.get("/metrics").text
    assert 'medcolbert_requests_total{endpoint="/search",status="200"}' in metrics
    assert "medcolbert_request_seconds_bucket" in metrics and "medcolbert_index_documents" in metrics


def test_api_key_guards_everything_but_health(tmp_path):
    model = make_tiny_model(seed=31)
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    Index.build(tmp_path / "index", model, make_corpus(40, seed=2), show_progress=False)
    app = create_app(tmp_path / "index", str(checkpoint), api_key="s3cret", load_in_background=False)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/search", json={"query": "x"}).status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.post("/search", json={"query": "x"}, headers={"x-api-key": "wrong"}).status_code == 401
        assert client.post("/search", json={"query": "x"}, headers={"x-api-key": "s3cret"}).status_code == 200
        assert client.post("/search", json={"query": "x"}, headers={"authorization": "Bearer s3cret"}).status_code == 200


def test_health_is_503_until_loaded(tmp_path):
    app = create_app(tmp_path / "missing-index", None, load_in_background=False)
    with TestClient(app) as client:
        health = client.get("/health")
        body = health.json()
        assert health.status_code == 503 and body["status"] == "failed" and "could not be loaded" in body["error"]
        assert str(tmp_path) not in health.text   # paths go to the server log only
        assert client.post("/search", json={"query": "x"}).status_code == 503


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)
FIELDS = {"/search": ["query", "queries", "k", "ncells", "centroid_score_threshold", "ndocs"],
          "/rerank": ["query", "candidates", "ids", "k"], "/documents/delete": ["ids"], "/documents": ["documents"]}


# 150 cases per suite run; MEDCOLBERT_FUZZ_EXAMPLES=2000 for a long run (see experiments/service/).
@settings(max_examples=int(os.environ.get("MEDCOLBERT_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(FIELDS)), data=st.data())
def test_fuzz_no_endpoint_answers_5xx(served, path, data):
    client, _, _ = served
    keys = data.draw(st.lists(st.sampled_from(FIELDS[path] + ["junk"]), max_size=4, unique=True))
    body = {key: data.draw(JSON) for key in keys}
    kind = data.draw(st.sampled_from(["object", "any json", "raw bytes"]))
    if kind == "raw bytes":
        raw = data.draw(st.binary(max_size=64))
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body if kind == "object" else data.draw(JSON))
    assert response.status_code < 500, (path, body, response.text)


def test_batched_encoding_gives_the_same_answers(served):
    from concurrent.futures import ThreadPoolExecutor

    _, corpus, root = served
    app = create_app(root / "index", str(root / "ckpt"), batching=True, load_in_background=False)
    queries = [corpus[f"doc{i}"] for i in range(12)]
    with TestClient(app) as client:
        alone = [client.post("/search", json={"query": q, "k": 3}).json()["results"] for q in queries]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda q: client.post("/search", json={"query": q, "k": 3}).json()["results"], queries))
    assert [[h["id"] for h in r] for r in together] == [[h["id"] for h in r] for r in alone]
    assert all(abs(a[0]["score"] - b[0]["score"]) < 1e-3 for a, b in zip(alone, together))


def test_search_returns_stored_documents_and_adds_keep_metadata(served):
    client, corpus, _ = served
    r = client.post("/search", json={"query": corpus["doc4"], "k": 2, "return_documents": True}).json()
    assert r["results"][0]["id"] == "doc4" and r["results"][0]["text"] == corpus["doc4"]
    added = client.post("/documents", json={"documents": {"meta1": "liver hepatitis antibody"},
                                            "metadata": {"meta1": {"source": "test"}}})
    assert added.status_code == 200
    hits = client.post("/search", json={"query": "liver hepatitis antibody", "k": 50, "ncells": 16, "ndocs": 1000,
                                        "return_documents": True}).json()
    mine = [h for h in hits["results"] if h["id"] == "meta1"]
    assert mine and mine[0]["metadata"] == {"source": "test"} and mine[0]["text"] == "liver hepatitis antibody"
    bad = client.post("/documents", json={"documents": {"m2": "x y"}, "metadata": {"other": {}}})
    assert bad.status_code == 422


def test_search_from_a_registered_first_stage_reranks_its_candidates(tmp_path):
    from medcolbert.retrievers import BM25Retriever, MaxSimReranker

    model = make_tiny_model(seed=31)
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    corpus = make_corpus(40, seed=5)
    Index.build(tmp_path / "index", model, corpus, show_progress=False)
    app = create_app(tmp_path / "index", str(checkpoint), first_stages=["bm25"], load_in_background=False)
    query = corpus["doc11"]
    with TestClient(app) as client:
        got = client.post("/search", json={"query": query, "k": 5, "first_stage": "bm25", "depth": 20}).json()["results"]
        # The same pipeline through the Python API: BM25's top 20 reranked by MaxSim with the stored vectors.
        index = Index.open(tmp_path / "index")
        want = (BM25Retriever(corpus) >> MaxSimReranker(model, index, depth=20)).search(query, k=5)
        assert [h["id"] for h in got] == [d for d, _ in want] and got[0]["id"] == "doc11"
        assert all(abs(h["score"] - s) < 1e-4 for h, (_, s) in zip(got, want))
        bm25_top = {d for d, _ in BM25Retriever(corpus).search(query, k=20)}
        assert {h["id"] for h in got} <= bm25_top
        docs = client.post("/search", json={"query": query, "k": 1, "first_stage": "bm25",
                                            "return_documents": True}).json()["results"]
        assert docs[0]["text"] == query
        # A document added later is found by the first stage, which is rebuilt over the new snapshot's texts.
        assert client.post("/documents", json={"documents": {"late": "zebra quinine xylophone"}}).status_code == 200
        late = client.post("/search", json={"query": "zebra quinine xylophone", "k": 1, "first_stage": "bm25"}).json()
        assert late["results"][0]["id"] == "late"
        for body, message in [({"query": "x", "first_stage": "dense"}, "not served here; accepted: bm25"),
                              ({"query": "x", "first_stage": "bm25", "ndocs": 10}, "cannot be given with first_stage"),
                              ({"query": "x", "first_stage": "bm25", "depth": 0}, "depth")]:
            r = client.post("/search", json=body)
            assert r.status_code == 422 and message in r.text, r.text
    with pytest.raises(ValueError, match="unknown first stage 'bm99'"):
        create_app(tmp_path / "index", str(checkpoint), first_stages=["bm99"], load_in_background=False)


def test_a_pooled_head_model_is_served_with_the_same_scores_as_the_library(tmp_path):
    """A model with dense_weight > 0: /search, /rerank (texts and ids) and /documents give what Searcher and
    rerank give in process (MaxSim + weighted pooled cosine), and added documents keep their pooled vectors."""
    from medcolbert import rerank
    from medcolbert.search.plaid import Searcher

    model = make_tiny_model(seed=31).reconfigure(dense_weight=0.5)
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    corpus = make_corpus(30, seed=4)
    Index.build(tmp_path / "index", model, corpus, show_progress=False)
    app = create_app(tmp_path / "index", str(checkpoint), api_key=None, load_in_background=False)
    with TestClient(app) as client:
        query = corpus["doc4"]
        served = client.post("/search", json={"query": query, "k": 5}).json()["results"]
        local = Searcher(Index.open(tmp_path / "index"), model).search(query, k=5)
        assert [(h["id"], pytest.approx(h["score"], abs=1e-3)) for h in served] == local
        texts = [corpus["doc1"], corpus["doc4"]]
        by_text = client.post("/rerank", json={"query": query, "candidates": texts}).json()["results"]
        assert [(h["index"], pytest.approx(h["score"], abs=1e-3)) for h in by_text] == rerank(model, query, texts)
        by_id = client.post("/rerank", json={"query": query, "ids": ["doc1", "doc4"]}).json()["results"]
        assert [h["id"] for h in by_id] == ["doc4", "doc1"]
        assert by_id[0]["score"] == pytest.approx(dict(local)["doc4"], abs=1e-3)
        added = client.post("/documents", json={"documents": {"new": "leukemia chemotherapy kidney"}})
        assert added.status_code == 200
        hits = client.post("/search", json={"query": "leukemia chemotherapy kidney", "k": 31}).json()["results"]
        assert "new" in [h["id"] for h in hits]
    reopened = Index.open(tmp_path / "index")
    assert len(reopened.pooled) == 31
    local = Searcher(reopened, model).search("leukemia chemotherapy kidney", k=31)
    assert [(h["id"], pytest.approx(h["score"], abs=1e-3)) for h in hits] == local
