"""The lexical side of an index (issue 41): BM25 postings beside PLAID's, equal to bm25s over the live documents
after adds, deletes and compactions, filtered like PLAID, fused with it in one call, in every interface."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcolbert.baselines.bm25 import BM25
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
from tests.conftest import make_tiny_model, random_change
from tests.test_index import WORDS, make_corpus


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=41)


def reference(live: dict[str, str], query: str, k: int) -> list[tuple[str, float]]:
    """bm25s (medcolbert's BM25 baseline: the same tokenizer and scoring) over exactly the live documents."""
    hits = BM25().index(live).search({"q": query}, k=k)["q"]
    return sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))


def lexical(index: Index, query: str, k: int, where=None) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return [(index.doc_ids[p], s) for p, s in index.lexical_search(query, k, where)]


def same(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    """The same ranking: equal scores rank by rank (float32 in bm25s, float64 here), the same documents above
    the last score (documents tied at the cut may differ: any of them is a right answer)."""
    if len(a) != len(b) or any(abs(x[1] - y[1]) > 1e-4 * max(1.0, abs(y[1])) for x, y in zip(a, b)):
        return False
    cut = b[-1][1] + 1e-4 if b else 0.0
    return {d for d, x in a if x > cut} == {d for d, x in b if x > cut}


def test_postings_are_stored_checked_and_score_as_bm25s(tmp_path, model):
    corpus = make_corpus(150, seed=2)
    idx = Index.build(tmp_path / "i", model, corpus, show_progress=False)
    seg = idx.manifest["segments"][0]
    assert seg["lexical"] == "bm25s-english-stem"
    assert all(f"segments/{seg['name']}/lex_{n}.npy" in idx.manifest["files"] for n in ("docs", "tf", "ptr", "doclens"))
    for i in (3, 40, 99):
        query = " ".join(corpus[f"doc{i}"].split()[:6])
        assert same(lexical(idx, query, 10), reference(corpus, query, 10))
    Index.open(tmp_path / "i", verify=True)   # the postings are in the manifest with their checksums


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_after_adds_deletes_and_compactions_it_answers_as_a_fresh_build(tmp_path_factory, model, data):
    corpus = make_corpus(40, seed=data.draw(st.integers(0, 5)))
    path = tmp_path_factory.mktemp("lex") / "i"
    idx = Index.build(path, model, corpus, show_progress=False)
    live = dict(corpus)
    def new_docs(step: int) -> dict:
        texts = [" ".join(data.draw(st.lists(st.sampled_from(WORDS), min_size=3, max_size=12)))
                 for _ in range(data.draw(st.integers(1, 4)))]
        return {f"n{step}-{j}": (t, None, t) for j, t in enumerate(texts)}

    for step in range(data.draw(st.integers(1, 3))):
        random_change(data, idx, model, live, step, new_docs)
    query = " ".join(data.draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=5)))
    reopened = Index.open(path)
    got = lexical(reopened, query, 10)
    assert same(got, reference(live, query, 10)), (query, got, reference(live, query, 10))
    assert {d for d, _ in got} <= set(live)   # a deleted document is never returned
    # The batched scoring (one sparse product for several queries) answers each as the one-query path does.
    other = " ".join(data.draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=5)))
    batched = reopened.lexical_search_many([query, other, query + " " + query], 10)
    for q, hits in zip([query, other, query + " " + query], batched):
        assert same([(reopened.doc_ids[p], x) for p, x in hits], lexical(reopened, q, 10)), q


def test_filtered_lexical_and_hybrid_return_only_matches_and_k_of_them(tmp_path, model):
    corpus = {f"d{i}": {"text": t, "metadata": {"part": i % 4}} for i, t in enumerate(make_corpus(80, seed=7).values())}
    idx = Index.build(tmp_path / "i", model, corpus, show_progress=False)
    searcher = Searcher(idx, model)
    query = " ".join(corpus["d5"]["text"].split()[:4]) + " " + " ".join(WORDS[:6])
    matching = {d for d, v in corpus.items() if v["metadata"]["part"] == 1}
    for mode in ("lexical", "hybrid"):
        hits = searcher.search(query, k=8, where="part = 1", mode=mode)
        assert len(hits) == 8 and {d for d, _ in hits} <= matching, mode
        assert [x for _, x in hits] == sorted((x for _, x in hits), reverse=True)
    # The batched path (search_all, the retrievers) returns what one query at a time returns, filter included.
    queries = {"a": query, "b": " ".join(WORDS[3:9]), "c": corpus["d9"]["text"][:60]}
    for mode in ("lexical", "hybrid"):
        run = searcher.search_all(queries, k=8, where="part = 1", mode=mode)
        for qid, text in queries.items():
            one = searcher.search(text, k=8, where="part = 1", mode=mode)
            assert [d for d, _ in one] == list(run[qid]) and all(abs(run[qid][d] - x) < 1e-9 for d, x in one), mode
    with pytest.raises(ValueError, match="mode must be one of"):
        searcher.search_all(queries, k=8, mode="bm42")
    # Statistics come from the whole live collection; the filter only chooses what is returned.
    full = dict(lexical(idx, query, 80))
    assert all(abs(full[d] - x) < 1e-9 for d, x in lexical(idx, query, 80, where="part = 1"))


