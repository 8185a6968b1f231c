"""PLAID search over a compressed index: centroid candidates, centroid-interaction pruning, exact MaxSim."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import MedColbertError
from ..evaluation.datasets import Run
from ..filters import WhereLike
from ..validation import check_float, check_int, is_blank
from ..indexing.index import Index
from ..modeling.encoder import encode_queries_pooled, has_pooled_head
from ..machine import THREADS
from ..modeling.precision import choose_query_precision
from ..passages import aggregate
from ..scoring import score_candidates
from .engine import PlaidEngine
from .exact import exact_search


# With split documents, passages fetched per requested document (the best one per document is kept).
PASSAGE_FETCH = 4

# A model with a pooled head: how many index entries each side nominates (MaxSim's PLAID top and the pooled
# vectors' nearest), all then scored by MaxSim + weighted cosine. 100 covers the k <= 100 the presets are for.
HYBRID_DEPTH = 100
# ... and for k <= 10: 32 entries a side, 64 documents scored exactly by PLAID (instead of 100 and 256). With v5
# on SciFact test, MedQuAD dev (500) and consumer-health dev: nDCG@10 equal to exact MaxSim's on all three, top 10
# identical for 98-100% of queries (overlap@10 0.997-1.0); SciFact search-only p50 8.4 -> 4.2 ms in one run
# (experiments/engine/plaid-knobs/v6/).
HYBRID_SMALL_K, HYBRID_SMALL_DEPTH, HYBRID_SMALL_EXACT = 10, 32, 64


# Unset knobs by preset and k: (largest k, (ncells, centroid_score_threshold, ndocs)); past the last row,
# (4, 0.4, max(4k, 4096)). The exact stage scores the best ndocs / 4 of the centroid-interaction survivors.
PRESETS: dict[str, tuple[tuple[int, tuple[int, float, int]], ...]] = {
    # Within 0.005 nDCG@10 of exact MaxSim at k=10 and k=100 on SciFact test, MedQuAD dev and consumer-health
    # dev with the v2 model (experiments/engine/plaid-knobs/v2/): 1024 documents scored exactly. 512 (ndocs 2048) was
    # within 0.005 on one 500-query MedQuAD sample and 0.010 short on another. ndocs shrinks to a third of a
    # smaller collection (at least 256): on 1,000 MedQuAD documents colbert-ai's 256 already matched exact
    # MaxSim, and scoring all of them exactly made search 4x slower.
    "quality": ((100, (4, 0.4, 4096)),),
    # colbert-ai's rule: 3-8x faster search stages, but at k=10 it lost 0.059 (MedQuAD) and 0.044
    # (consumer-health) nDCG@10 against exact MaxSim, whose near-identical answers its 64 exactly scored
    # documents cannot separate.
    "colbert-ai": ((10, (1, 0.5, 256)), (100, (2, 0.45, 1024))),
}

# A search with a pooled head ("quality" preset): colbert-ai's knobs, resolved for the max(k, HYBRID_DEPTH)
# entries it fetches. The pooled side's nearest entries supply what more exactly scored documents would: with v4,
# colbert-ai's knobs (256 documents scored exactly) gave the same nDCG@10 as the quality knobs (1,024) on SciFact
# test, MedQuAD dev (500 questions) and consumer-health dev, at 0.5-0.7x the latency (experiments/engine/v4-e2e/presets/).
HYBRID_PRESET = "colbert-ai"


MODES = ("plaid", "lexical", "hybrid")
FUSION_DEPTH = 100   # each side's top documents that reciprocal rank fusion sees
RRF_K = 60           # RRF's rank offset (Cormack et al.'s default)


@dataclass(frozen=True)
class SearchConfig:
    """PLAID knobs; None means the preset's default for the requested k."""

    ncells: int | None = None
    centroid_score_threshold: float | None = None
    ndocs: int | None = None
    exact: bool = False
    preset: str = "quality"
    # Documents scored exactly; None: a quarter of what the candidate stages kept, at least k (PlaidEngine.search).
    exact_docs: int | None = None
    # With a pooled head: entries each side nominates (MaxSim's PLAID top, the pooled vectors' nearest); None:
    # HYBRID_DEPTH.
    hybrid_depth: int | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")

    def resolved(self, k: int, num_documents: int | None = None, hybrid: bool = False) -> "SearchConfig":
        """The config with every None replaced by the default for k and the collection's size (every value
        checked for its range). hybrid: for a model with a pooled head, whose search joins PLAID's top entries
        with the pooled vectors' nearest; there "quality" takes colbert-ai's knobs (see HYBRID_PRESET)."""
        check_int("k", k, 1)
        table = PRESETS[HYBRID_PRESET if hybrid and self.preset == "quality" else self.preset]
        defaults = next((knobs for top, knobs in table if k <= top), (4, 0.4, max(k * 4, 4096)))
        if self.preset == "quality" and not hybrid and k <= 100 and num_documents is not None:
            defaults = (*defaults[:2], min(defaults[2], max(256, num_documents // 3)))
        ncells = self.ncells if self.ncells is not None else defaults[0]
        threshold = self.centroid_score_threshold if self.centroid_score_threshold is not None else defaults[1]
        ndocs = self.ndocs if self.ndocs is not None else defaults[2]
        check_int("ncells", ncells, 1)
        check_int("ndocs", ndocs, 1)
        check_float("centroid_score_threshold", threshold, -1.0, 1.0)
        if self.exact_docs is not None:
            check_int("exact_docs", self.exact_docs, 1)
        if self.hybrid_depth is not None:
            check_int("hybrid_depth", self.hybrid_depth, 1)
        return replace(self, ncells=ncells, centroid_score_threshold=threshold, ndocs=max(ndocs, k))


class Searcher:
    """Searches an index with a model: `search(query, k)` -> [(doc id, score), ...]; safe to share between threads."""

    # A filter whose matching documents hold at most this many vectors is searched by exact MaxSim over them
    # (faster than PLAID's stages there, and exact); larger ones by PLAID restricted to them.
    FILTER_EXACT_VECTORS = 65536

    def __init__(self, index: Index | str | Path, model, config: SearchConfig | None = None,  # type: ignore[no-untyped-def]
                 trace_queries: bool = True, device: str | torch.device | None = None,
                 compiled: bool | None = None) -> None:
        """compiled: run the compiled CPU stages (None: where the install built them and the device is the CPU)."""
        self.index = index if isinstance(index, Index) else Index.open(index)
        self.index.check_model(model)
        self.model = model
        # An index built from vectors that carried no pooled vectors records that it is scored by MaxSim alone:
        # a model with a pooled head then searches it without that term, and says so once.
        self.maxsim_only = has_pooled_head(model) and self.index.pooled is None and self.index.maxsim_only
        if self.maxsim_only:
            warnings.warn(f"{self.index.path} holds no pooled vectors (built from vectors without them): scoring by "
                          "MaxSim alone, without the model's pooled head", stacklevel=2)
        model.trace_queries = trace_queries
        # Query encoding is most of a search's time on a CPU: its precision is picked by measuring this machine
        # (cached per CPU model and weights; $MEDCOLBERT_QUERY_PRECISION forces one).
        self.query_precision = choose_query_precision(model) if trace_queries else {"chosen": "float32 (eager)"}
        self.config = config or SearchConfig()
        # The stages run where the model runs unless told otherwise: on CUDA the whole index is moved to
        # GPU memory once, here.
        self._device = device if device is not None else model.device
        self._compiled = compiled
        self.engine = PlaidEngine(self.index, self._device, compiled)
        # One query's search runs on the cores other processes leave free (machine.ThreadChoice: torch's own
        # setting on a quiet machine); CUDA work is left as it is.
        self._on_cpu = torch.device(self._device).type == "cpu"
        self._generation = self.index.manifest.get("generation")

    # ------------------------------------------------------------------ public
    def search(self, query: str, k: int = 10, return_documents: bool = False, where: WhereLike = None,
               mode: str = "plaid", **knobs: object) -> list[tuple[str, float]] | list[dict]:
        """The top-k documents for one query, best first: (id, score) pairs, or with return_documents
        {"id", "score", "text", "metadata"} dicts read from the index's document store.

        where: a metadata filter (see filters.py: "source in {a, b} and year >= 2015", or a mapping); only
        matching documents are searched, so k hits come back whenever k documents match. mode: "plaid" (late
        interaction), "lexical" (BM25 over the index's postings) or "hybrid" (the two fused by reciprocal rank)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__} (search_all takes several queries)")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "plaid":
            if is_blank(query):
                raise ValueError("the query is empty (nothing but whitespace, control or format characters)")
            hits = self.search_mode_hits(query, k, mode, where, **knobs)
            return self.documents(hits) if return_documents else [(d, x) for d, x, _ in hits]
        if is_blank(query):
            raise ValueError("the query is empty (nothing but whitespace, control or format characters)")
        allowed = self.index.matching(where)   # a bad filter fails before the query is encoded
        with self._threads():
            q, q_pooled = encode_queries_pooled(self.model, [query], show_progress=False)
            return self.search_encoded(q[0], k, return_documents, q_pooled=None if q_pooled is None else q_pooled[0],
                                       where=allowed, **knobs)

    @property
    def hybrid(self) -> bool:
        """Whether scores add the model's pooled single-vector term (its dense_weight > 0)."""
        return has_pooled_head(self.model) and not self.maxsim_only

    def search_encoded(self, q: torch.Tensor, k: int = 10, return_documents: bool = False,
                       q_pooled: torch.Tensor | None = None, where: WhereLike | np.ndarray = None,
                       **knobs: object) -> list[tuple[str, float]] | list[dict]:
        """`search` for a query encoded already ([Lq, dim]; with a pooled head also its pooled vector).

        where: a metadata filter, or the boolean mask Index.matching made of one."""
        hits = self.search_hits(q, k, q_pooled, where, **knobs)
        if return_documents:
            return self.documents(hits)
        return [(doc, score) for doc, score, _ in hits]

    def search_hits(self, q: torch.Tensor, k: int = 10, q_pooled: torch.Tensor | None = None,
                    where: WhereLike | np.ndarray = None, **knobs: object) -> list[tuple[str, float, str]]:
        """An encoded query's top k as (document id, score, stored id that matched: with split documents, the
        best passage's), best first; where: a metadata filter or Index.matching's mask of one."""
        if self.hybrid and q_pooled is None:
            raise MedColbertError("this model also scores with its pooled single-vector head: pass the query's "
                                  "pooled vector (encode_queries(..., pooled=True)), or search with its text")
        allowed = where if isinstance(where, np.ndarray) else self.index.matching(where)
        cfg = self._resolve(self._units(k), knobs)
        with self._threads():
            return self._search_units(q, k, cfg, q_pooled, allowed)

    def explain(self, query: str, doc_id: str, mode: str = "plaid", score: float | None = None) -> dict:
        """Why a document matches a query: each query word's matched document tokens (character spans in the stored
        text; a split document's best passage), similarities and shares of the score (explain.py); with mode lexical
        or hybrid also the BM25 terms it holds. Computed only when asked: searching never pays for it."""
        from ..explain import explain_document

        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return explain_document(self.index, self.model, query, doc_id, score, lexical=mode != "plaid")

    def documents(self, hits: Sequence[tuple[str, float] | tuple[str, float, str]]) -> list[dict]:
        """Hits with their stored text and metadata; a hit's third element (the stored id that matched, as
        `search_hits` gives) makes the best passage of a split document its text."""
        return [{**self.index.document(hit[-1] if len(hit) == 3 else hit[0]), "score": hit[1]} for hit in hits]

    def search_all(self, queries: Mapping[str, str] | Sequence[str], k: int = 10, batch_size: int = 128,
                   show_progress: bool | None = None, where: WhereLike = None, mode: str = "plaid",
                   **knobs: object) -> Run:
        """Top-k for many queries, as a run {query id: {doc id: score}} (ids are positions for a list);
        where: a metadata filter for every query; mode and its fusion knobs as in `search` (the lexical side
        of a batch is scored in one pass)."""
        allowed = self.index.matching(where)
        qids = list(queries) if isinstance(queries, Mapping) else [str(i) for i in range(len(queries))]
        texts = [queries[q] for q in qids] if isinstance(queries, Mapping) else list(queries)
        if mode != "plaid":
            show = len(qids) > 1 if show_progress is None else show_progress
            with self._threads():
                got = self.mode_hits_many(texts, k, mode, allowed, batch_size=batch_size, show_progress=show, **knobs)
            return {qid: {d: x for d, x, _ in hits} for qid, hits in zip(qids, got)}
        Q, Q_pooled = encode_queries_pooled(self.model, texts, batch_size=batch_size, show_progress=show_progress)
        cfg = self._resolve(self._units(k), knobs)
        Q_pooled = Q_pooled if self.hybrid else None
        if cfg.exact and not self.index.passages and Q_pooled is None:
            return {qid: {d: x for d, x, _ in self._documents_of(hits, k)}
                    for qid, hits in zip(qids, exact_search(self.index, Q, k, allowed))}
        run: Run = {}
        show = len(qids) > 1 if show_progress is None else show_progress
        for i, qid in enumerate(tqdm(qids, desc="Searching", unit="query", disable=not show)):
            with self._threads():
                hits = self._search_units(Q[i], k, cfg, None if Q_pooled is None else Q_pooled[i], allowed)
            run[qid] = {d: x for d, x, _ in hits}
        return run

    def lexical_hits(self, query: str, k: int, where: WhereLike | np.ndarray = None) -> list[tuple[str, float, str]]:
        """BM25's top k documents (a split document by its best passage) as (id, score, stored id)."""
        allowed = where if isinstance(where, np.ndarray) else self.index.matching(where)
        units = [(self.index.doc_ids[p], x) for p, x in self.index.lexical_search(query, self._units(k), allowed)]
        return self._documents_of(units, k)

    def lexical_hits_many(self, queries: Sequence[str], k: int,
                          where: WhereLike | np.ndarray = None) -> list[list[tuple[str, float, str]]]:
        """lexical_hits for many queries, scored together (one sparse product over the postings)."""
        allowed = where if isinstance(where, np.ndarray) else self.index.matching(where)
        ids = self.index.doc_ids
        return [self._documents_of([(ids[p], x) for p, x in hits], k)
                for hits in self.index.lexical_search_many(queries, self._units(k), allowed)]

    def search_mode_hits(self, query: str, k: int, mode: str, where: WhereLike | np.ndarray = None,
                         depth: int = FUSION_DEPTH, rrf_k: int = RRF_K, encoded: tuple | None = None,
                         lexical_weight: float = 1.0, fusion: str = "rrf", pooled_weight: float = 0.0,
                         plaid_depth: int | None = None, **knobs: object) -> list[tuple[str, float, str]]:
        """One text query's hits in a mode: lexical (BM25) or hybrid (PLAID's and BM25's top `depth` fused by
        reciprocal rank, fusion="rrf", or by min-max normalised scores, fusion="score"; BM25's side weighted
        lexical_weight; pooled_weight > 0 adds a third side, the nearest entries by the model's pooled single vector
        alone, which the index keeps for a model with a pooled head; plaid_depth: PLAID's side fetched at this
        depth instead of `depth`); encoded: the query's (vectors, pooled vector or None) where the caller has them."""
        return self.mode_hits_many([query], k, mode, where, depth, rrf_k, None if encoded is None else [encoded],
                                   lexical_weight, fusion, pooled_weight=pooled_weight, plaid_depth=plaid_depth,
                                   **knobs)[0]

    def mode_hits_many(self, queries: Sequence[str], k: int, mode: str, where: WhereLike | np.ndarray = None,
                       depth: int = FUSION_DEPTH, rrf_k: int = RRF_K, encoded: Sequence[tuple | None] | None = None,
                       lexical_weight: float = 1.0, fusion: str = "rrf", batch_size: int = 128,
                       show_progress: bool = False, pooled_weight: float = 0.0, plaid_depth: int | None = None,
                       **knobs: object) -> list[list[tuple[str, float, str]]]:
        """search_mode_hits for many text queries: the lexical side scored for all of them at once, the queries
        not given `encoded` encoded in batches, then PLAID and the fusion query by query."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if fusion not in ("rrf", "score"):
            raise ValueError(f"fusion must be rrf or score, got {fusion!r}")
        allowed = where if isinstance(where, np.ndarray) else self.index.matching(where)
        if mode == "lexical":
            return self.lexical_hits_many(queries, k, allowed)
        from .fusion import combine, rrf

        depth = max(k, check_int("depth", depth, 1))
        # PLAID's side may be fetched shallower than BM25's (its k <= 10 path is the fast one).
        side = depth if plaid_depth is None else max(k, check_int("plaid_depth", plaid_depth, 1))
        weight = check_float("lexical_weight", lexical_weight, 0.0, 100.0)
        single = check_float("pooled_weight", pooled_weight, 0.0, 100.0)
        if single > 0 and (self.index.pooled is None or not has_pooled_head(self.model)):
            raise ValueError("pooled_weight needs a model with a pooled single-vector head and an index that keeps "
                             "its pooled vectors")
        rows = list(encoded) if encoded is not None else [None] * len(queries)
        if len(rows) != len(queries):
            raise ValueError(f"{len(rows)} encoded queries for {len(queries)} texts")
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            Q, Q_pooled = encode_queries_pooled(self.model, [queries[i] for i in missing], batch_size=batch_size,
                                                show_progress=show_progress)
            for j, i in enumerate(missing):
                rows[i] = (Q[j], None if Q_pooled is None else Q_pooled[j])
        lexical = self.lexical_hits_many(queries, depth, allowed) if mode == "hybrid" else [[] for _ in queries]
        out = []
        for row, lex in zip(tqdm(rows, desc="Searching", unit="query", disable=not show_progress), lexical):
            learned = self.search_hits(row[0], side, row[1], allowed, **knobs)
            if mode == "plaid":
                out.append(learned[:k])
                continue
            pooled: list[tuple[str, float, str]] = []
            if single > 0:
                cosine, nearest = self._pooled_nearest(row[1], self._units(depth), allowed)
                pooled = self._documents_of([(self.index.doc_ids[p], float(cosine[p])) for p in nearest.tolist()],
                                            depth)
            stored = {d: unit for d, _, unit in learned + lex + pooled}   # the passage that matched, for snippets
            sides = [{"q": {d: x for d, x, _ in side}} for side in (learned, lex, pooled)]
            weights = [1.0, weight, single]
            fused = (rrf(sides, k=rrf_k, weights=weights) if fusion == "rrf" else
                     combine(sides, weights=weights)).get("q", {})
            best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            out.append([(d, x, stored[d]) for d, x in best])
        return out

    def search_vectors(self, q: torch.Tensor, k: int = 10, **knobs: object) -> list[tuple[str, float]]:
        """The top-k documents for one encoded query [Lq, dim]."""
        return self.search_encoded(q, k, **knobs)  # type: ignore[return-value]

    def _threads(self) -> contextlib.AbstractContextManager:
        """One query's work at the thread count machine.THREADS gives now (on CUDA: as it is)."""
        return THREADS.run() if self._on_cpu else contextlib.nullcontext()

    def _units(self, k: int) -> int:
        """How many index entries to fetch for k documents: with split documents, several passages of one
        document may rank high, so more are fetched and the best per document kept."""
        check_int("k", k, 1)
        return k * PASSAGE_FETCH if self.index.passages else k

    def _search_units(self, q: torch.Tensor, k: int, cfg: SearchConfig, q_pooled: torch.Tensor | None = None,
                      allowed: np.ndarray | None = None) -> list[tuple[str, float, str]]:
        """(document id, score, matching index entry) of the top-k documents for one encoded query
        (among the entries of the boolean mask `allowed`, when a filter gave one)."""
        fetch = self._units(k)
        q_pooled = q_pooled if self.hybrid else None
        available = len(self.index) if allowed is None else int(np.count_nonzero(allowed))
        if available == 0:
            return []
        # A filter matching few vectors: exact MaxSim over its documents is cheaper than PLAID's stages, and
        # exact (FILTER_EXACT_VECTORS: the switch point measured in experiments/engine/filters/).
        subset = allowed is not None and not cfg.exact and \
            int(self.index.doclens[allowed].sum()) <= self.FILTER_EXACT_VECTORS
        if allowed is not None and not cfg.exact and not subset and cfg.ncells is not None and available < len(self.index):
            # A selective filter leaves few matching documents in each query token's best centroids: probe
            # 1 / sqrt(share) times as many (2x at 50%, 4x at 10%, 10x at 1%), or the best matches go unseen.
            boost = math.ceil(1 / math.sqrt(available / len(self.index)))
            cfg = replace(cfg, ncells=min(self.index.codec.num_centroids, cfg.ncells * boost))
        while True:
            # With a pooled head, MaxSim nominates at least hybrid_depth entries for the combined score, and so
            # does the pooled side (its nearest entries, scored by MaxSim in PLAID's exact stage beside its own).
            want = fetch if q_pooled is None else max(fetch, cfg.hybrid_depth or HYBRID_DEPTH)
            pooled_side, known = None, {}
            if q_pooled is not None:
                pooled_side = self._pooled_nearest(q_pooled, want, allowed)
                if not cfg.exact:
                    cfg = replace(cfg, ndocs=max(cfg.ndocs or 0, want))
            nearest = None if pooled_side is None else pooled_side[1]
            if cfg.exact:
                units = self._exhaustive(q, want, allowed)
            elif subset:
                units = self._subset(q, want, allowed)   # type: ignore[arg-type]
            else:
                units = self._plaid(q, want, cfg, allowed, nearest, known)
            # Fewer entries than asked for while the index holds more (a small index, a selective filter, or a
            # query whose best centroids list few documents): probe more centroids, up to all of them, rather
            # than return fewer than k hits.
            centroids = self.index.codec.num_centroids
            while not cfg.exact and not subset and len(units) < min(want, available) and (cfg.ncells or 1) < centroids:
                cfg = replace(cfg, ncells=min((cfg.ncells or 1) * 4, centroids))
                units = self._plaid(q, want, cfg, allowed, nearest, known)
            if pooled_side is not None:
                units = self._hybrid(q, units, want, *pooled_side, known)
            hits = self._documents_of(units, k)
            # A few long documents can fill the fetched passages: fetch more until k documents are found.
            if len(hits) >= k or len(units) < fetch or fetch >= available:
                return hits
            fetch *= PASSAGE_FETCH
            cfg = replace(cfg, ndocs=max(cfg.ndocs or 0, fetch))

    def _pooled_nearest(self, q_pooled: torch.Tensor, depth: int,
                        allowed: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray]:
        """The pooled vectors' cosines with the query (-inf outside the filter and for deleted entries) and the
        positions of the `depth` nearest live, allowed entries."""
        index = self.index
        if index.pooled is None:
            raise MedColbertError(f"{index.path} holds no pooled vectors for this model's pooled head; rebuild it")
        cosine = index.pooled_cosines(q_pooled)
        cosine[torch.from_numpy(index.deleted if allowed is None else ~allowed)] = float("-inf")
        nearest = torch.topk(cosine, min(depth, len(index.doc_ids))).indices
        return cosine, nearest[torch.isfinite(cosine[nearest])].numpy().astype(np.int64)

    def _hybrid(self, q: torch.Tensor, units: list[tuple[str, float]], depth: int, cosine: torch.Tensor,
                nearest: np.ndarray, known: dict) -> list[tuple[str, float]]:
        """MaxSim's candidates joined by the pooled vectors' nearest entries, all scored MaxSim + weighted cosine;
        known: MaxSim scores of nearest entries that PLAID's exact stage computed already ({position: score})."""
        index = self.index
        q = q[q.abs().sum(dim=-1) > 0]
        maxsim = {index.position[u]: x for u, x in units}
        for p in nearest.tolist():
            if p not in maxsim and p in known:
                maxsim[p] = known[p]
        extra = [p for p in nearest.tolist() if p not in maxsim]
        if extra:
            # Entries only the pooled side nominated: their MaxSim from the stored vectors, by PLAID's own
            # exact stage (compiled on CPU), so both sides' entries are scored the same way.
            docs, scores = self._fresh_engine().exact(q, np.asarray(extra, dtype=np.int64))
            maxsim.update(zip(docs.tolist(), scores.tolist()))
        positions = list(maxsim)
        scores = score_candidates(q, weight=self.model.config, cosines=cosine[positions],
                                  maxsim_scores=torch.tensor([maxsim[p] for p in positions]))
        if not torch.isfinite(scores).all():
            raise MedColbertError("the combined scores are not finite (NaN or inf vectors); no ranking can be made")
        order = torch.argsort(scores, descending=True, stable=True)[:depth].tolist()
        return [(index.doc_ids[positions[i]], float(scores[i])) for i in order]

    def _documents_of(self, units: list[tuple[str, float]], k: int) -> list[tuple[str, float, str]]:
        if self.index.passages:
            return aggregate(units, k)
        return [(u, x, u) for u, x in units[:k]]

    def resolved_config(self, k: int, **knobs: object) -> SearchConfig:
        """The knobs a search for k documents runs with: the searcher's config, per-call knobs applied, resolved."""
        return self._resolve(self._units(k), knobs)

    def _resolve(self, k: int, knobs: dict) -> SearchConfig:
        """The searcher's config with per-call knobs applied, resolved for k index entries (a hybrid search
        fetches at least hybrid_depth: HYBRID_DEPTH, or HYBRID_SMALL_DEPTH with HYBRID_SMALL_EXACT documents scored
        exactly at k <= HYBRID_SMALL_K, unless the call sets its own depth)."""
        cfg = replace(self.config, **knobs)  # type: ignore[arg-type]
        if self.hybrid:
            if cfg.hybrid_depth is None and k <= HYBRID_SMALL_K:
                cfg = replace(cfg, hybrid_depth=HYBRID_SMALL_DEPTH,
                              exact_docs=HYBRID_SMALL_EXACT if cfg.exact_docs is None else cfg.exact_docs)
            elif cfg.hybrid_depth is None:
                cfg = replace(cfg, hybrid_depth=HYBRID_DEPTH)
            return cfg.resolved(max(k, cfg.hybrid_depth), len(self.index), hybrid=True)
        return cfg.resolved(k, len(self.index))

    # ------------------------------------------------------------------ PLAID
    def _fresh_engine(self) -> PlaidEngine:
        """The engine, rebuilt first if the Index object was updated in place (add/delete/compact)."""
        if self.index.manifest.get("generation") != self._generation:
            self.engine = PlaidEngine(self.index, self._device, self._compiled)
            self._generation = self.index.manifest.get("generation")
        return self.engine

    def _exhaustive(self, q: torch.Tensor, k: int, allowed: np.ndarray | None) -> list[tuple[str, float]]:
        """Exact MaxSim over every live (and matching) entry: through PLAID's exact stage where the compiled
        stages run (one pass over the codes), else brute force over decompressed vectors."""
        if self._fresh_engine().kernel is not None:
            return self._subset(q, k, ~self.index.deleted if allowed is None else allowed)
        return exact_search(self.index, q.unsqueeze(0), k, allowed)[0]

    def _subset(self, q: torch.Tensor, k: int, allowed: np.ndarray) -> list[tuple[str, float]]:
        """The top-k entries of a filter's few matches by exact MaxSim over all of them (PLAID's exact stage)."""
        q = q[q.abs().sum(dim=-1) > 0]
        docs, scores = self._fresh_engine().exact(q, np.flatnonzero(allowed))
        order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
        ids = self.index.doc_ids
        return [(ids[int(docs[i])], float(scores[i])) for i in order]

    def _plaid(self, q: torch.Tensor, k: int, cfg: SearchConfig, allowed: np.ndarray | None = None,
               extra: np.ndarray | None = None, scored: dict | None = None) -> list[tuple[str, float]]:
        """PLAID's top k entries (id, exact MaxSim); extra: positions also scored exactly, into `scored`."""
        self._fresh_engine()
        # Queries of a batch share one length; the zero rows past a query's own vectors would only add
        # candidates from arbitrary centroids, so PLAID sees the query's real vectors alone.
        q = q[q.abs().sum(dim=-1) > 0]
        if not torch.isfinite(q).all():
            raise MedColbertError("the model produced non-finite query vectors (NaN or inf); no ranking can be made")
        docs, scores = self.engine.search(q, k, cfg.ncells, cfg.centroid_score_threshold, cfg.ndocs,  # type: ignore[arg-type]
                                          exact_docs=cfg.exact_docs, allowed=allowed, extra=extra, scored=scored)
        ids = self.index.doc_ids
        return [(ids[d], float(x)) for d, x in zip(docs.tolist(), scores.tolist())]
