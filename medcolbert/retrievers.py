"""One interface for every retrieval stage: queries in, a ranked run out; stages compose into pipelines.

A `Retriever` maps {query id: text} to {query id: {doc id: score}}. `first >> reranker` is a pipeline
(itself a Retriever) in which the reranker rescores the first stage's top `depth`; `RRF(a, b)` fuses.
The experiment harness, the CLI's `--first-stage`, hard-negative mining and the PyTerrier and LangChain
adapters all take these objects, so any stage can stand wherever another one does.

    bm25 = BM25Retriever(corpus)
    pipeline = bm25 >> MaxSimReranker(model, corpus, depth=100)
    run = pipeline.retrieve(queries, k=10)

Queries are texts ({query id: text}) or `EncodedQueries` (encoded once, e.g. by a service that already holds the
model's vectors): model stages use the vectors, text stages (BM25, a single-vector model) the texts beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .evaluation.datasets import Run
from .validation import check_int

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass
class EncodedQueries:
    """Queries encoded once: their ids and texts, token vectors [n, L, dim] and, for a model with a pooled head, the
    pooled vectors [n, hidden] (None otherwise). Every stage takes them where it takes {query id: text}."""

    ids: list[str]
    texts: list[str]
    vectors: Any
    pooled: Any = None

    @classmethod
    def encode(cls, model: Any, queries: Mapping[str, str]) -> "EncodedQueries":
        """Encode {query id: text} with a ColBERT model (its pooled vectors too when it has a pooled head)."""
        from .modeling.encoder import encode_queries_pooled
        from .validation import is_blank

        ids = list(queries)
        blank = next((q for q in ids if not isinstance(queries[q], str) or is_blank(queries[q])), None)
        if blank is not None:
            which = "the query" if len(ids) == 1 else f"query '{blank}'"
            raise ValueError(f"{which} is empty (nothing but whitespace, control or format characters)")
        vectors, pooled = encode_queries_pooled(model, [queries[q] for q in ids], show_progress=False)
        return cls(ids, [queries[q] for q in ids], vectors, pooled)

    def text_map(self) -> dict[str, str]:
        """{query id: text}, for the stages that read texts."""
        return dict(zip(self.ids, self.texts))

    def row(self, qid: str) -> tuple[Any, Any]:
        """One query's (vectors, pooled vector or None)."""
        i = self._at[qid]
        return self.vectors[i], None if self.pooled is None else self.pooled[i]

    def __post_init__(self) -> None:
        import torch

        self.ids, self.texts = list(self.ids), list(self.texts)
        if len(self.ids) != len(self.texts) or len(self.ids) != len(self.vectors):
            raise ValueError(f"{len(self.ids)} ids, {len(self.texts)} texts and {len(self.vectors)} query vectors")
        seen: set[str] = set()
        for q in self.ids:   # a repeated id would silently drop one of the queries
            if q in seen:
                raise ValueError(f"EncodedQueries: query id {q!r} is given twice")
            seen.add(q)
        vectors = torch.as_tensor(self.vectors) if not isinstance(self.vectors, torch.Tensor) else self.vectors
        if len(self.ids) and (vectors.ndim != 3 or not torch.isfinite(vectors).all()):
            raise ValueError(f"EncodedQueries: vectors must be finite, [queries, tokens, dim]; got shape "
                             f"{tuple(vectors.shape)}" + ("" if vectors.ndim != 3 else " with NaN or infinity"))
        if self.pooled is not None:
            pooled = torch.as_tensor(self.pooled)
            if pooled.ndim != 2 or len(pooled) != len(self.ids) or not torch.isfinite(pooled).all():
                raise ValueError(f"EncodedQueries: pooled must be finite, [{len(self.ids)}, hidden]; got "
                                 f"{tuple(pooled.shape)}")
        self._at = {q: i for i, q in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)


Queries = Union[Mapping[str, str], EncodedQueries]


def as_texts(queries: Queries) -> Mapping[str, str]:
    """{query id: text} of either kind of queries."""
    return queries.text_map() if isinstance(queries, EncodedQueries) else queries


def in_order(ids: Sequence[str]) -> dict[str, float]:
    """A candidate list as one query's hits of a run, scored so that a reranker meets them in the given order."""
    return {d: -float(i) for i, d in enumerate(dict.fromkeys(ids))}


