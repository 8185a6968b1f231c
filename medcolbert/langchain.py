"""LangChain: a retriever over a medcolbert index and a document compressor that reranks by exact MaxSim.

Needs `langchain-core` (pip install 'medcolbert[langchain]').

    from medcolbert.langchain import MedColbertRetriever, MaxSimCompressor
    retriever = MedColbertRetriever.from_index("indexes/medquad", documents=texts, k=5)
    docs = retriever.invoke("can statins cause muscle pain?")      # Documents with id, score, text
    compressor = MaxSimCompressor(model=model, top_n=3)              # rerank any retriever's Documents
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("medcolbert.langchain needs langchain-core: pip install 'medcolbert[langchain]'") from exc


RETRIEVAL_FIELDS = ("id", "score", "rank")


class MedColbertRetriever(BaseRetriever):
    """PLAID search as a LangChain retriever; each Document carries the id and score in its metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    searcher: Any
    documents: Mapping[str, str] | None = None   # texts by id (page_content); default: the index's stored texts
                                                 # (or the id, for an index that stores none)
    metadata: Mapping[str, dict] | None = None   # extra metadata by id
    k: int = 10
    # Only documents whose index metadata match: "source in {a, b} and year >= 2015" or {"source": ["a", "b"]};
    # `invoke(query, filter=...)` sets one for a single call.
    filter: str | dict | None = None
    mode: str = "plaid"   # plaid, lexical (the index's BM25) or hybrid (the two fused by reciprocal rank)

    @classmethod
    def from_index(cls, index: Any, model: Any = None, **kwargs: Any) -> "MedColbertRetriever":
        """A retriever over an index folder (the model defaults to the one the index names)."""
        from .retrievers import PlaidRetriever

        return cls(searcher=PlaidRetriever.from_index(index, model).searcher, **kwargs)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                filter: str | dict | None = None) -> list[Document]:  # noqa: A002 - LangChain's name
        from .retrievers import PlaidRetriever

        where = filter if filter is not None else self.filter
        mode = {"mode": self.mode} if self.mode != "plaid" else {}
        hits = PlaidRetriever(self.searcher, where=where, **mode).hits({"q": query}, k=self.k)["q"]
        # Without texts given, an index that stores its documents supplies their texts and metadata (a split
        # document's best passage as its text).
        stored = self.documents is None and self.searcher.index.has_documents
        rows = self.searcher.documents(hits) if stored else [{"id": d, "score": x} for d, x, _ in hits]
        out = []
        for rank, hit in enumerate(rows):
            doc_id, score = hit["id"], hit["score"]
            stored_meta = {**(hit.get("metadata") or {}), **dict((self.metadata or {}).get(doc_id, {}))}
            # The retrieval's own fields always mean the retrieval; a stored field of the same name is kept
            # apart as stored_<name> rather than overwriting (or being overwritten by) them.
            meta = {(f"stored_{k}" if k in RETRIEVAL_FIELDS else k): v for k, v in stored_meta.items()}
            meta.update(id=doc_id, score=float(score), rank=rank)
            text = hit["text"] if stored else (self.documents[doc_id] if self.documents is not None
                                               and doc_id in self.documents else doc_id)
            out.append(Document(page_content=text, metadata=meta, id=str(doc_id)))
        return out


class MaxSimCompressor(BaseDocumentCompressor):
    """Reranks Documents by exact MaxSim with the query and keeps the top_n; adds 'relevance_score' metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model: Any
    top_n: int = 5

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Any = None) -> Sequence[Document]:
        """The top_n documents by MaxSim, best first."""
        from .retrievers import MaxSimReranker, in_order

        if not documents:
            return []
        texts = {str(i): d.page_content for i, d in enumerate(documents)}
        ranked = MaxSimReranker(self.model, texts, depth=len(texts)).rerank({"q": query}, {"q": in_order(list(texts))},
                                                                            k=self.top_n)["q"]
        return [Document(page_content=documents[int(i)].page_content, id=documents[int(i)].id,
                         metadata={**documents[int(i)].metadata, "relevance_score": score}) for i, score in ranked.items()]


__all__ = ["MedColbertRetriever", "MaxSimCompressor"]
