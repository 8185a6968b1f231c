"""Hard-negative mining: retrieve candidates per query, drop positives and their near-duplicates, sample a rank window."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from tqdm.auto import tqdm

from .data import Triplet

# What mining runs: query texts -> ranked document ids, best first (a Retriever stage is wrapped into one).
RankFn = Callable[[Sequence[str], int], list[list[str]]]
_WORD = re.compile(r"\w+")


def as_mining_retriever(stage) -> RankFn:  # type: ignore[no-untyped-def]
    """A medcolbert.retrievers.Retriever (or a plain callable) as the texts -> ranked ids function mining uses."""
    from ..retrievers import Retriever as Stage

    if not isinstance(stage, Stage):
        return stage

    def retrieve(queries: Sequence[str], depth: int) -> list[list[str]]:
        run = stage.retrieve({str(i): q for i, q in enumerate(queries)}, k=depth)
        return [[d for d, _ in sorted(run.get(str(i), {}).items(), key=lambda kv: -kv[1])] for i in range(len(queries))]

    return retrieve


def plaid_stage(model, corpus: Mapping[str, str], index_path: str):  # type: ignore[no-untyped-def]
    """A PlaidRetriever over {doc id: text}: the index at index_path, built there first when it is not yet."""
    from pathlib import Path

    from ..indexing.index import Index
    from ..retrievers import PlaidRetriever

    index = Index.open(index_path) if (Path(index_path) / "manifest.json").is_file() else Index.build(index_path, model, corpus)
    return PlaidRetriever.from_index(index, model)


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Word-set overlap of two texts, 0..1."""
    return len(a & b) / max(1, len(a | b))


def mine_negatives(triplets: Sequence[Triplet], corpus: Mapping[str, str], retriever: object = None,
                   n_negatives: int = 8, window: tuple[int, int] = (0, 50), near_duplicate: float = 0.7,
                   seed: int = 0, batch_size: int = 2048, show_progress: bool | None = None) -> list[Triplet]:
    """Triplets with up to n_negatives hard negatives each, sampled from ranks [window) of the retriever's list.

    retriever: any medcolbert.retrievers.Retriever (default: BM25 over the corpus), or a texts -> ranked ids callable.

    Candidates that are a positive, or whose word overlap (Jaccard) with a positive reaches `near_duplicate`,
    are dropped before the window is applied: they are the false negatives mining must not create.
    Negatives the triplet already has are kept first.
    """
    lo, hi = window
    if not 0 <= lo < hi:
        raise ValueError(f"window must be 0 <= start < end, got {window}")
    if retriever is None:
        from ..retrievers import BM25Retriever

        retriever = BM25Retriever(corpus)
    retriever = as_mining_retriever(retriever)
    words: dict[str, frozenset[str]] = {}
    rng = random.Random(seed)
    out: list[Triplet] = []
    show = len(triplets) > batch_size if show_progress is None else show_progress
    bar = tqdm(total=len(triplets), desc="Mining negatives", unit="query", disable=not show)
    for start in range(0, len(triplets), batch_size):
        part = triplets[start:start + batch_size]
        ranked = retriever([t.query for t in part], hi + 10)
        for t, hits in zip(part, ranked):
            pos_words = [_words(p) for p in t.pos]
            pos_set = set(t.pos)
            kept: list[str] = []
            for doc_id in hits:
                text = corpus[doc_id]
                if text in pos_set:
                    continue
                if doc_id not in words:
                    words[doc_id] = _words(text)
                if any(jaccard(words[doc_id], pw) >= near_duplicate for pw in pos_words):
                    continue
                kept.append(text)
                if len(kept) >= hi:
                    break
            pool = [x for x in kept[lo:hi] if x not in t.neg]
            need = max(0, n_negatives - len(t.neg))
            sampled = rng.sample(pool, min(need, len(pool)))
            out.append(replace(t, neg=tuple(t.neg) + tuple(sampled), neg_scores=None))
        bar.update(len(part))
    bar.close()
    return out
