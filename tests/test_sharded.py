"""Searching several indexes as one: the merge of exact per-shard top-k is the exact top-k of the union."""

import pytest

from medcolbert.errors import MedColbertError
from medcolbert.indexing.index import Index
from medcolbert.scoring import maxsim_one
from medcolbert.search.plaid import SearchConfig
from medcolbert.search.sharded import ShardedSearcher
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus


def test_sharded_exact_search_is_the_exact_top_k_of_the_union(tmp_path):
    model = make_tiny_model(seed=13)
    corpus = make_corpus(90, seed=13)
    ids = list(corpus)
    shards = [Index.build(tmp_path / f"s{i}", model, {d: corpus[d] for d in ids[i::3]}, num_centroids=8,
                          show_progress=False) for i in range(3)]
    searcher = ShardedSearcher(shards, model, SearchConfig(exact=True))
    assert len(searcher) == 90
    for query in (corpus["doc4"], corpus["doc50"], "kidney dialysis"):
        got = searcher.search(query, k=7)
        # Brute force over every shard's stored (decompressed) vectors, computed here independently.
        q = model.encode_queries([query], show_progress=False)[0]
        every = []
        for ix in shards:
            scores = maxsim_one(q, ix.document_vectors(list(range(len(ix.doc_ids))))).tolist()
            every += list(zip(ix.doc_ids, scores))
        want = sorted(every, key=lambda kv: -kv[1])[:7]
        assert [d for d, _ in got] == [d for d, _ in want]
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(got, want))
    assert searcher.search(corpus["doc4"], k=1)[0][0] == "doc4"
    docs = searcher.search(corpus["doc50"], k=2, return_documents=True)
    assert docs[0]["id"] == "doc50" and docs[0]["text"] == corpus["doc50"] and docs[0]["score"] >= docs[1]["score"]
    plaid = ShardedSearcher(shards, model).search(corpus["doc61"], k=3, ncells=4)
    assert plaid[0][0] == "doc61"
    searcher.close()


def test_overlapping_shards_are_refused(tmp_path):
    model = make_tiny_model(seed=13)
    corpus = make_corpus(20, seed=2)
    a = Index.build(tmp_path / "a", model, corpus, num_centroids=4, show_progress=False)
    b = Index.build(tmp_path / "b", model, {"doc3": corpus["doc3"], "x": "liver"}, num_centroids=2, show_progress=False)
    with pytest.raises(MedColbertError, match="'doc3' is in shard 0 .* and shard 1"):
        ShardedSearcher([a, b], model)
    with pytest.raises(ValueError, match="at least one index"):
        ShardedSearcher([], model)


def test_a_sharded_searcher_stands_behind_the_retriever_interface(tmp_path):
    """PlaidRetriever(ShardedSearcher(...)): runs from texts and from encoded queries equal per-query search,
    documents come from the shard holding them, and filters apply in every shard."""
    from medcolbert.retrievers import EncodedQueries, PlaidRetriever

    model = make_tiny_model(seed=13)
    corpus = make_corpus(40, seed=5)
    ids = list(corpus)
    records = [{"id": d, "text": corpus[d], "metadata": {"half": "a" if n < 20 else "b"}} for n, d in enumerate(ids)]
    shards = [Index.build(tmp_path / f"s{i}", model, records[i::2], num_centroids=4, show_progress=False)
              for i in range(2)]
    sharded = ShardedSearcher(shards, model, SearchConfig(exact=True))
    queries = {"q1": corpus["doc7"], "q2": "kidney dialysis", "q3": corpus["doc30"]}
    retriever = PlaidRetriever(sharded)
    by_text = retriever.retrieve(queries, k=5)
    by_vectors = retriever.retrieve(EncodedQueries.encode(model, queries), k=5)
    for q, text in queries.items():
        want = sharded.search(text, k=5)
        assert list(by_text[q]) == list(by_vectors[q]) == [d for d, _ in want]
        assert all(abs(by_text[q][d] - s) < 1e-4 for d, s in want)
    hits = retriever.hits({"q": corpus["doc30"]}, k=3)["q"]
    assert sharded.documents(hits)[0] == {"id": "doc30", "text": corpus["doc30"], "metadata": {"half": "b"}, "score": hits[0][1]}
    only_a = PlaidRetriever(sharded, where="half = a").retrieve(queries, k=5)
    assert all(ids.index(d) < 20 for hits in only_a.values() for d in hits) and all(len(h) == 5 for h in only_a.values())
    sharded.close()
