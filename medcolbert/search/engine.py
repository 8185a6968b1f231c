"""The PLAID compute engine: the index as arrays on one device, and the search stages over them.

Every stage is written in plain torch, so the same code runs on CPU and on CUDA. On CPU, when the install
built the optional compiled stages (search/_plaid_cpu.c, nothing is compiled at import or at first use),
stages 1-3 and the exact stage's decompression and MaxSim run there instead: same results, several times
faster. Per-query scratch space is per thread, so one engine can serve many threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.nn import functional as F

from ..indexing.codec import dequantize
from ..indexing.index import Index
from ..indexing.storage import ranges as np_ranges
from . import cpu_kernel


def ranges(starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, e) for each pair, without a Python loop."""
    lens = ends - starts
    total = int(lens.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=starts.device)
    shift = torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens)
    return shift + torch.arange(total, device=starts.device)


def segment_maxsim(table: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor, floor: float | None = None) -> torch.Tensor:
    """Per group of consecutive `rows` (sizes `lens`): sum over columns of the max (at least `floor`) over the group's rows.

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
    best = F.embedding(mat, table).amax(dim=1)
    return (best if floor is None else best.clamp_min_(floor)).sum(dim=1)


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the n largest scores (any order)."""
    return torch.topk(scores, min(n, scores.numel()), sorted=False).indices