def test_hybrid_fuses_both_sides_by_rank_and_split_documents_come_back_whole(tmp_path, model):
    corpus = make_corpus(60, seed=9)
    idx = Index.build(tmp_path / "i", model, corpus, show_progress=False)
    searcher = Searcher(idx, model)
    query = " ".join(corpus["doc7"].split()[:5])
    plaid = [d for d, _ in searcher.search(query, k=100)]
    bm25 = [d for d, _ in searcher.search(query, k=100, mode="lexical")]
    fused = searcher.search(query, k=10, mode="hybrid")
    expect = {d: sum(1 / (60 + r.index(d) + 1) for r in (plaid, bm25) if d in r) for d in set(plaid) | set(bm25)}
    assert [d for d, _ in fused] == [d for d, _ in sorted(expect.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]
    # The normalised score combination: each side min-max scaled, BM25's weighted.
    plaid_s = searcher.search(query, k=100)
    bm25_s = searcher.search(query, k=100, mode="lexical")

    def scaled(run):  # type: ignore[no-untyped-def]
        lo, hi = min(x for _, x in run), max(x for _, x in run)
        return {d: (x - lo) / (hi - lo) for d, x in run}

    a, b = scaled(plaid_s), scaled(bm25_s)
    want = {d: a.get(d, 0.0) + 0.5 * b.get(d, 0.0) for d in set(a) | set(b)}
    got = searcher.search(query, k=5, mode="hybrid", fusion="score", lexical_weight=0.5)
    assert [d for d, _ in got] == [d for d, _ in sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    with pytest.raises(ValueError, match="fusion must be"):
        searcher.search(query, k=5, mode="hybrid", fusion="max")
    long = {f"L{i}": " ".join([text] * 6) for i, text in enumerate(list(corpus.values())[:6])}
    split = Index.build(tmp_path / "s", model, long, split_documents=True, passage_tokens=24, show_progress=False)
    hits = Searcher(split, model).search(" ".join(long["L2"].split()[:4]), k=3, mode="lexical", return_documents=True)
    assert hits[0]["id"] == "L2" and all("\x1f" not in h["id"] for h in hits) and "passage" in hits[0]


def test_an_index_without_postings_says_how_to_add_them(tmp_path, model):
    corpus = make_corpus(30, seed=4)
    idx = Index.build(tmp_path / "i", model, corpus, show_progress=False)
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    for seg in manifest["segments"]:     # as an index built before the lexical side existed
        del seg["lexical"]
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(manifest))
    old = Index.open(tmp_path / "i")
    with pytest.raises(Exception, match="update --index PATH --lexical"):
        old.lexical_search("statin", 5)
    assert old.build_lexical() == 1
    assert same(lexical(Index.open(tmp_path / "i", verify=True), "statin muscle", 5), reference(corpus, "statin muscle", 5))
    del idx


def test_cli_service_and_retriever_take_the_mode(tmp_path, model, capsys):
    from fastapi.testclient import TestClient

    from medcolbert.cli import main
    from medcolbert.retrievers import PlaidRetriever
    from medcolbert.service import Limits, create_app

    corpus = make_corpus(40, seed=5)
    checkpoint = model.save_pretrained(tmp_path / "m")
    Index.build(tmp_path / "i", model, corpus, show_progress=False)
    query = " ".join(corpus["doc3"].split()[:5])
    assert main(["search", "--index", str(tmp_path / "i"), "--model", str(checkpoint), "--query", query,
                 "--mode", "lexical", "--json", "-"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["id"] == reference(corpus, query, 1)[0][0]
    assert main(["search", "--index", str(tmp_path / "i"), "--model", str(checkpoint), "--query", query, "--k", "4",
                 "--mode", "hybrid", "--fusion", "score", "--lexical-weight", "0.5", "--json", "-"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 4
    run = PlaidRetriever.from_index(tmp_path / "i", model, mode="hybrid").retrieve({"q": query}, k=5)
    assert len(run["q"]) == 5
    from medcolbert.langchain import MedColbertRetriever
    from medcolbert.pyterrier import ColBERTRetrieve

    docs = MedColbertRetriever.from_index(tmp_path / "i", model, k=2, mode="lexical").invoke(query)
    assert docs[0].metadata["id"] == hits[0]["id"]
    frame = ColBERTRetrieve(tmp_path / "i", model, k=3, mode="lexical").search(query)
    assert list(frame["docno"])[0] == hits[0]["id"]
    app = create_app(tmp_path / "i", str(checkpoint), limits=Limits(), load_in_background=False)
    with TestClient(app) as client:
        r = client.post("/search", json={"query": query, "k": 3, "mode": "hybrid"})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        r = client.post("/search", json={"query": query, "k": 3, "mode": "hybrid", "fusion": "score", "lexical_weight": 0.3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert client.post("/search", json={"query": query, "mode": "fuzzy"}).status_code == 422
        top = client.post("/search", json={"query": query, "k": 1, "mode": "lexical"}).json()["results"][0]["id"]
        assert top == hits[0]["id"]


def test_the_medical_tokenizer_keeps_drug_lab_and_gene_terms_whole():
    corpus = {"a": "Dose of 5-FU raised; IL-6 and CRP high.", "b": "Fluorouracil (FU) and interleukin 6 measured.",
              "c": "COVID-19 booster and vitamin B12."}
    default, medical = BM25().index(corpus), BM25(tokenizer="medical").index(corpus)
    assert set(default.search({"q": "5-FU"}, k=3)["q"]) == {"a", "b"}     # 'fu' alone: both documents
    assert list(medical.search({"q": "5-FU"}, k=3)["q"]) == ["a"]         # the drug's name, whole
    assert list(medical.search({"q": "IL-6 levels"}, k=3)["q"]) == ["a"]
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        BM25(tokenizer="clinical")


def test_a_third_side_the_pooled_vectors_nearest_joins_the_fusion(tmp_path, model):
    import torch

    from medcolbert.modeling.encoder import ColBERT, encode_queries_pooled

    corpus = make_corpus(60, seed=11)
    model.save_pretrained(tmp_path / "m")
    pooled_model = ColBERT.from_pretrained(tmp_path / "m", device="cpu", dense_weight=1.0)
    idx = Index.build(tmp_path / "i", pooled_model, corpus, num_centroids=8, show_progress=False)
    searcher = Searcher(idx, pooled_model)
    query = " ".join(corpus["doc4"].split()[:5])
    plaid = [d for d, _ in searcher.search(query, k=100)]
    bm25 = [d for d, _ in searcher.search(query, k=100, mode="lexical")]
    _, q_pooled = encode_queries_pooled(pooled_model, [query], show_progress=False)
    cos = idx.pooled_cosines(q_pooled[0])
    order = torch.argsort(cos, descending=True, stable=True).tolist()[:100]
    pooled = [idx.doc_ids[p] for p in order]
    weights = {0: 1.0, 1: 1.0, 2: 0.5}
    runs = (plaid, bm25, pooled)
    expect = {d: sum(weights[i] / (60 + r.index(d) + 1) for i, r in enumerate(runs) if d in r)
              for d in set().union(*runs)}
    got = searcher.search(query, k=10, mode="hybrid", pooled_weight=0.5)
    assert [d for d, _ in got] == [d for d, _ in sorted(expect.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]
    assert [x for _, x in got] == pytest.approx(sorted(expect.values(), reverse=True)[:10])
    # A model without a pooled head has no such side: a clear error, not a silent two-sided fusion.
    with pytest.raises(ValueError, match="pooled_weight needs"):
        Searcher(Index.build(tmp_path / "j", model, corpus, num_centroids=8, show_progress=False), model).search(
            query, k=5, mode="hybrid", pooled_weight=1.0)


def test_plaids_side_can_be_fetched_shallower(tmp_path, model):
    corpus = make_corpus(60, seed=12)
    idx = Index.build(tmp_path / "i", model, corpus, show_progress=False)
    searcher = Searcher(idx, model)
    query = " ".join(corpus["doc3"].split()[:5])
    plaid = [d for d, _ in searcher.search(query, k=5)]
    bm25 = [d for d, _ in searcher.search(query, k=100, mode="lexical")]
    expect = {d: sum(1 / (60 + r.index(d) + 1) for r in (plaid, bm25) if d in r) for d in set(plaid) | set(bm25)}
    got = searcher.search(query, k=5, mode="hybrid", plaid_depth=5)
    assert [d for d, _ in got] == [d for d, _ in sorted(expect.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    with pytest.raises(ValueError, match="plaid_depth"):
        searcher.search(query, k=5, mode="hybrid", plaid_depth=0)
