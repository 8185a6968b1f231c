"""The lexical side of an index: BM25 postings stored beside PLAID's arrays, one set per segment.

Each segment that keeps its documents also keeps their terms (bm25s' tokenizer: English stopwords removed, Snowball
stems) as plain arrays: the sorted vocabulary (packed UTF-8), a pointer per term into the postings, the postings'
document positions and term frequencies, and every document's length in terms. Search reads them memory-mapped.
BM25's statistics (live documents, their mean length, each term's document frequency among them) are computed at
query time over the live documents of every segment, so that adds, deletes and compactions answer exactly as a
fresh build over the same documents would, and a `where` filter restricts which documents are returned, not the
statistics (as bm25s over the collection, then filtered). Scores are bm25s' "lucene" variant, query terms counted
as often as they occur, as bm25s does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LEXICAL_FILES = ("lex_vocab", "lex_vocab_offsets", "lex_ptr", "lex_docs", "lex_tf", "lex_doclens")
TOKENIZER = "bm25s-english-stem"
K1, B = 1.5, 0.75


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """bm25s' tokens of each text (English stopwords out, Snowball stems): the same as BM25Retriever's."""
    import bm25s
    import Stemmer

    if not texts:
        return []
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                          show_progress=False)


def postings(texts: Sequence[str], batch: int = 4096) -> dict[str, np.ndarray]:
    """The lexical arrays of some documents (positions are their order here).

    Texts are read and tokenized a batch at a time and each batch's (term, document, frequency) triples kept as
    int32 arrays (12 bytes a posting), then sorted by term once: memory grows with the postings, not with Python
    objects per posting, and `texts` may be a lazily decoded sequence (storage.StoredTexts)."""
    from .packing import pack_strings

    vocab: dict[str, int] = {}
    terms, docs, tfs = [], [], []
    doclens = np.zeros(len(texts), dtype=np.int32)
    for start in range(0, len(texts), batch):
        b_terms: list[int] = []
        b_docs: list[int] = []
        b_tfs: list[int] = []
        for offset, tokens in enumerate(tokenize(texts[start:start + batch])):
            doc = start + offset
            doclens[doc] = len(tokens)
            counts: dict[str, int] = {}
            for t in tokens:
                counts[t] = counts.get(t, 0) + 1
            for t, n in counts.items():
                b_terms.append(vocab.setdefault(t, len(vocab)))
                b_docs.append(doc)
                b_tfs.append(n)
        terms.append(np.array(b_terms, dtype=np.int32))
        docs.append(np.array(b_docs, dtype=np.int32))
        tfs.append(np.array(b_tfs, dtype=np.int32))
    words = sorted(vocab)
    rank = np.empty(len(vocab), dtype=np.int32)
    rank[np.fromiter((vocab[w] for w in words), dtype=np.int64, count=len(words))] = np.arange(len(words))
    key = rank[np.concatenate(terms)] if terms else np.zeros(0, np.int32)
    # Stable: within a term, postings stay in document order.
    order = np.argsort(key, kind="stable")
    ptr = np.zeros(len(words) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(key, minlength=len(words)))
    packed, offsets = pack_strings([w.encode("utf-8") for w in words])
    return {"lex_vocab": packed, "lex_vocab_offsets": offsets, "lex_ptr": ptr,
            "lex_docs": (np.concatenate(docs) if docs else np.zeros(0, np.int32))[order],
            "lex_tf": (np.concatenate(tfs) if tfs else np.zeros(0, np.int32))[order], "lex_doclens": doclens}


def write_postings(root: Path, rel: str, texts: Sequence[str]) -> dict[str, dict]:
    """Write a segment's lexical arrays under root/rel; returns their file entries."""
    from .indexing.storage import save_array

    return {f"{rel}/{name}.npy": save_array(root / rel / f"{name}.npy", array)
            for name, array in postings(texts).items()}


