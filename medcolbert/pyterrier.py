"""PyTerrier transformers: PLAID retrieval, exact MaxSim reranking, query encoding, and any medcolbert Retriever.

They need only `python-terrier` (pip install 'medcolbert[pyterrier]'), not Java: they compose with other
PyTerrier transformers (`>>`, `%`, `+`) and run in `pt.Experiment` like them.

    import pyterrier as pt
    from medcolbert.pyterrier import ColBERTRetrieve, ColBERTRerank, from_retriever
    plaid = ColBERTRetrieve("indexes/medquad", k=100)
    bm25 = from_retriever(BM25Retriever(corpus), k=100)
    pt.Experiment([bm25, plaid, bm25 >> ColBERTRerank(model, corpus)], topics, qrels, ["ndcg_cut_10"])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("medcolbert.pyterrier needs python-terrier: pip install 'medcolbert[pyterrier]'") from exc

from .evaluation.datasets import Run


def _results_frame(queries: pd.DataFrame, run: Run) -> pd.DataFrame:
    """A PyTerrier result frame (qid, query, docno, score, rank) from a run, in the queries' order."""
    text = dict(zip(queries["qid"].astype(str), queries["query"]))
    rows = []
    for qid in queries["qid"].astype(str).unique():
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: -kv[1])
        rows += [{"qid": qid, "query": text[qid], "docno": d, "score": float(s), "rank": r}
                 for r, (d, s) in enumerate(ranked)]
    return pd.DataFrame(rows, columns=["qid", "query", "docno", "score", "rank"])


def _queries(inp: pd.DataFrame) -> dict[str, str]:
    for column in ("qid", "query"):
        if column not in inp.columns:
            raise ValueError(f"the input frame needs a '{column}' column (has {list(inp.columns)})")
    return dict(zip(inp["qid"].astype(str), inp["query"]))


class RetrieverTransformer(pt.Transformer):
    """Any medcolbert Retriever (BM25, dense, PLAID, RRF, pipelines) as a PyTerrier retrieval transformer."""

    def __init__(self, retriever: Any, k: int = 100) -> None:
        self.retriever, self.k = retriever, k

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Queries (qid, query) in, ranked documents out."""
        return _results_frame(inp, self.retriever.retrieve(_queries(inp), k=self.k))

    def __repr__(self) -> str:
        return f"medcolbert({self.retriever.name}, k={self.k})"


def from_retriever(retriever: Any, k: int = 100) -> RetrieverTransformer:
    """Wrap a medcolbert Retriever as a PyTerrier transformer."""
    return RetrieverTransformer(retriever, k)


def ColBERTRetrieve(index: Any, model: Any = None, k: int = 10, **knobs: Any) -> RetrieverTransformer:  # noqa: N802
    """PLAID retrieval over a medcolbert index (a folder or Index; the model defaults to the index's own)."""
    from .retrievers import PlaidRetriever

    return RetrieverTransformer(PlaidRetriever.from_index(index, model, **knobs), k)


class ColBERTRerank(pt.Transformer):
    """Exact MaxSim reranking of a result frame: document texts from a 'text' column, a dict {docno: text},
    or the vectors of a medcolbert Index."""

    def __init__(self, model: Any, documents: Mapping[str, str] | Any = None, text_field: str = "text") -> None:
        self.model, self.documents, self.text_field = model, documents, text_field

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Every (qid, docno) row rescored by MaxSim; ranks recomputed per query."""
        from .retrievers import MaxSimReranker

        queries = _queries(inp)
        run: Run = {}
        for qid, docno in zip(inp["qid"].astype(str), inp["docno"].astype(str)):
            run.setdefault(qid, {})[docno] = 0.0
        documents = self.documents
        if documents is None:
            if self.text_field not in inp.columns:
                raise ValueError(f"ColBERTRerank needs a '{self.text_field}' column or documents=...")
            documents = dict(zip(inp["docno"].astype(str), inp[self.text_field]))
        depth = max(len(v) for v in run.values()) if run else 1
        reranked = MaxSimReranker(self.model, documents, depth=depth).rerank(queries, run)
        return _results_frame(inp.drop_duplicates("qid"), reranked)


class ColBERTQueryEncoder(pt.Transformer):
    """Adds a 'query_vecs' column: each query's ColBERT token vectors ([tokens, dim] numpy arrays)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """The input frame with query_vecs."""
        q = self.model.encode_queries(list(inp["query"]), show_progress=False)
        out = inp.copy()
        # Rows past a query's own vectors are zero in a batch; each query keeps only its own.
        out["query_vecs"] = [v[v.abs().sum(-1) > 0].numpy() for v in q]
        return out


__all__ = ["ColBERTRetrieve", "ColBERTRerank", "ColBERTQueryEncoder", "RetrieverTransformer", "from_retriever"]
