"""Integration: real SciFact passages, the packaged all-MiniLM-L6-v2, BM25 -> ColBERT rerank end to end."""

import random

import pytest

from medcolbert import BM25, ColBERT, evaluate, load_beir, rerank, rerank_run
from medcolbert.scoring import maxsim
from tests.conftest import SHARED_DATA

SCIFACT = SHARED_DATA / "scifact"
pytestmark = pytest.mark.skipif(not SCIFACT.is_dir(), reason="../shared/data/scifact is not beside the project")


@pytest.fixture(scope="module")
def sample():
    """12 test claims with their cited abstracts plus BM25-similar distractors: 48 passages in all."""
    data = load_beir(SCIFACT, "test")
    rng = random.Random(0)
    qids = rng.sample(sorted(data.queries), 12)
    relevant = {d for q in qids for d in data.qrels[q]}
    bm25 = BM25().index({d: doc.full_text for d, doc in data.corpus.items()})
    first = bm25.search({q: data.queries[q] for q in qids}, k=40)
    pool = list(relevant)
    for q in qids:  # hard distractors: each query's best BM25 non-relevant hits
        pool += [d for d in first[q] if d not in relevant][:3]
    pool = list(dict.fromkeys(pool))[:48]
    texts = {d: data.corpus[d].full_text for d in pool}
    queries = {q: data.queries[q] for q in qids}
    qrels = {q: data.qrels[q] for q in qids}
    return queries, texts, qrels


@pytest.fixture(scope="module")
def minilm():
    # The default model: the released medcolbert-minilm-v5 in a checkout, else the packaged base.
    return ColBERT.from_pretrained(None, device="cpu", doc_maxlen=180)


def test_rerank_of_real_passages_with_the_default_model(sample, minilm):
    queries, texts, qrels = sample
    run = {q: {d: 0.0 for d in texts} for q in queries}  # every passage is a candidate for every claim
    reranked = rerank_run(minilm, queries, run, texts, depth=len(texts))
    metrics = evaluate(reranked, qrels, ["ndcg@10", "mrr@10"])
    shuffled = {q: {d: random.Random(i).random() for d in texts} for i, q in enumerate(queries)}
    chance = evaluate(shuffled, qrels, ["ndcg@10", "mrr@10"])
    # Even the untrained base beats a random order by a wide margin with MaxSim over MiniLM token vectors.
    assert metrics["ndcg@10"] > chance["ndcg@10"] + 0.2
    assert metrics["mrr@10"] > 0.4


def test_reranker_scores_equal_a_per_document_maxsim_loop_plus_pooled_term(sample, minilm):
    queries, texts, _ = sample
    qid = next(iter(queries))
    ids = list(texts)[:10]
    ranked = dict(rerank(minilm, queries[qid], [texts[d] for d in ids], ids=ids))
    q, q_pooled = minilm.encode_queries([queries[qid]], pooled=True)
    q, q_pooled = q[0], q_pooled[0]
    # The default model may score with a pooled head: + dense_weight x (query vectors) x cosine of the pooled vectors.
    weight = minilm.config.dense_weight
    rows = int((q.abs().sum(-1) > 0).sum())
    for d in ids:
        vectors, d_pooled = minilm.encode_documents([texts[d]], pooled=True)
        v = vectors[0]
        loop = sum(float((q[i] @ v.T).max()) for i in range(q.shape[0]))
        pooled_term = weight * rows * float(q_pooled @ d_pooled[0] / (q_pooled.norm() * d_pooled[0].norm()))
        assert ranked[d] == pytest.approx(loop + pooled_term, abs=1e-3)
        assert ranked[d] == pytest.approx(maxsim(q, v).item() + pooled_term, abs=1e-3)