class Retriever:
    """A retrieval stage: `retrieve(queries, k)` -> run; `search(text, k)` -> [(doc id, score)]."""

    name = "retriever"

    def retrieve(self, queries: Queries, k: int = 100) -> Run:
        """The top k documents of every query, as {query id: {doc id: score}}."""
        raise NotImplementedError

    def search(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        """The top k documents of one query, best first."""
        hits = self.retrieve({"q": query}, k=k).get("q", {})
        return sorted(hits.items(), key=lambda kv: -kv[1])

    def __rshift__(self, reranker: "Reranker") -> "Pipeline":
        if not isinstance(reranker, Reranker):
            raise TypeError(f"'>>' takes a Reranker on its right, got {type(reranker).__name__}")
        return Pipeline(self, reranker)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Reranker:
    """A stage that rescores candidates: `rerank(queries, run, k)` -> run."""

    name = "reranker"
    depth = 100

    def rerank(self, queries: Queries, run: Run, k: int | None = None) -> Run:
        """The run's top `depth` documents of each query, rescored, best first."""
        raise NotImplementedError


class Pipeline(Retriever):
    """A first stage followed by a reranker of its top `reranker.depth` documents."""

    def __init__(self, first: Retriever, reranker: Reranker) -> None:
        self.first, self.reranker = first, reranker
        self.name = f"{first.name} >> {reranker.name}"

    def retrieve(self, queries: Queries, k: int = 100) -> Run:
        """Retrieve `depth` candidates with the first stage, rerank them, keep k."""
        check_int("k", k, 1)
        candidates = self.first.retrieve(queries, k=max(k, self.reranker.depth))
        return self.reranker.rerank(queries, candidates, k=k)


class BM25Retriever(Retriever):
    """BM25 (bm25s) over {doc id: text}."""

    name = "bm25"

    def __init__(self, corpus: Mapping[str, str], **options: Any) -> None:
        from .baselines.bm25 import BM25

        self.bm25 = BM25(**options).index(corpus)

    def retrieve(self, queries: Queries, k: int = 100) -> Run:
        """BM25's top k."""
        return self.bm25.search(as_texts(queries), k=k)


class DenseRetriever(Retriever):
    """A single-vector model over a faiss index (flat or HNSW): a DenseIndex, or a model and a corpus to index."""

    def __init__(self, index: Any = None, model: Any = None, corpus: Mapping[str, str] | None = None,
                 kind: str = "flat", name: str | None = None) -> None:
        from .baselines.dense import BiEncoder, DenseIndex

        if index is None:
            if corpus is None:
                raise ValueError("DenseRetriever needs an index, or a corpus to index")
            model = model if isinstance(model, BiEncoder) else BiEncoder.from_pretrained(model)
            index = DenseIndex(model, kind=kind).index(corpus)
        self.index = index
        self.name = name or f"dense ({index.model.name})"

    def retrieve(self, queries: Queries, k: int = 100) -> Run:
        """The nearest k documents by inner product."""
        check_int("k", k, 1)
        return self.index.search(as_texts(queries), k=k)


class PlaidRetriever(Retriever):
    """PLAID search over a medcolbert index (`Searcher`); knobs as in `Searcher.search`."""

    def __init__(self, searcher: Any, name: str = "medcolbert (PLAID)", show_progress: bool | None = False,
                 **knobs: Any) -> None:
        """knobs: Searcher.search's (ncells, ndocs, preset, where, ...); show_progress: a bar over many text queries."""
        self.searcher, self.name, self.knobs, self.show_progress = searcher, name, knobs, show_progress

    @classmethod
    def from_index(cls, index: Any, model: Any = None, config: Any = None, compiled: bool | None = None,
                   show_progress: bool | None = False, **knobs: Any) -> "PlaidRetriever":
        """A retriever over an index folder (or Index); the model defaults to the one the index names; config: a
        SearchConfig (the knobs every search starts from), compiled: as in Searcher."""
        from .indexing.index import Index
        from .search.plaid import Searcher

        index = index if isinstance(index, Index) else Index.open(index)
        if model is None:
            model = index.load_model()
        return cls(Searcher(index, model, config, compiled=compiled), show_progress=show_progress, **knobs)

    def with_knobs(self, **knobs: Any) -> "PlaidRetriever":
        """This retriever with more knobs set (a request's filter, ncells, ...), sharing its searcher."""
        return PlaidRetriever(self.searcher, self.name, self.show_progress, **{**self.knobs, **knobs})

    @property
    def mode(self) -> str:
        """plaid (late interaction), lexical (the index's BM25 postings) or hybrid (the two fused)."""
        return str(self.knobs.get("mode", "plaid"))

    def retrieve(self, queries: Queries, k: int = 100) -> Run:
        """The top k for each query, in the retriever's mode."""
        if isinstance(queries, EncodedQueries):
            return {q: {d: x for d, x, _ in hits} for q, hits in self.hits(queries, k).items()}
        return self.searcher.search_all(queries, k=k, show_progress=self.show_progress, mode=self.mode,
                                        **self._plaid_knobs)

    @property
    def _plaid_knobs(self) -> dict:
        return {key: v for key, v in self.knobs.items() if key != "mode"}

    def hits(self, queries: Queries, k: int = 100) -> dict[str, list[tuple[str, float, str]]]:
        """Each query's top k, best first, as (document id, score, stored id that matched): with split documents
        the third is the best passage, which `searcher.documents` turns into the snippet."""
        if self.mode != "plaid":
            from .search.plaid import MODES

            if self.mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
            texts = as_texts(queries)
            ids = list(texts)
            rows = [queries.row(q) for q in ids] if isinstance(queries, EncodedQueries) else None
            got = self.searcher.mode_hits_many([texts[q] for q in ids], k, self.mode, encoded=rows,
                                               show_progress=bool(self.show_progress), **self._plaid_knobs)
            return dict(zip(ids, got))
        if not isinstance(queries, EncodedQueries):
            queries = EncodedQueries.encode(self.searcher.model, queries)
        _check_encoded_width(queries, self.searcher)
        out: dict[str, list[tuple[str, float, str]]] = {}
        for q in queries.ids:
            vectors, pooled = queries.row(q)
            out[q] = self.searcher.search_hits(vectors, k=k, q_pooled=pooled, **self._plaid_knobs)
        return out


def _check_encoded_width(queries: EncodedQueries, searcher: Any) -> None:
    """Refuse encoded queries whose widths do not fit the index (a sharded searcher: its first shard's)."""
    index = getattr(searcher, "index", None)
    if index is None and getattr(searcher, "searchers", None):
        index = searcher.searchers[0].index   # every shard shares one codec
    if index is None or not len(queries):
        return
    if queries.vectors.shape[-1] != index.codec.dim:
        raise ValueError(f"EncodedQueries hold {queries.vectors.shape[-1]}-dim vectors but the index holds "
                         f"{index.codec.dim}-dim ones")
    if queries.pooled is not None and index.pooled is not None and queries.pooled.shape[-1] != index.pooled.shape[-1]:
        raise ValueError(f"EncodedQueries' pooled vectors are {queries.pooled.shape[-1]}-dim but the index's are "
                         f"{index.pooled.shape[-1]}-dim")


class CosineReranker(Reranker):
    """Single-vector reranking: each candidate rescored by the cosine of a BiEncoder's query and document vectors."""

    def __init__(self, model: Any, documents: Mapping[str, str], depth: int = 100, known: dict | None = None,
                 name: str | None = None) -> None:
        """known: {text: vector} of documents already encoded by this model (filled as documents are encoded)."""
        self.model, self.documents = model, documents
        self.depth = check_int("depth", depth, 1)
        self.known = {} if known is None else known
        self.name = name or f"cosine ({getattr(model, 'name', 'single-vector')})"

    def rerank(self, queries: Queries, run: Run, k: int | None = None) -> Run:
        """Rescore the top `depth` documents of each query by cosine; keep k (default depth)."""
        import torch

        queries = as_texts(queries)   # a single-vector model encodes the texts (of EncodedQueries too)
        tops = {q: sorted(run.get(q, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:self.depth] for q in queries}
        texts = list(dict.fromkeys(self.documents[d] for hits in tops.values() for d, _ in hits))
        missing = [t for t in texts if t not in self.known]
        if missing:
            vectors = self.model.encode(missing, is_query=False, show_progress=len(queries) > 1)
            self.known.update(zip(missing, vectors))
        qids = list(queries)
        qv = self.model.encode([queries[q] for q in qids], is_query=True, show_progress=False)
        out: Run = {}
        for i, q in enumerate(qids):
            if not tops[q]:
                out[q] = {}
                continue
            dv = torch.stack([torch.as_tensor(self.known[self.documents[d]]) for d, _ in tops[q]]).float()
            scores = (dv @ torch.as_tensor(qv[i]).float()).tolist()
            ranked = sorted(zip((d for d, _ in tops[q]), scores), key=lambda kv: (-kv[1], kv[0]))
            out[q] = dict(ranked[:k or self.depth])
        return out


class MaxSimReranker(Reranker):
    """Exact MaxSim reranking with a ColBERT model; documents are texts ({id: text}, vectors cached) or an index."""

    def __init__(self, model: Any, documents: Mapping[str, str] | Any, depth: int = 100, cache: Any = None,
                 name: str | None = None, split_documents: bool = False, show_progress: bool | None = False,
                 where: Any = None, batch_size: int = 32) -> None:
        """split_documents: score texts longer than the model's doc_maxlen by their best passage (not truncated);
        show_progress: bars for document encoding and scoring (batch runs; off by default for per-query use);
        where: with an index, rank only candidates whose metadata match this filter (filters.py)."""
        from .indexing.index import Index

        if where is not None and not isinstance(documents, Index):
            raise ValueError("where filters an index's documents by their metadata: pass an Index as documents")
        self.where = where
        self.model, self.documents = model, documents
        self.split_documents, self.show_progress = split_documents, show_progress
        self.depth, self.batch_size = check_int("depth", depth, 1), check_int("batch_size", batch_size, 1)
        self.cache = cache
        self.name = name or f"MaxSim ({getattr(model, 'name', 'colbert')})"

    def explain(self, query: str, doc_id: str, score: float | None = None) -> dict:
        """Why a document scores as it does for a query: its matched tokens, spans and shares (explain.py)."""
        from .explain import explain_document, explain_text
        from .indexing.index import Index

        if isinstance(self.documents, Index):
            return explain_document(self.documents, self.model, query, doc_id, score)
        if doc_id not in self.documents:
            raise KeyError(f"document id {doc_id!r} is not among the reranker's documents")
        return {**explain_text(self.model, query, self.documents[doc_id], score), "id": doc_id}

    def rerank(self, queries: Queries, run: Run, k: int | None = None) -> Run:
        """Rescore the top `depth` documents of each query by exact MaxSim; keep k (default depth)."""
        from .indexing.index import Index
        from .search.rerank import rerank_run

        if isinstance(self.documents, Index):
            # where: a filter, or the boolean mask Index.matching made of one (a service checks it first).
            allowed = self.where if isinstance(self.where, np.ndarray) else self.documents.matching(self.where)
            return _rerank_from_index(self.model, self.documents, queries, run, self.depth, k, allowed)
        given = (queries.vectors, queries.pooled, queries.ids) if isinstance(queries, EncodedQueries) else None
        splitter = None
        if self.split_documents:
            from .passages import PassageSplitter

            splitter = PassageSplitter.for_model(self.model)
        return rerank_run(self.model, as_texts(queries), run, self.documents, depth=self.depth, k=k, cache=self.cache,
                          batch_size=self.batch_size,
                          # One query (a timed search) never draws bars: they would cost time and flood the log.
                          show_progress=self.show_progress if len(queries) > 1 else False, splitter=splitter,
                          encoded_queries=given)


def _rerank_from_index(model: Any, index: Any, queries: Queries, run: Run, depth: int,
                       k: int | None, allowed: Any = None) -> Run:
    """Rerank with the vectors an index stores (decompressed), no document encoding."""
    if not isinstance(queries, EncodedQueries):
        queries = EncodedQueries.encode(model, {q: queries[q] for q in run})
    out: Run = {}
    for qid in run:
        vectors, pooled = queries.row(qid)
        out[qid] = dict(rerank_encoded_from_index(index, vectors, run[qid], depth, k, pooled, model.config, allowed))
    return out


def rerank_encoded_from_index(index: Any, q: Any, hits: Mapping[str, float], depth: int, k: int | None = None,
                              q_pooled: Any = None, dense_weight: float | ModelConfig = 0.0,
                              allowed: Any = None) -> list[tuple[str, float]]:
    """An encoded query's top `depth` hits rescored by MaxSim with the index's stored vectors, best first.

    Hits may name documents or passages of a split index (a passage stands for its document, which is then
    scored by its best passage); ids the index does not hold are dropped, and so are those outside the boolean
    mask `allowed` (a filter's matches) when given. With q_pooled (a pooled-head model's query vector), each
    score gains dense_weight (a number, or a model config whose pooled_weight sets it by the query's length) x
    (query vectors) x cosine with the stored pooled ones."""
    from .passages import parent_of
    from .scoring import score_candidates

    ranked = sorted(hits.items(), key=lambda kv: -kv[1])
    # passages_of: a document's own position, or every passage of a split document (scored by the best).
    found = [(d, index.passages_of(d)) for d in list(dict.fromkeys(parent_of(u) for u, _ in ranked))]
    if allowed is not None:
        found = [(d, u) for d, u in found if u and allowed[u].any()]
    found = found[:depth]
    cands, units = [d for d, u in found if u], [u for _, u in found if u]
    positions = [p for u in units for p in u]
    if not cands:
        return []
    scores = score_candidates(q, index.document_vectors(positions), dense_weight, q_pooled,
                              index.pooled_vectors(positions) if q_pooled is not None else None,
                              units_per_document=[len(u) for u in units])
    return sorted(zip(cands, scores.tolist()), key=lambda kv: -kv[1])[: k or depth]


class RRF(Retriever):
    """Reciprocal rank fusion of several retrievers (each asked for `depth` documents)."""

    def __init__(self, *retrievers: Retriever, k: int = 60, depth: int = 100,
                 weights: Sequence[float] | None = None) -> None:
        if not retrievers:
            raise ValueError("RRF needs at least one retriever")
        self.retrievers, self.k, self.depth, self.weights = retrievers, k, check_int("depth", depth, 1), weights
        self.name = "RRF(" + "; ".join(r.name for r in retrievers) + ")"

    def retrieve(self, queries: Queries, k: int = 100) -> Run:
        """Fused top k."""
        from .search.fusion import rrf

        check_int("k", k, 1)
        runs = [r.retrieve(queries, k=max(k, self.depth)) for r in self.retrievers]
        return rrf(runs, k=self.k, depth=k, weights=self.weights)


class FunctionRetriever(Retriever):
    """Any callable (queries, k) -> run as a Retriever (for stages medcolbert does not ship)."""

    def __init__(self, fn: Callable[[Mapping[str, str], int], Run], name: str = "custom") -> None:
        self.fn, self.name = fn, name

    def retrieve(self, queries: Queries, k: int = 100) -> Run:
        """Whatever the function returns, checked to be finite."""
        import math

        run = self.fn(queries, k)
        for qid, hits in run.items():
            if any(not math.isfinite(v) for v in hits.values()):
                raise ValueError(f"{self.name}: query '{qid}' got a non-finite score")
        return run


# First stages by name, for the CLI's --first-stage NAME[:ARG] and for configuration files; a factory takes
# the corpus {id: text} and the optional argument after the colon.
_REGISTRY: dict[str, Callable[[Mapping[str, str], str | None], Retriever]] = {}


def register_retriever(name: str, factory: Callable[[Mapping[str, str], str | None], Retriever]) -> None:
    """Make a first stage available by name (e.g. to `medcolbert rerank --first-stage NAME`)."""
    _REGISTRY[name] = factory


def registered_retrievers() -> list[str]:
    """The names `make_retriever` knows."""
    return sorted(_REGISTRY)


def check_retriever_spec(spec: str) -> None:
    """Refuse 'NAME[:ARG]' whose NAME is not registered, naming the registered ones."""
    name = spec.partition(":")[0]
    if name not in _REGISTRY:
        raise ValueError(f"unknown first stage {name!r}; registered: {', '.join(registered_retrievers())}")


def make_retriever(spec: str, corpus: Mapping[str, str]) -> Retriever:
    """A first stage from 'NAME' or 'NAME:ARG' (e.g. 'bm25', 'dense', 'dense:checkpoints/dense-minilm-v1')."""
    check_retriever_spec(spec)
    name, _, arg = spec.partition(":")
    return _REGISTRY[name](corpus, arg or None)


register_retriever("bm25", lambda corpus, arg: BM25Retriever(corpus))
register_retriever("dense", lambda corpus, arg: DenseRetriever(model=arg or "packaged:all-MiniLM-L6-v2", corpus=corpus))


__all__ = ["Retriever", "Reranker", "Pipeline", "BM25Retriever", "DenseRetriever", "PlaidRetriever",
           "MaxSimReranker", "RRF", "FunctionRetriever", "in_order", "register_retriever", "registered_retrievers", "make_retriever",
           "check_retriever_spec", "rerank_encoded_from_index"]