class LexicalSegment:
    """One segment's postings, memory-mapped; the vocabulary's term -> row map is made on first use."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.doclens = arrays["lex_doclens"]
        self._terms: dict[str, int] | None = None

    def _vocab(self) -> dict[str, int]:
        if self._terms is None:
            raw, o = bytes(self.arrays["lex_vocab"]), self.arrays["lex_vocab_offsets"]
            self._terms = {raw[o[i]:o[i + 1]].decode("utf-8"): i for i in range(len(o) - 1)}
        return self._terms

    def term(self, t: str) -> tuple[np.ndarray, np.ndarray]:
        """(document positions in the segment, term frequencies) of a term; empty where the segment lacks it."""
        row = self._vocab().get(t)
        if row is None:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        ptr = self.arrays["lex_ptr"]
        a, b = int(ptr[row]), int(ptr[row + 1])
        return np.asarray(self.arrays["lex_docs"][a:b]), np.asarray(self.arrays["lex_tf"][a:b])


class Collection:
    """An index's segments' postings with the statistics BM25 takes from its live documents, computed once per
    commit (an Index makes one at load) rather than at every query."""

    def __init__(self, segments: Sequence[LexicalSegment], starts: Sequence[int], live: np.ndarray) -> None:
        self.segments, self.starts, self.live = list(segments), list(starts), live
        self.doclens = (np.concatenate([np.asarray(s.doclens, dtype=np.float64) for s in segments]) if segments
                        else np.zeros(0))
        self.n_live = int(live.sum())
        self.avgdl = float(self.doclens[live].sum()) / self.n_live if self.n_live else 0.0

    def term(self, t: str) -> tuple[np.ndarray, np.ndarray]:
        """(index positions, term frequencies) of a term over every segment, deleted documents included."""
        found = [(s.term(t), start) for s, start in zip(self.segments, self.starts)]
        pos = np.concatenate([docs.astype(np.int64) + start for (docs, _), start in found])
        return pos, np.concatenate([tf for (_, tf), _ in found]).astype(np.float64)


def _term_scores(collection: Collection, t: str, allowed: np.ndarray | None, k1: float,
                 b: float) -> tuple[np.ndarray, np.ndarray]:
    """(index positions, BM25 contributions) of one term over the live documents (and, given `allowed`, only
    those), with its document frequency among every live document."""
    pos, tf = collection.term(t)
    keep = collection.live[pos]
    pos, tf = pos[keep], tf[keep]
    if collection.n_live == 0 or len(pos) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    idf = math.log(1 + (collection.n_live - len(pos) + 0.5) / (len(pos) + 0.5))
    score = idf * tf / (k1 * ((1 - b) + b * collection.doclens[pos] / collection.avgdl) + tf)
    if allowed is not None:
        ok = allowed[pos]
        pos, score = pos[ok], score[ok]
    return pos, score


def bm25(collection: Collection, query: str, allowed: np.ndarray | None = None, k1: float = K1,
         b: float = B) -> tuple[np.ndarray, np.ndarray]:
    """(index positions, BM25 scores) of the live documents (and, given `allowed`, only those) holding any term of
    the query, unsorted; statistics over every live document."""
    parts = [_term_scores(collection, t, allowed, k1, b) for t in tokenize([query])[0]]
    parts = [(pos, score) for pos, score in parts if len(pos)]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    unique, inverse = np.unique(np.concatenate([pos for pos, _ in parts]), return_inverse=True)
    return unique, np.bincount(inverse, weights=np.concatenate([score for _, score in parts]))


def bm25_many(collection: Collection, queries: Sequence[str], allowed: np.ndarray | None = None, k1: float = K1,
              b: float = B):  # type: ignore[no-untyped-def]
    """BM25 scores of many queries at once, as a scipy CSR matrix [queries, index positions] (bm25's values).

    The queries are tokenized in one call and each distinct term's postings read and weighted once for the whole
    batch; the scores are then one sparse product (query term counts x term weights), not a loop per query."""
    from scipy import sparse

    tokens = tokenize(list(queries))
    terms = sorted({t for toks in tokens for t in toks})
    column = {t: i for i, t in enumerate(terms)}
    rows, cols, vals = [], [], []
    for i, t in enumerate(terms):
        pos, score = _term_scores(collection, t, allowed, k1, b)
        rows.append(np.full(len(pos), i, dtype=np.int64))
        cols.append(pos)
        vals.append(score)
    weights = sparse.csr_matrix((np.concatenate(vals) if vals else np.zeros(0),
                                 (np.concatenate(rows) if rows else np.zeros(0, np.int64),
                                  np.concatenate(cols) if cols else np.zeros(0, np.int64))),
                                shape=(len(terms), len(collection.live)))
    # Query term counts: a term twice in a query counts twice, as in bm25 (and bm25s).
    q_rows = np.fromiter((r for r, toks in enumerate(tokens) for _ in toks), dtype=np.int64)
    q_cols = np.fromiter((column[t] for toks in tokens for t in toks), dtype=np.int64, count=len(q_rows))
    counts = sparse.csr_matrix((np.ones(len(q_rows)), (q_rows, q_cols)), shape=(len(tokens), len(terms)))
    return (counts @ weights).tocsr()


def top_k_rows(scores, k: int) -> list[list[tuple[int, float]]]:  # type: ignore[no-untyped-def]
    """top_k of each row of a CSR score matrix (bm25_many's)."""
    out = []
    for r in range(scores.shape[0]):
        a, z = scores.indptr[r], scores.indptr[r + 1]
        out.append(top_k(scores.indices[a:z].astype(np.int64), scores.data[a:z], k))
    return out


def top_k(positions: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k best (position, score) pairs, best first (ties by position)."""
    if len(positions) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        positions, scores = positions[part], scores[part]
    order = np.lexsort((positions, -scores))
    return [(int(positions[i]), float(scores[i])) for i in order]
