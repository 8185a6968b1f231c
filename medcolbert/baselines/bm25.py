"""BM25 over a corpus with bm25s: English stemming and stopwords, the first stage for reranking."""

from __future__ import annotations

from collections.abc import Mapping

import bm25s
import numpy as np
import Stemmer

from ..evaluation.datasets import Run
from ..validation import check_int


# How text splits into terms. default: bm25s' (words of two or more word characters), which splits "COVID-19" into
# "covid" and "19" and drops the "5" of "5-FU" and the "6" of "IL-6". medical: a word keeps its hyphen-, slash- or
# dot-joined parts ("covid-19", "5-fu", "il-6", "b12", "hba1c") and single characters count (stopwords still go).
TOKEN_PATTERNS = {"default": r"(?u)\b\w\w+\b", "medical": r"(?u)\b\w+(?:[-/.]\w+)*\b"}


class BM25:
    """A bm25s index over (doc id, text) pairs; `search` returns a run dict."""

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene", language: str = "english",
                 tokenizer: str = "default") -> None:
        if tokenizer not in TOKEN_PATTERNS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKEN_PATTERNS)}, got {tokenizer!r}")
        self.k1, self.b, self.method = k1, b, method
        self.token_pattern = TOKEN_PATTERNS[tokenizer]
        self.stemmer = Stemmer.Stemmer(language)
        self.stopwords = "en" if language == "english" else None
        self.doc_ids: list[str] = []
        self._retriever: bm25s.BM25 | None = None

    def index(self, documents: Mapping[str, str], show_progress: bool = False) -> "BM25":
        """Index documents given as {doc id: text}."""
        if not isinstance(documents, Mapping):
            raise TypeError(f"BM25 indexes a dict {{doc id: text}}, got {type(documents).__name__}")
        if not documents:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        bad = next((d for d, t in documents.items() if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"BM25: the text of document {bad!r} is {type(documents[bad]).__name__}, expected str")
        self.doc_ids = list(documents)
        tokens = bm25s.tokenize(list(documents.values()), stopwords=self.stopwords, stemmer=self.stemmer,
                                token_pattern=self.token_pattern, show_progress=show_progress)
        self._retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        self._retriever.index(tokens, show_progress=show_progress)
        return self

    def search(self, queries: Mapping[str, str], k: int = 100, show_progress: bool = False) -> Run:
        """Top-k documents of each query, as {query id: {doc id: score}}."""
        if self._retriever is None:
            raise RuntimeError("BM25.search called before index()")
        check_int("k", k, 1)
        if not queries:
            return {}
        k = min(k, len(self.doc_ids))
        qids = list(queries)
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords=self.stopwords, stemmer=self.stemmer,
                                token_pattern=self.token_pattern, show_progress=False)
        docs, scores = self._retriever.retrieve(tokens, k=k, show_progress=show_progress, n_threads=1)
        run: Run = {}
        for row, qid in enumerate(qids):
            hits = {}
            for idx, score in zip(np.asarray(docs[row]), np.asarray(scores[row])):
                # bm25s pads with zero-score hits when fewer than k documents share a term; drop those.
                if score > 0:
                    hits[self.doc_ids[int(idx)]] = float(score)
            run[qid] = hits
        return run
