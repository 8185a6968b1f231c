import pytest
import torch

from medcolbert import VectorCache, rerank, rerank_run
from medcolbert.scoring import maxsim
from tests.conftest import DOCS, QUERIES, make_tiny_model

TEXTS = {d: f"{t} {x}".strip() for d, (t, x) in DOCS.items()}


def test_rerank_orders_by_exact_maxsim(tiny_model):
    cands = list(TEXTS.values())
    ranked = rerank(tiny_model, "statins and muscle pain", cands, ids=list(TEXTS))
    assert len(ranked) == len(cands)
    q = tiny_model.encode_queries(["statins and muscle pain"])[0]
    docs = tiny_model.encode_documents(cands)
    by_loop = {d: maxsim(q, v).item() for d, v in zip(TEXTS, docs)}
    assert [d for d, _ in ranked] == sorted(by_loop, key=by_loop.get, reverse=True)
    for d, s in ranked:
        assert s == pytest.approx(by_loop[d], abs=1e-5)


def test_precomputed_embeddings_give_the_same_ranking_and_k_cuts(tiny_model):
    cands = list(TEXTS.values())
    q = tiny_model.encode("statins and muscle pain", is_query=True)
    pre = rerank(tiny_model, q, tiny_model.encode(cands, is_query=False), k=3)
    from_text = rerank(tiny_model, "statins and muscle pain", cands, k=3)
    assert [i for i, _ in pre] == [i for i, _ in from_text] and len(pre) == 3
    assert rerank(tiny_model, "x", []) == []
    with pytest.raises(TypeError, match="all strings"):
        rerank(tiny_model, "x", ["text", torch.zeros(2, 16)])
    with pytest.raises(ValueError, match="2 ids for 1"):
        rerank(tiny_model, "x", ["text"], ids=["a", "b"])


class CountingModel:
    """Wraps a model and counts the documents it is asked to encode."""

    def __init__(self, model):
        self.model, self.encoded = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def encode_documents(self, texts, **kw):
        self.encoded += len(texts)
        return self.model.encode_documents(texts, **kw)


def test_rerank_run_uses_the_cache_and_notices_changed_text(tmp_path):
    model = make_tiny_model(seed=5)
    counting = CountingModel(model)
    first = {q: {d: 1.0 for d in TEXTS} for q in QUERIES}
    cache = VectorCache(counting, tmp_path)
    a = rerank_run(counting, QUERIES, first, TEXTS, depth=6, cache=cache)
    assert counting.encoded == len(TEXTS)
    # A fresh cache object over the same folder (a second process) encodes nothing.
    b = rerank_run(counting, QUERIES, first, TEXTS, depth=6, k=4, cache=VectorCache(counting, tmp_path))
    assert counting.encoded == len(TEXTS)
    assert all(len(hits) == 6 for hits in a.values()) and all(len(hits) == 4 for hits in b.values())
    assert all(list(b[q]) == list(a[q])[:4] for q in a)
    uncached = rerank_run(model, QUERIES, first, TEXTS, depth=6)
    for qid in a:
        assert list(a[qid]) == list(uncached[qid])
        for d in a[qid]:  # cached vectors are float16: scores agree closely, not bit for bit
            assert a[qid][d] == pytest.approx(uncached[qid][d], abs=2e-2)
    changed = dict(TEXTS, d1="completely different text about asthma inhalers")
    rerank_run(counting, QUERIES, first, changed, depth=6, cache=VectorCache(counting, tmp_path))
    assert counting.encoded == len(TEXTS) + 1


def test_damaged_cache_chunk_is_reencoded(tmp_path):
    model = CountingModel(make_tiny_model(seed=6))
    cache = VectorCache(model, tmp_path)
    cache.get_or_encode(list(TEXTS), list(TEXTS.values()))
    vectors_file = next(cache.dir.glob("chunk-*.vectors.npy"))
    vectors_file.write_bytes(vectors_file.read_bytes()[:100])  # truncated
    again = VectorCache(model, tmp_path)
    assert len(again) == 0
    again.get_or_encode(list(TEXTS), list(TEXTS.values()))
    assert model.encoded == 2 * len(TEXTS)


def test_rerank_run_rejects_unknown_ids(tiny_model):
    with pytest.raises(KeyError, match="not in the corpus"):
        rerank_run(tiny_model, QUERIES, {"q1": {"nope": 1.0}}, TEXTS)
    with pytest.raises(KeyError, match="without text"):
        rerank_run(tiny_model, QUERIES, {"q9": {"d1": 1.0}}, TEXTS)


def test_rerank_takes_a_dict_a_list_of_queries_and_refuses_an_empty_query(tiny_model):
    from medcolbert.search.rerank import rerank

    docs = {"a": "statin therapy and muscle pain", "b": "influenza vaccines in the elderly"}
    by_dict = rerank(tiny_model, "statins and muscle pain", docs)
    by_list = rerank(tiny_model, "statins and muscle pain", list(docs.values()), ids=list(docs))
    assert by_dict == by_list and {d for d, _ in by_dict} == {"a", "b"}
    batch = rerank(tiny_model, ["statins and muscle pain", "flu shots for old people"], docs, k=1)
    assert len(batch) == 2 and batch[0] == by_dict[:1]
    own = rerank(tiny_model, ["q one", "q two"], [["x text", "y text"], {"z": "z text"}])
    assert [len(r) for r in own] == [2, 1] and own[1][0][0] == "z"
    with pytest.raises(ValueError, match="the query is empty"):
        rerank(tiny_model, "  ", docs)