class PlaidEngine:
    """An index's arrays on a device and the four PLAID stages over them."""

    SCRATCH_LIMIT = 4 << 20   # floats (16 MB) per reused per-thread buffer
    SPLIT_ROWS = 32768        # exact stages this large decompress on two threads (smaller ones: the hand-off costs more)

    def __init__(self, index: Index, device: str | torch.device = "cpu", compiled: bool | None = None) -> None:
        """compiled: use the compiled CPU stages (None: where built and the device is the CPU)."""
        self.index = index
        self.device = torch.device(device)
        d = self.device
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._helper_lock = threading.Lock()
        self.kernel = cpu_kernel.load() if d.type == "cpu" and compiled is not False else None
        if compiled and self.kernel is None:
            raise RuntimeError("the compiled PLAID stages are not available (CPU only; built at install time with a "
                               "C compiler; MEDCOLBERT_PLAID_KERNEL=torch turns them off)")
        codec = index.codec
        self.centroids = codec.centroids_f32.to(d)
        self.num_centroids = self.centroids.shape[0]
        if self.kernel is not None:
            self._init_kernel(index)
            return

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(d)

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

    def _init_kernel(self, index: Index) -> None:
        """The arrays the compiled stages read, as the index holds them (no int64 copies)."""
        codec = index.codec
        self._np = {
            "ivf_offsets": np.ascontiguousarray(index.ivf_offsets, dtype=np.int64),
            "ivf_docs": np.ascontiguousarray(index.ivf_docs, dtype=np.int32),
            "pair_offsets": np.ascontiguousarray(index.pair_offsets, dtype=np.int64),
            "pair_codes": np.ascontiguousarray(index.pair_codes, dtype=np.int32),
            "doc_offsets": np.ascontiguousarray(index.doc_offsets, dtype=np.int64),
            "doclens": np.ascontiguousarray(index.doclens, dtype=np.int64),
            "codes": np.ascontiguousarray(index.codes, dtype=np.int32),
            "centroids8": np.ascontiguousarray(codec.centroids, dtype=np.int8),
            "scales": codec.centroid_scales.astype(np.float32),
            "byte_table": codec._byte_table.numpy(),
        }
        # One segment (a fresh or compacted index): the kernel reads its memory-mapped residuals directly.
        parts = index._residual_parts
        self._packed = parts[0] if len(parts) == 1 and parts[0].flags.c_contiguous else None
        self._deleted = index.deleted.view(np.uint8) if bool(index.deleted.any()) else None

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
    def search(self, q: torch.Tensor, k: int, ncells: int, threshold: float, ndocs: int,
               stats: dict | None = None, exact_docs: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k document positions and their exact MaxSim scores for one query [Lq, dim], best first.

        stats, if given, receives the candidate count after each stage (the compiled path reports the last two).
        exact_docs: how many of the ndocs survivors are scored exactly (default ndocs // 4, colbert-ai's rule).
        """
        n_exact = max(k, ndocs // 4 if exact_docs is None else exact_docs)
        if self.kernel is not None:
            return self._search_compiled(q, k, ncells, threshold, ndocs, stats, n_exact)
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
        if stats is not None:
            stats["cells"], stats["candidates"] = int(cells.numel()), int(cand.numel())
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        if cand.numel() == 0:
            return empty, torch.zeros(0, device=self.device)
        # 2. centroid interaction over the centroids that pass the threshold only (PLAID's pruning)
        if cand.numel() > ndocs:
            kept = torch.nonzero(scores.amax(dim=1) >= threshold).flatten()   # amax: ~9x faster than max() here
            cand = self._pruned_stage(table, cand, kept, ndocs)
        if stats is not None:
            stats["after_pruning"] = int(cand.numel())
        # 3. full centroid interaction on the survivors; n_exact of them go on
        if cand.numel() > n_exact:
            starts, ends = self.pair_offsets[cand], self.pair_offsets[cand + 1]
            approx = segment_maxsim(table, self.pair_codes[ranges(starts, ends)], ends - starts, floor=0.0)
            cand = cand[_top(approx, n_exact)]
        # 4. exact MaxSim over the decompressed vectors of the survivors
        cand, exact = self._exact_torch(q, cand, stats)
        order = torch.sort(exact, descending=True, stable=True).indices[:k]
        return cand[order], exact[order]

    def exact(self, q: torch.Tensor, docs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact MaxSim of one query [Lq, dim] with the stored vectors of documents at positions docs.

        Returns (positions in index order, their scores): PLAID's last stage, for documents chosen elsewhere
        (the pooled head's nearest, in a hybrid search)."""
        if self.kernel is not None:
            docs = np.sort(np.asarray(docs, dtype=np.int64))
            q = q.to("cpu", torch.float32).contiguous()
            if len(docs) == 0:
                return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
            scores = self._exact_compiled(q, docs, None)
            return torch.from_numpy(docs), torch.from_numpy(scores)
        docs = torch.as_tensor(docs, dtype=torch.int64, device=self.device)
        if docs.numel() == 0:
            return docs, torch.zeros(0, device=self.device)
        return self._exact_torch(q.to(self.device, torch.float32), docs, None)

    def _exact_torch(self, q: torch.Tensor, cand: torch.Tensor, stats: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cand in index order, their exact MaxSim) through the torch stages."""
        cand = torch.sort(cand).values   # index order: sequential reads of the residuals
        lens = self.doclens[cand]
        rows = ranges(self.doc_offsets[cand], self.doc_offsets[cand] + lens)
        if stats is not None:
            stats["exact_scored"], stats["vectors_decompressed"] = int(cand.numel()), int(rows.numel())
        sim = torch.cat([self.similarities(rows, q), torch.full((1, q.shape[0]), -1e4, device=self.device)])
        return cand, segment_maxsim(sim, torch.arange(len(rows), device=self.device), lens)

    def _search_compiled(self, q: torch.Tensor, k: int, ncells: int, threshold: float,
                         ndocs: int, stats: dict | None, n_exact: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`search` through the compiled stages (CPU)."""
        a, kernel = self._np, self.kernel
        assert kernel is not None
        q = q.to("cpu", torch.float32).contiguous()
        C, Lq = self.num_centroids, q.shape[0]
        table = self._scratch("table", (C + 1) * Lq).reshape(C + 1, Lq)
        torch.mm(self.centroids, q.T, out=torch.from_numpy(table[:C]))
        table[C] = 0
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = np.full(len(a["doclens"]), -1, dtype=np.int32)
        cand = kernel.candidates(table, a["ivf_offsets"], a["ivf_docs"], a["pair_offsets"], a["pair_codes"],
                                 self._deleted, ncells, threshold, ndocs, n_exact, slots)
        if len(cand) == 0:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        cand = np.sort(cand).astype(np.int64)   # index order: sequential reads of the residuals
        exact = self._exact_compiled(q, cand, stats)
        order = np.argsort(-exact, kind="stable")[:k]
        return torch.from_numpy(cand[order]), torch.from_numpy(exact[order])

    def _exact_compiled(self, q: torch.Tensor, cand: np.ndarray, stats: dict | None) -> np.ndarray:
        """Exact MaxSim of q [Lq, dim] (float32, CPU) with documents cand (sorted positions), compiled stages."""
        a, kernel = self._np, self.kernel
        assert kernel is not None
        Lq = q.shape[0]
        lens, starts = a["doclens"][cand], a["doc_offsets"][cand]
        rows = np_ranges(starts, starts + lens)
        n, dim = len(rows), a["centroids8"].shape[1]
        if stats is not None:
            stats["exact_scored"], stats["vectors_decompressed"] = len(cand), int(n)
        vectors, norms = self._scratch("vectors", n * dim).reshape(n, dim), self._scratch("norms", n)
        if self._packed is not None:
            codes, packed, which = a["codes"], self._packed, rows
        else:
            codes, packed = a["codes"][rows], np.ascontiguousarray(self.index.residual_rows(rows))
            which = np.arange(n, dtype=np.int64)

        def decompress(lo: int, hi: int) -> None:
            kernel.decompress(codes, packed, a["centroids8"], a["scales"], a["byte_table"], which[lo:hi],
                              vectors[lo:hi], norms[lo:hi])

        # Two halves on two cores when torch may use two threads (the kernel call releases the GIL).
        half = n // 2 if n >= self.SPLIT_ROWS and torch.get_num_threads() > 1 else n
        helper = self._helper().submit(decompress, half, n) if half < n else None
        decompress(0, half)
        if helper is not None:
            helper.result()
        # Scores of unnormalized vectors divided by their norms, as the torch stages compute them.
        sim = self._scratch("sim", n * Lq).reshape(n, Lq)
        torch.mm(torch.from_numpy(vectors), q.T, out=torch.from_numpy(sim))
        return kernel.segment_maxsim(sim, lens, norms)

    def _helper(self) -> ThreadPoolExecutor:
        """One worker thread that takes half of a query's decompression."""
        with self._helper_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="medcolbert-plaid")
            return self._pool

    def _scratch(self, name: str, size: int) -> np.ndarray:
        """A float32 buffer of `size` for this thread, reused between queries (fresh pages cost more than the work)."""
        if size > self.SCRATCH_LIMIT:   # a rare large request does not leave every thread holding its memory
            return np.empty(size, dtype=np.float32)
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        buf = buffers.get(name)
        if buf is None or len(buf) < size:
            grown = min(self.SCRATCH_LIMIT, 2 * len(buf)) if buf is not None else 0
            buf = buffers[name] = np.empty(max(size, grown), dtype=np.float32)
        return buf[:size]

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
