"""One Retriever interface: stages compose (>>, RRF), and the PyTerrier and LangChain adapters use the real libraries."""

import pytest

from medcolbert import ColBERT, evaluate
from medcolbert.indexing.index import Index
from medcolbert.retrievers import (RRF, BM25Retriever, FunctionRetriever, MaxSimReranker, PlaidRetriever,
                                   make_retriever, registered_retrievers)
from medcolbert.search.rerank import rerank_run
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retr")
    corpus = make_corpus(50, seed=12)
    ckpt = make_tiny_model(seed=13).save_pretrained(root / "ckpt")
    model = ColBERT.from_pretrained(ckpt, device="cpu")
    index = Index.build(root / "index", model, corpus, num_centroids=8, show_progress=False)
    ids = list(corpus)
    queries = {f"q{i}": " ".join(corpus[ids[i * 3]].split()[:5]) for i in range(10)}
    qrels = {f"q{i}": {ids[i * 3]: 1} for i in range(10)}
    return corpus, model, index, queries, qrels


def test_pipeline_equals_rerank_of_the_first_stage(setup):
    corpus, model, _, queries, _ = setup
    bm25 = BM25Retriever(corpus)
    pipeline = bm25 >> MaxSimReranker(model, corpus, depth=20)
    got = pipeline.retrieve(queries, k=5)
    expected = rerank_run(model, queries, bm25.retrieve(queries, k=20), corpus, depth=20, k=5)
    assert got.keys() == expected.keys()
    for q in got:
        assert list(got[q]) == list(expected[q])
    one = pipeline.search(queries["q1"], k=3)      # one query alone: the same documents, scores to float error
    best = sorted(got["q1"].items(), key=lambda kv: -kv[1])[:3]
    assert [d for d, _ in one] == [d for d, _ in best]
    assert [s for _, s in one] == pytest.approx([s for _, s in best], abs=1e-4)
    with pytest.raises(TypeError, match="Reranker"):
        bm25 >> bm25  # noqa: B015


def test_reranker_shows_progress_for_batches_but_not_for_one_timed_query(setup, capsys):
    corpus, model, _, queries, _ = setup
    pipeline = BM25Retriever(corpus) >> MaxSimReranker(model, corpus, depth=20, show_progress=True)
    pipeline.retrieve(queries, k=5)
    assert "Reranking" in capsys.readouterr().err
    pipeline.search(queries["q1"], k=3)
    assert "Reranking" not in capsys.readouterr().err


def test_plaid_rrf_and_index_reranking_share_the_interface(setup):
    corpus, model, index, queries, qrels = setup
    plaid = PlaidRetriever.from_index(index.path)          # the model the index names
    fused = RRF(BM25Retriever(corpus), plaid, depth=20)
    run = fused.retrieve(queries, k=10)
    assert all(len(h) == 10 for h in run.values())
    from_index = (BM25Retriever(corpus) >> MaxSimReranker(model, index, depth=20)).retrieve(queries, k=10)
    from_text = (BM25Retriever(corpus) >> MaxSimReranker(model, corpus, depth=20)).retrieve(queries, k=10)
    # Compressed vectors rank like the exact ones on this easy set.
    assert evaluate(from_index, qrels, ["ndcg@10"])["ndcg@10"] == pytest.approx(
        evaluate(from_text, qrels, ["ndcg@10"])["ndcg@10"], abs=0.1)
    assert {"bm25", "dense"} <= set(registered_retrievers())
    assert isinstance(make_retriever("bm25", corpus), BM25Retriever)
    with pytest.raises(ValueError, match="unknown first stage 'nope'"):
        make_retriever("nope", corpus)
    bad = FunctionRetriever(lambda q, k: {"q": {"d": float("nan")}}, name="broken")
    with pytest.raises(ValueError, match="non-finite"):
        bad.retrieve({"q": "x"})


def test_mining_takes_any_retriever(setup):
    from medcolbert.training.data import Triplet
    from medcolbert.training.mining import mine_negatives

    corpus, _, _, _, _ = setup
    ids = list(corpus)
    triplets = [Triplet(corpus[ids[0]][:40], (corpus[ids[0]],))]
    mined = mine_negatives(triplets, corpus, BM25Retriever(corpus), n_negatives=3, window=(0, 10))
    assert len(mined[0].neg) == 3 and corpus[ids[0]] not in mined[0].neg