def test_index_build_takes_a_plain_list_of_texts(tmp_path, tiny_model):
    from medcolbert.indexing.index import Index

    texts = [f"document number {i} about aspirin and the heart" for i in range(20)]
    index = Index.build(tmp_path / "idx", tiny_model, texts, num_centroids=4, show_progress=False)
    assert index.doc_ids == [str(i) for i in range(20)]


def test_a_pooled_head_adds_its_weighted_cosine_to_maxsim(tmp_path):
    """dense_weight > 0: score = MaxSim + weight x (query vectors) x cosine of the mean-pooled states, in rerank
    and rerank_run alike, with the pooled vectors kept in (and reloaded from) the vector cache."""
    model = make_tiny_model(seed=3, dropout=0.0).reconfigure(dense_weight=0.5)
    texts = [body for _, body in DOCS.values()]
    query = QUERIES["q1"]
    q = model.encode_queries([query])[0]
    docs = model.encode_documents(texts)

    def pooled(batch):  # the mean of the backbone's states over the text's own tokens, computed here
        hidden = model.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        real = (batch.attention_mask.bool() & (batch.input_ids != model.tokenizer.mask_token_id)).float()
        return torch.nn.functional.normalize((hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True), dim=-1)

    with torch.no_grad():
        qp = pooled(model.tokenizer.tokenize_queries([query]))[0]
        dp = torch.cat([pooled(model.tokenizer.tokenize_documents([t])) for t in texts])
    count = int((q.abs().sum(-1) > 0).sum())
    expected = torch.stack([maxsim(q, d)[0, 0] for d in docs]) + 0.5 * count * (dp @ qp)
    got = dict(rerank(model, query, texts))
    assert torch.allclose(torch.tensor([got[i] for i in range(len(texts))]), expected, atol=1e-4)
    corpus = {d: body for d, (_, body) in DOCS.items()}
    run = {"q1": {d: 1.0 for d in corpus}}
    first = rerank_run(model, {"q1": query}, run, corpus, cache=VectorCache(model, tmp_path))
    again = rerank_run(model, {"q1": query}, run, corpus, cache=VectorCache(model, tmp_path))  # read from disk
    for d, i in zip(corpus, range(len(texts))):
        assert first["q1"][d] == pytest.approx(float(expected[i]), abs=1e-3)   # cached document vectors are float16
        assert again["q1"][d] == pytest.approx(first["q1"][d], abs=1e-6)
    with pytest.raises(ValueError, match="pooled single-vector head"):
        rerank(model, q, docs)


def test_dense_length_power_grows_the_pooled_weight_for_long_queries_only(tmp_path):
    """dense_length_power p: a query of n vectors past the augmentation length a is scored with
    dense_weight x (n / a)^p on its pooled term, by rerank, rerank_run and an index's search alike; a query padded
    to a keeps dense_weight; the setting survives a save and load, and out-of-range values are refused."""
    from medcolbert import ColBERT, Index, ModelConfig, Searcher
    from medcolbert.scoring import maxsim_one

    model = make_tiny_model(seed=5, dropout=0.0, query_maxlen=40).reconfigure(
        dense_weight=0.5, dense_length_power=2.0, query_augment_len=8)
    texts = [f"{t} {x}".strip() for t, x in DOCS.values()]
    short, long = "statin pain", "my mother takes statins and aspirin every day and now her legs hurt at night, why?"
    _, docs_pooled = model.encode_documents(texts, pooled=True)
    for query in (short, long):
        q, qp = model.encode_queries([query], pooled=True)
        q, qp = q[0], qp[0]
        n = int((q.abs().sum(-1) > 0).sum())
        weight = 0.5 * max(1.0, n / 8) ** 2
        assert model.config.pooled_weight(n) == pytest.approx(weight)
        assert (n == 8) == (query == short) and (weight > 0.5) == (query == long)
        expected = maxsim_one(q, model.encode_documents(texts)) + weight * n * (docs_pooled @ qp)
        got = dict(rerank(model, query, texts))
        assert torch.allclose(torch.tensor([got[i] for i in range(len(texts))]), expected, atol=1e-3)
        run = rerank_run(model, {"q": query}, {"q": {d: 1.0 for d in DOCS}}, TEXTS)
        assert [run["q"][d] for d in DOCS] == pytest.approx(expected.tolist(), abs=1e-2)
    index = Index.build(tmp_path / "idx", model, dict(zip(DOCS, texts)), num_centroids=4, show_progress=False)
    # The loop ended on the long query (q, qp, n, weight are its). The index scores from its stored (compressed)
    # vectors: the same rule, applied to those.
    assert weight > 0.5
    positions = [index.position[d] for d in DOCS]
    stored = maxsim_one(q, index.document_vectors(positions)) + weight * n * (index.pooled_vectors(positions) @ qp)
    hits = dict(Searcher(index, model).search(long, k=len(texts), exact=True))
    assert [hits[d] for d in DOCS] == pytest.approx(stored.tolist(), abs=0.02)
    model.save_pretrained(tmp_path / "ckpt")
    assert ColBERT.from_pretrained(str(tmp_path / "ckpt")).config.dense_length_power == 2.0
    with pytest.raises(ValueError, match="dense_length_power must be a number in \\[0, 10\\]"):
        ModelConfig(dense_length_power=-1)
    with pytest.raises(ValueError, match="dense_length_power"):
        ModelConfig(dense_length_power=float("nan"))
