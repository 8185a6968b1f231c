"""PLAID search over a compressed index: centroid candidates, centroid-interaction pruning, exact MaxSim."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..evaluation.datasets import Run
from ..indexing.index import Index
from ..indexing.storage import ranges
from .exact import exact_search


@dataclass(frozen=True)
class SearchConfig:
    """PLAID knobs; None means the default for the requested k (colbert-ai's rule)."""

    ncells: int | None = None
    centroid_score_threshold: float | None = None
    ndocs: int | None = None
    exact: bool = False

    def resolved(self, k: int) -> "SearchConfig":
        """The config with every None replaced by the default for k."""
        if k <= 10:
            defaults = (1, 0.5, 256)
        elif k <= 100:
            defaults = (2, 0.45, 1024)
        else:
            defaults = (4, 0.4, max(k * 4, 4096))
        ncells = self.ncells if self.ncells is not None else defaults[0]
        threshold = self.centroid_score_threshold if self.centroid_score_threshold is not None else defaults[1]
        ndocs = self.ndocs if self.ndocs is not None else defaults[2]
        if ncells < 1 or ndocs < 1:
            raise ValueError(f"ncells and ndocs must be at least 1 (got {ncells}, {ndocs})")
        return replace(self, ncells=ncells, centroid_score_threshold=threshold, ndocs=max(ndocs, k))


class Searcher:
    """Searches an index with a model: `search(query, k)` -> [(doc id, score), ...]."""

    def __init__(self, index: Index | str | Path, model, config: SearchConfig | None = None,  # type: ignore[no-untyped-def]
                 trace_queries: bool = True) -> None:
        self.index = index if isinstance(index, Index) else Index.open(index)
        self.index.check_model(model)
        self.model = model
        model.trace_queries = trace_queries
        self.config = config or SearchConfig()
        self._centroids_t = self.index.codec.centroids_f32.contiguous()

    # ------------------------------------------------------------------ public
    def search(self, query: str, k: int = 10, **knobs: object) -> list[tuple[str, float]]:
        """The top-k documents for one query, best first."""
        q = self.model.encode_queries([query], show_progress=False)[0]
        return self.search_vectors(q, k, **knobs)

    def search_all(self, queries: Mapping[str, str] | Sequence[str], k: int = 10, batch_size: int = 128,
                   show_progress: bool | None = None, **knobs: object) -> Run:
        """Top-k for many queries, as a run {query id: {doc id: score}} (ids are positions for a list)."""
        qids = list(queries) if isinstance(queries, Mapping) else [str(i) for i in range(len(queries))]
        texts = [queries[q] for q in qids] if isinstance(queries, Mapping) else list(queries)
        Q = self.model.encode_queries(texts, batch_size=batch_size, show_progress=show_progress)
        cfg = self._resolve(k, knobs)
        if cfg.exact:
            return dict(zip(qids, (dict(hits) for hits in exact_search(self.index, Q, k))))
        run: Run = {}
        show = len(qids) > 1 if show_progress is None else show_progress
        for i, qid in enumerate(tqdm(qids, desc="Searching", unit="query", disable=not show)):
            run[qid] = dict(self._plaid(Q[i], k, cfg))
        return run

    def search_vectors(self, q: torch.Tensor, k: int = 10, **knobs: object) -> list[tuple[str, float]]:
        """The top-k documents for one encoded query [Lq, dim]."""
        cfg = self._resolve(k, knobs)
        if cfg.exact:
            return exact_search(self.index, q.unsqueeze(0), k)[0]
        return self._plaid(q, k, cfg)

    def _resolve(self, k: int, knobs: dict) -> SearchConfig:
        """The searcher's config with per-call knobs applied, resolved for k."""
        return replace(self.config, **knobs).resolved(k)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ PLAID stages
    def _plaid(self, q: torch.Tensor, k: int, cfg: SearchConfig) -> list[tuple[str, float]]:
        idx = self.index
        q = q.float()
        n_centroids = self._centroids_t.shape[0]
        # Centroid scores laid out [C + 1, Lq], the layout every later gather wants, with one extra row
        # that scores 0: it stands for padding and for pruned centroids (as in colbert-ai).
        table = torch.empty((n_centroids + 1, q.shape[0]), dtype=torch.float32)
        torch.mm(self._centroids_t, q.T, out=table[:n_centroids])
        table[n_centroids] = 0
        scores = table[:n_centroids]
        # 1. candidates: documents in the inverted lists of each query token's top ncells centroids
        if cfg.ncells == 1:
            cells = np.unique(scores.argmax(dim=0).numpy())
        else:
            cells = torch.topk(scores, min(cfg.ncells, n_centroids), dim=0).indices.unique().numpy()
        cand = np.unique(idx.ivf_docs[ranges(idx.ivf_offsets[cells], idx.ivf_offsets[cells + 1])])
        if idx.deleted.any():
            cand = cand[~idx.deleted[cand]]
        if cand.size == 0:
            return []
        # 2. centroid interaction over the centroids that pass the threshold only (PLAID's pruning)
        if cand.size > cfg.ndocs:
            kept = np.flatnonzero((scores.max(dim=1).values >= cfg.centroid_score_threshold).numpy())
            cand = self._pruned_stage(table, cand, kept, cfg.ndocs)
        # 3. full centroid interaction on the survivors; a quarter go on
        cand = self._centroid_stage(table, cand, max(k, cfg.ndocs // 4))
        # 4. exact MaxSim over the decompressed vectors of the survivors
        cand = np.sort(cand)
        rows, lens = idx.embedding_rows(cand)
        sim = idx.codec.similarities(idx.codes[rows], idx.residual_rows(rows), q)
        sim = torch.cat([sim, torch.full((1, q.shape[0]), -1e4)])   # [tokens + pad row, Lq]
        exact = _segment_maxsim(sim, np.arange(len(rows)), lens)
        top = np.argsort(-exact, kind="stable")[:k]
        return [(idx.doc_ids[cand[i]], float(exact[i])) for i in top]

    def _pruned_stage(self, table: torch.Tensor, cand: np.ndarray, kept: np.ndarray, n: int) -> np.ndarray:
        """Top n candidates by MaxSim over their centroids that passed the threshold (others count 0)."""
        # Walk the inverted lists of the kept centroids only: their length, not the candidates' total
        # number of centroids, bounds the work, which is what makes the pruning pay off.
        idx = self.index
        lengths = idx.ivf_offsets[kept + 1] - idx.ivf_offsets[kept]
        docs = idx.ivf_docs[ranges(idx.ivf_offsets[kept], idx.ivf_offsets[kept + 1])]
        codes = np.repeat(kept, lengths)
        slot = self._slots(cand)
        where = slot[docs]
        inside = where >= 0
        where, codes = where[inside], codes[inside]
        self._slot_buffer[cand] = -1
        # Scores start at 0, the value colbert-ai gives pruned centroids; scatter-max is the fastest
        # grouped reduction here (no sort by document needed).
        best = torch.zeros((cand.size, table.shape[1]))
        if codes.size:
            gathered = torch.nn.functional.embedding(torch.from_numpy(codes), table)
            best.scatter_reduce_(0, torch.from_numpy(where)[:, None].expand(-1, table.shape[1]), gathered, "amax")
        approx = best.sum(dim=1).numpy()
        return cand[np.argpartition(-approx, n - 1)[:n]]

    def _slots(self, cand: np.ndarray) -> np.ndarray:
        """A reusable document -> candidate-position map (-1 elsewhere), reset by the caller."""
        if getattr(self, "_slot_buffer", None) is None or self._slot_buffer.size != len(self.index.doc_ids):
            self._slot_buffer = np.full(len(self.index.doc_ids), -1, dtype=np.int64)
        self._slot_buffer[cand] = np.arange(cand.size)
        return self._slot_buffer

    def _centroid_stage(self, table: torch.Tensor, cand: np.ndarray, n: int) -> np.ndarray:
        """Top n candidates by MaxSim over all their centroids."""
        if cand.size <= n:
            return cand
        idx = self.index
        lens = idx.pair_offsets[cand + 1] - idx.pair_offsets[cand]
        codes = idx.pair_codes[ranges(idx.pair_offsets[cand], idx.pair_offsets[cand + 1])]
        approx = _segment_maxsim(table, codes, lens)
        return cand[np.argpartition(-approx, n - 1)[:n]]


def _segment_maxsim(table: torch.Tensor, rows: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Per group of consecutive `rows` (sizes `lens`): sum over columns of the max over the group's rows.

    `table` is [R + 1, Lq]; its last row is the padding value. Groups are laid out as a dense
    [groups, longest, Lq] gather, which on CPU is several times faster than a segmented reduction.
    """
    n = len(lens)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    width = max(1, int(lens.max()))
    mat = np.full((n, width), table.shape[0] - 1, dtype=np.int64)
    if len(rows):
        owner = np.repeat(np.arange(n), lens)
        pos = np.arange(len(rows)) - np.repeat(np.cumsum(lens) - lens, lens)
        mat[owner, pos] = rows
    gathered = torch.nn.functional.embedding(torch.from_numpy(mat), table)   # [n, width, Lq]
    return gathered.amax(dim=1).sum(dim=1).numpy()
