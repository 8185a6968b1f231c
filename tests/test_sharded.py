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
