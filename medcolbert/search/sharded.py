"""Search over several indexes at once (shards of one collection, or collections kept apart): the query is encoded
once, every shard is searched in its own thread, and the per-shard top k are merged by score.

MaxSim scores of one model are comparable across indexes, so the merged top k is the top k of the union
whenever each shard returns its own top k exactly (exact search); with PLAID each shard prunes on its own
centroids. On one machine the shards share its cores; across machines each shard runs where its index
lives and only the top k travel, so a collection split into S shards is searched in about the time of its
largest shard plus the merge.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import MedColbertError
from ..evaluation.datasets import Run
from ..indexing.index import Index
from ..machine import THREADS
from ..passages import parent_of
from ..validation import is_blank
from .plaid import SearchConfig, Searcher


def merge_top_k(parts: Sequence[Sequence[Any]], k: int) -> list[Any]:
    """The k best hits of several shards' ranked lists: (doc id, score) pairs or {"score": ...} dicts."""
    # Ties keep shard order, then each shard's own order: the merge is deterministic.
    entries = [(hit, s, r) for s, hits in enumerate(parts) for r, hit in enumerate(hits)]
    score = (lambda hit: hit["score"]) if entries and isinstance(entries[0][0], dict) else (lambda hit: hit[1])
    best = heapq.nsmallest(k, entries, key=lambda e: (-score(e[0]), e[1], e[2]))
    return [hit for hit, _, _ in best]


def union_kinds(parts: Iterable[Mapping[str, set[str]]]) -> dict[str, set[str]]:
    """Several indexes' {metadata field: kinds of value} as one."""
    kinds: dict[str, set[str]] = {}
    for part in parts:
        for field, held in part.items():
            kinds.setdefault(field, set()).update(held)
    return kinds


def search_all_encoded(searcher: Any, queries: Mapping[str, str] | Sequence[str], k: int,
                       show_progress: bool | None, where: Any, mode: str, **knobs: object) -> Run:
    """A sharded searcher's search_all: every query encoded in one batch by its model, then searched one at a time
    through its search_hits (PLAID only: BM25's statistics are the whole collection's, shards keep their own)."""
    from ..modeling.encoder import encode_queries_pooled

    if mode != "plaid":
        raise ValueError(f"a sharded search runs mode plaid only, not {mode!r}")
    qids = list(queries) if isinstance(queries, Mapping) else [str(i) for i in range(len(queries))]
    texts = [queries[q] for q in qids] if isinstance(queries, Mapping) else list(queries)
    Q, Q_pooled = encode_queries_pooled(searcher.model, texts, show_progress=show_progress)
    show = len(qids) > 1 if show_progress is None else show_progress
    return {qid: {d: x for d, x, _ in searcher.search_hits(Q[i], k, None if Q_pooled is None else Q_pooled[i], where,
                                                           **knobs)}
            for i, qid in enumerate(tqdm(qids, desc="Searching", unit="query", disable=not show))}