def test_pyterrier_experiment_runs_medcolbert_stages(setup):
    pd = pytest.importorskip("pandas")
    pt = pytest.importorskip("pyterrier")
    from medcolbert.pyterrier import ColBERTQueryEncoder, ColBERTRerank, ColBERTRetrieve, from_retriever

    corpus, model, index, queries, qrels = setup
    topics = pd.DataFrame([{"qid": q, "query": t} for q, t in queries.items()])
    judged = pd.DataFrame([{"qid": q, "docno": d, "label": r} for q, rels in qrels.items() for d, r in rels.items()])
    bm25 = from_retriever(BM25Retriever(corpus), k=20)
    plaid = ColBERTRetrieve(index.path, k=20)
    rerank = bm25 >> ColBERTRerank(model, corpus)
    table = pt.Experiment([bm25, plaid, rerank], topics, judged, eval_metrics=["ndcg_cut_10"],
                          names=["BM25", "PLAID", "BM25 >> MaxSim"])
    assert list(table["name"]) == ["BM25", "PLAID", "BM25 >> MaxSim"]
    assert table["ndcg_cut_10"].between(0, 1).all()
    # The reranker's ndcg equals medcolbert's own evaluation of the same pipeline.
    ours = (BM25Retriever(corpus) >> MaxSimReranker(model, corpus, depth=20)).retrieve(queries, k=20)
    assert float(table.loc[2, "ndcg_cut_10"]) == pytest.approx(evaluate(ours, qrels, ["ndcg@10"])["ndcg@10"], abs=1e-6)
    encoded = ColBERTQueryEncoder(model).transform(topics)
    assert encoded["query_vecs"].iloc[0].shape[1] == model.config.dim


def test_langchain_retriever_and_compressor(setup):
    pytest.importorskip("langchain_core")
    from medcolbert.langchain import MaxSimCompressor, MedColbertRetriever

    corpus, model, index, queries, _ = setup
    retriever = MedColbertRetriever.from_index(index.path, documents=corpus, metadata={"doc3": {"source": "x"}}, k=4)
    docs = retriever.invoke(corpus["doc3"])
    assert len(docs) == 4 and docs[0].metadata["id"] == "doc3" and docs[0].page_content == corpus["doc3"]
    assert docs[0].metadata["source"] == "x" and docs[0].metadata["score"] >= docs[1].metadata["score"]
    compressed = MaxSimCompressor(model=model, top_n=2).compress_documents(list(reversed(docs)), corpus["doc3"])
    assert len(compressed) == 2 and compressed[0].metadata["id"] == "doc3"
    assert compressed[0].metadata["relevance_score"] >= compressed[1].metadata["relevance_score"]


@pytest.mark.parametrize("dense_weight", [0.0, 1.0])
def test_encoded_queries_give_every_stage_the_same_runs_as_texts(setup, dense_weight):
    from medcolbert import EncodedQueries

    corpus, model, index, queries, _ = setup
    model = model.reconfigure(dense_weight=dense_weight) if dense_weight == 0 else ColBERT.from_pretrained(
        model.source, device="cpu", dense_weight=dense_weight)
    if dense_weight:   # a pooled-head model needs an index with pooled vectors
        index = Index.build(index.path.with_name(f"pooled-{dense_weight}"), model, corpus, num_centroids=8,
                            show_progress=False)
    encoded = EncodedQueries.encode(model, queries)
    stages = [BM25Retriever(corpus) >> MaxSimReranker(model, corpus, depth=20),
              BM25Retriever(corpus) >> MaxSimReranker(model, index, depth=20),
              PlaidRetriever.from_index(index, model),
              RRF(BM25Retriever(corpus), PlaidRetriever.from_index(index, model))]
    for stage in stages:
        by_text, by_vectors = stage.retrieve(queries, k=5), stage.retrieve(encoded, k=5)
        assert list(by_text) == list(by_vectors)
        for q in queries:
            assert list(by_text[q]) == list(by_vectors[q]), stage
            assert all(abs(by_text[q][d] - by_vectors[q][d]) < 1e-4 for d in by_text[q])
