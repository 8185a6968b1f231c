"""The PLAID compute engine: the index as torch tensors on one device, and the search stages over them.

Every stage is plain torch, so the same code runs on CPU and on CUDA; nothing is compiled at import or at
first use. Per-query scratch space is per thread, so one engine can serve many threads.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch.nn import functional as F

from ..indexing.codec import dequantize
from ..indexing.index import Index


def ranges(starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, e) for each pair, without a Python loop."""
    lens = ends - starts
    total = int(lens.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=starts.device)
    shift = torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens)
    return shift + torch.arange(total, device=starts.device)


def segment_maxsim(table: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Per group of consecutive `rows` (sizes `lens`): sum over columns of the max over the group's rows.

    `table` is [R + 1, Lq]; its last row is the padding value. Groups are laid out as a dense
    [groups, longest, Lq] gather, which on CPU is several times faster than a segmented reduction.
    """
    n = len(lens)
    if n == 0:
        return torch.zeros(0, dtype=table.dtype, device=table.device)
    width = max(1, int(lens.max()))
    mat = torch.full((n, width), table.shape[0] - 1, dtype=torch.int64, device=table.device)
    if len(rows):
        owner = torch.repeat_interleave(torch.arange(n, device=table.device), lens)
        pos = torch.arange(len(rows), device=table.device) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        mat[owner, pos] = rows
    return F.embedding(mat, table).amax(dim=1).sum(dim=1)


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the n largest scores (any order)."""
    return torch.topk(scores, min(n, scores.numel()), sorted=False).indices


class PlaidEngine:
    """An index's arrays on a device and the four PLAID stages over them."""

    def __init__(self, index: Index, device: str | torch.device = "cpu") -> None:
        self.index = index
        self.device = torch.device(device)
        d = self.device

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(d)

        codec = index.codec
        self.centroids = codec.centroids_f32.to(d)
        self.num_centroids = self.centroids.shape[0]
        self.ivf_offsets, self.ivf_docs = put(index.ivf_offsets), put(index.ivf_docs.astype(np.int64))
        self.pair_offsets, self.pair_codes = put(index.pair_offsets), put(index.pair_codes.astype(np.int64))
        self.doc_offsets, self.doclens = put(index.doc_offsets), put(index.doclens)
        self.codes = put(index.codes.astype(np.int64))
        self.deleted = put(index.deleted)
        self.any_deleted = bool(index.deleted.any())
        # Residuals stay memory-mapped on CPU (only the rows a query needs are read); on a GPU they live
        # in device memory, like the rest of the index.
        self.residuals = None if d.type == "cpu" else put(np.concatenate([np.asarray(p) for p in index._residual_parts]))
        self._byte_table = codec._byte_table.to(d)
        self._row_base = codec._row_base.to(d)
        self._local = threading.local()

    # ------------------------------------------------------------------ helpers
    def _residual_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self.residuals is None:
            return torch.from_numpy(self.index.residual_rows(rows.numpy()))
        return self.residuals[rows]

    def similarities(self, rows: torch.Tensor, q: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Dot products of the decompressed (unit) vectors at global rows with the rows of q, [n, Lq]."""
        # Scoring a chunk at a time keeps the decompressed block in cache, and dividing the [chunk, Lq]
        # scores by the norms is cheaper than normalizing [chunk, dim] vectors first.
        out = torch.empty((len(rows), q.shape[0]), dtype=torch.float32, device=self.device)
        qt = q.T.contiguous()
        for s in range(0, len(rows), chunk):
            part_rows = rows[s:s + chunk]
            vectors = dequantize(self.codes[part_rows], self._residual_rows(part_rows), self.centroids,
                                 self._byte_table, self._row_base)
            part = out[s:s + chunk]
            torch.mm(vectors, qt, out=part)
            part.div_(vectors.norm(dim=-1, keepdim=True).clamp_min_(1e-12))
        return out

    # ------------------------------------------------------------------ search
    def search(self, q: torch.Tensor, k: int, ncells: int, threshold: float, ndocs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k document positions and their exact MaxSim scores for one query [Lq, dim], best first."""
        q = q.to(self.device, torch.float32)
        C = self.num_centroids
        # Centroid scores laid out [C + 1, Lq], the layout every later gather wants, with one extra row
        # that scores 0: it stands for padding and for pruned centroids (as in colbert-ai).
        table = torch.empty((C + 1, q.shape[0]), dtype=torch.float32, device=self.device)
        torch.mm(self.centroids, q.T, out=table[:C])
        table[C] = 0
        scores = table[:C]
        # 1. candidates: documents in the inverted lists of each query token's top ncells centroids
        if ncells == 1:
            cells = torch.unique(scores.argmax(dim=0))
        else:
            cells = torch.unique(torch.topk(scores, min(ncells, C), dim=0).indices)
        cand = torch.unique(self.ivf_docs[ranges(self.ivf_offsets[cells], self.ivf_offsets[cells + 1])])
        if self.any_deleted:
            cand = cand[~self.deleted[cand]]
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        if cand.numel() == 0:
            return empty, torch.zeros(0, device=self.device)
        # 2. centroid interaction over the centroids that pass the threshold only (PLAID's pruning)
        if cand.numel() > ndocs:
            kept = torch.nonzero(scores.amax(dim=1) >= threshold).flatten()   # amax: ~9x faster than max() here
            cand = self._pruned_stage(table, cand, kept, ndocs)
        # 3. full centroid interaction on the survivors; a quarter go on
        n_exact = max(k, ndocs // 4)
        if cand.numel() > n_exact:
            starts, ends = self.pair_offsets[cand], self.pair_offsets[cand + 1]
            approx = segment_maxsim(table, self.pair_codes[ranges(starts, ends)], ends - starts)
            cand = cand[_top(approx, n_exact)]
        # 4. exact MaxSim over the decompressed vectors of the survivors (in index order: sequential reads)
        cand = torch.sort(cand).values
        lens = self.doclens[cand]
        rows = ranges(self.doc_offsets[cand], self.doc_offsets[cand] + lens)
        sim = torch.cat([self.similarities(rows, q), torch.full((1, q.shape[0]), -1e4, device=self.device)])
        exact = segment_maxsim(sim, torch.arange(len(rows), device=self.device), lens)
        order = torch.sort(exact, descending=True, stable=True).indices[:k]
        return cand[order], exact[order]

    def _pruned_stage(self, table: torch.Tensor, cand: torch.Tensor, kept: torch.Tensor, n: int) -> torch.Tensor:
        """Top n candidates by MaxSim over their centroids that passed the threshold (others count 0)."""
        # Walk the inverted lists of the kept centroids only: their length, not the candidates' total
        # number of centroids, bounds the work, which is what makes the pruning pay off.
        starts, ends = self.ivf_offsets[kept], self.ivf_offsets[kept + 1]
        docs = self.ivf_docs[ranges(starts, ends)]
        codes = torch.repeat_interleave(kept, ends - starts)
        # A document -> candidate-slot map (-1 elsewhere); one per thread, so that threads can share the
        # engine, and reset after use (a binary search instead was 2x slower than this whole stage).
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = torch.full((len(self.doclens),), -1, dtype=torch.int64, device=self.device)
        slots[cand] = torch.arange(cand.numel(), device=self.device)
        where = slots[docs]
        slots[cand] = -1
        inside = where >= 0
        where, codes = where[inside], codes[inside]
        # Scores start at 0, the value colbert-ai gives pruned centroids; scatter-max is the fastest
        # grouped reduction here (no sort by document needed).
        best = torch.zeros((cand.numel(), table.shape[1]), device=self.device)
        if codes.numel():
            best.scatter_reduce_(0, where[:, None].expand(-1, table.shape[1]), F.embedding(codes, table), "amax")
        return cand[_top(best.sum(dim=1), n)]