class ShardedSearcher:
    """`search(query, k)` over several indexes searched with one model, as if they were one; it stands wherever a
    Searcher does, `PlaidRetriever(ShardedSearcher(...))` included."""

    def __init__(self, indexes: Sequence[Index | str | Path], model: Any, config: SearchConfig | None = None,
                 threads: int | None = None, routed: bool = False) -> None:
        """indexes: folders or opened indexes, each built with `model`; their document ids must not overlap.
        routed: the indexes are a shard set's shards in order (from_set), so writes go to the shard owning each id."""
        if not indexes:
            raise ValueError("ShardedSearcher needs at least one index")
        self.routed = routed
        self.searchers = [Searcher(ix, model, config) for ix in indexes]
        self.model = model
        owner: dict[str, int] = {}
        for s, searcher in enumerate(self.searchers):
            index = searcher.index
            ids = index._passage_groups().keys() if index.passages else index.position.keys()
            for doc_id in ids:
                if doc_id in owner:
                    raise MedColbertError(f"document id {doc_id!r} is in shard {owner[doc_id]} ({self.searchers[owner[doc_id]].index.path}) "
                                          f"and shard {s} ({index.path}); shards must hold disjoint documents")
                owner[doc_id] = s
        self.owner = owner
        self._pool = ThreadPoolExecutor(max_workers=threads or len(self.searchers), thread_name_prefix="shard")

    def _each(self, search: Callable[[Searcher], list]) -> list[list]:
        """search(shard) for every shard on the pool's threads, as one call at the thread count machine.THREADS
        gives (the shards' own searches run at that setting rather than each choosing and changing it)."""
        def fixed(shard: Searcher) -> list:
            with THREADS.fixed():
                return search(shard)

        with THREADS.run():
            return list(self._pool.map(fixed, self.searchers))

    def __len__(self) -> int:
        return sum(len(s.index) for s in self.searchers)

    def search(self, query: str, k: int = 10, return_documents: bool = False,
               **knobs: object) -> list[tuple[str, float]] | list[dict]:
        """The top-k documents of all shards for one query, best first (as `Searcher.search`)."""
        if not isinstance(query, str) or is_blank(query):
            raise ValueError("the query is empty (nothing but whitespace, control or format characters)")
        from ..modeling.encoder import encode_queries_pooled

        q, q_pooled = encode_queries_pooled(self.model, [query], show_progress=False)
        return self.search_encoded(q[0], k, return_documents, q_pooled=None if q_pooled is None else q_pooled[0], **knobs)

    def search_encoded(self, q: Any, k: int = 10, return_documents: bool = False, q_pooled: Any = None,
                       **knobs: object) -> list[tuple[str, float]] | list[dict]:
        """`search` for a query encoded already ([Lq, dim]; with a pooled head also its pooled vector)."""
        where = knobs.pop("where", None)
        hits = self.search_hits(q, k, q_pooled, where, **knobs)
        return self.documents(hits) if return_documents else [(d, x) for d, x, _ in hits]

    def search_hits(self, q: Any, k: int = 10, q_pooled: Any = None, where: Any = None,
                    **knobs: object) -> list[tuple[str, float, str]]:
        """`Searcher.search_hits` over every shard, merged: (document id, score, stored id that matched).
        where: a metadata filter expression or mapping, applied by each shard to its own documents."""
        if isinstance(where, np.ndarray):
            raise ValueError("a sharded search takes a filter expression or mapping, not one index's mask")
        if where is None:
            return merge_top_k(self._each(lambda s: s.search_hits(q, k, q_pooled, None, **knobs)), k)
        # Checked against every shard's fields together: a field only some shards hold matches nothing elsewhere.
        kinds = self.field_kinds()
        masks = {id(s): s.index.matching(where, kinds) for s in self.searchers}
        return merge_top_k(self._each(lambda s: s.search_hits(q, k, q_pooled, masks[id(s)], **knobs)), k)

    def field_kinds(self) -> dict[str, set[str]]:
        """The metadata fields of every shard and the kinds of value each holds, together."""
        return union_kinds(s.index.field_kinds() for s in self.searchers)

    def search_all(self, queries: Mapping[str, str] | Sequence[str], k: int = 10, show_progress: bool | None = None,
                   where: Any = None, mode: str = "plaid", **knobs: object) -> Run:
        """Top-k for many queries, as a run {query id: {doc id: score}} (ids are positions for a list)."""
        return search_all_encoded(self, queries, k, show_progress, where, mode, **knobs)

    def documents(self, hits: Sequence[tuple[str, float] | tuple[str, float, str]]) -> list[dict]:
        """Hits with their stored text and metadata, each read from the shard that holds it."""
        return [self.searchers[self.owner[parent_of(hit[0])]].documents([hit])[0] for hit in hits]

    @classmethod
    def from_set(cls, path: str | Path, model: Any = None, config: SearchConfig | None = None,
                 threads: int | None = None) -> "ShardedSearcher":
        """Every shard of a shard set (indexing/shards.py) searched as one, writes routed by id; the model
        defaults to the one the shards name."""
        from ..indexing.shards import open_set

        indexes = open_set(path)
        return cls(indexes, model if model is not None else indexes[0].load_model(), config, threads, routed=True)

    def add(self, documents: Mapping[str, Any], metadata: Mapping[str, dict] | None = None) -> dict[int, int]:
        """Encode and add {id: text} to the shards that own the ids (a shard set's routing), each shard committing
        as one index does; returns {shard: documents added}. An id already in the set is refused."""
        from ..indexing.encoded import EncodedDocuments
        from ..indexing.shards import route

        self._require_routing()
        taken = [d for d in documents if d in self.owner]
        if taken:
            raise MedColbertError(f"{len(taken)} ids are already in the set (first {taken[0]!r}); delete them first")
        added = {}
        for s, ids in sorted(route(documents, len(self.searchers)).items()):
            index = self.searchers[s].index
            meta = {d: metadata[d] for d in ids if metadata and d in metadata}
            added[s] = index.add(EncodedDocuments.encode(self.model, {d: documents[d] for d in ids}, meta, index=index))
            self.owner.update({d: s for d in ids})
        return added

    def delete(self, doc_ids: Sequence[str]) -> dict[int, int]:
        """Delete ids from the shards that own them; returns {shard: documents deleted}. Unknown ids are refused
        before anything is deleted."""
        from ..indexing.shards import route

        self._require_routing()
        unknown = [d for d in doc_ids if d not in self.owner]
        if unknown:
            raise MedColbertError(f"{len(unknown)} document ids are not in the set, e.g. {unknown[0]!r}")
        deleted = {}
        for s, ids in sorted(route(doc_ids, len(self.searchers)).items()):
            deleted[s] = self.searchers[s].index.delete(ids)
            for d in ids:
                self.owner.pop(d, None)
        return deleted

    def _require_routing(self) -> None:
        if not self.routed:
            raise MedColbertError("writes need a shard set (ShardedSearcher.from_set): these indexes have no routing "
                                  "of ids to shards")

    def close(self) -> None:
        """Stop the shard threads."""
        self._pool.shutdown(wait=False)
