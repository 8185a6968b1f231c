"""The PLAID compute engine: the index as arrays on one device, and the search stages over them.

Every stage is written in plain torch, so the same code runs on CPU and on CUDA. On CPU, when the install
built the optional compiled stages (search/_plaid_cpu.c, nothing is compiled at import or at first use),
stages 1-3 and the exact stage run there instead: same results, several times faster. How the exact stage
scores (from the compressed codes by lookups, or by rebuilding vectors and multiplying with torch's or numpy's
BLAS) is chosen by timing each on this machine once (`choose_exact_stage`), since CPUs differ in which is
fastest. Per-query scratch space is per thread, so one engine can serve many threads.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.nn import functional as F

from ..indexing.codec import dequantize
from ..indexing.index import Index
from ..indexing.storage import ranges as np_ranges
from ..machine import cpu_id, cpu_model, remembered, torch_capability
from . import cpu_kernel

# How the compiled path scores its exact stage, fastest first on the machine that chose the order:
# "lut" scores from the compressed vectors (centroid score + one lookup per residual byte, WARP's idea), the
# others rebuild each vector (C loop) and multiply with torch's or numpy's BLAS, or do both in torch.
EXACT_STAGES = ("lut", "decompress+torch", "decompress+numpy", "torch")


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
    EXACT_SLICE_ROWS = 1 << 18  # exact() over many documents scores them this many vectors at a time
    EXACT_SHARE = 4           # the exact stage scores a quarter of the candidates stages 1-2 kept ...
    EXACT_FLOOR = 64          # ... and at least this many (colbert-ai's fewest), or all: a handful of coarse
                              # centroids cannot rank a small collection's documents on their own

    def __init__(self, index: Index, device: str | torch.device = "cpu", compiled: bool | None = None,
                 exact_stage: str | None = None) -> None:
        """compiled: use the compiled CPU stages (None: where built and the device is the CPU); exact_stage: how
        the compiled path scores its exact stage, one of EXACT_STAGES (None: $MEDCOLBERT_EXACT_STAGE, else the
        fastest measured on this machine)."""
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
            self._init_kernel(index, exact_stage)
            return
        self.exact_choice = {"chosen": "torch engine", "reason": "no compiled stages" if d.type == "cpu" else d.type}
        self.exact_stage = "torch engine"

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

    def _init_kernel(self, index: Index, exact_stage: str | None) -> None:
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
        bt = self._np["byte_table"]
        self._byte_table3 = np.ascontiguousarray(bt.reshape(-1, 256, bt.shape[1]))   # [byte position, value, dims]
        self.exact_choice = choose_exact_stage(self, force=exact_stage)
        self.exact_stage = self.exact_choice["chosen"]
        self._norms = self._vector_norms() if self.exact_stage == "lut" else None

    def _vector_norms(self) -> np.ndarray:
        """Every stored vector's norm once rebuilt (the lookup stage divides by it, as decompression does)."""
        n = len(self._np["codes"])
        norms = np.empty(n, dtype=np.float32)
        step = self.SCRATCH_LIMIT // self._np["centroids8"].shape[1]   # rows whose vectors fit one scratch buffer
        for lo in range(0, n, step):
            norms[lo:lo + step] = self._decompressed(np.arange(lo, min(n, lo + step), dtype=np.int64))[1]
        return norms

    def _centroid_table(self, q: torch.Tensor) -> np.ndarray:
        """The query's centroid scores [C + 1, Lq] in this thread's scratch, with a last row of 0 standing for
        padding and pruned centroids (as in colbert-ai)."""
        C = self.num_centroids
        table = self._scratch("table", (C + 1) * q.shape[0]).reshape(C + 1, q.shape[0])
        torch.mm(self.centroids, q.T, out=torch.from_numpy(table[:C]))
        table[C] = 0
        return table

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
               stats: dict | None = None, exact_docs: int | None = None,
               allowed: np.ndarray | None = None, extra: np.ndarray | None = None,
               scored: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k document positions and their exact MaxSim scores for one query [Lq, dim], best first.

        allowed: a boolean mask over positions (a metadata filter's matches, deletions already out): only those
        documents become candidates, so every stage works on matching documents alone (pre-filtering).

        stats, if given, receives the candidate count after each stage (the compiled path reports the last two).
        exact_docs: how many of the survivors are scored exactly (default a quarter of those that stages 1-2
        kept, at least max(k, EXACT_FLOOR): colbert-ai's ndocs / 4 where stage 2 keeps ndocs, fewer where stage 1
        found fewer).
        extra: positions of documents chosen elsewhere (a hybrid search's pooled-side nearest) whose exact MaxSim
        `scored` receives ({position: score}), computed in the same pass as the survivors' where it can be (one
        lookup table, one call); they do not compete for the top k.
        """
        n_exact, share = (max(k, self.EXACT_FLOOR), self.EXACT_SHARE) if exact_docs is None else (max(k, exact_docs), 0)
        extra = None if extra is None or len(extra) == 0 else np.unique(np.asarray(extra, dtype=np.int64))
        if extra is not None and scored is None:
            raise ValueError("extra documents need a `scored` dict to receive their scores")
        if self.kernel is not None:
            return self._search_compiled(q, k, ncells, threshold, ndocs, stats, n_exact, share, allowed, extra, scored)
        if extra is not None:
            docs, scores = self.exact(q, extra)
            scored.update(zip(docs.tolist(), scores.tolist()))  # type: ignore[union-attr]
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
        if allowed is not None:
            cand = cand[torch.tensor(allowed, device=self.device)[cand]]
        elif self.any_deleted:
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
        if share:
            n_exact = max(n_exact, cand.numel() // share)
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
            lens = self._np["doclens"][docs]
            total = int(lens.sum())
            # Many documents (a broad filter, brute-force search): every centroid's score costs less than
            # gathering the rows' own, and lets the lookup stage read the index's arrays in place.
            table = self._centroid_table(q) if total > self.num_centroids else None
            # In slices of about EXACT_SLICE_ROWS vectors: memory stays bounded whatever the number of documents.
            ends = np.searchsorted(np.cumsum(lens), np.arange(self.EXACT_SLICE_ROWS, total, self.EXACT_SLICE_ROWS),
                                   side="right")
            parts = [self._exact_compiled(q, part, None, table) for part in np.split(docs, ends) if len(part)]
            return torch.from_numpy(docs), torch.from_numpy(np.concatenate(parts))
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

    def _search_compiled(self, q: torch.Tensor, k: int, ncells: int, threshold: float, ndocs: int, stats: dict | None,
                         n_exact: int, share: int, allowed: np.ndarray | None, extra: np.ndarray | None = None,
                         scored: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`search` through the compiled stages (CPU)."""
        a, kernel = self._np, self.kernel
        assert kernel is not None
        t0 = time.perf_counter()
        q = q.to("cpu", torch.float32).contiguous()
        table = self._centroid_table(q)
        t1 = time.perf_counter()
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = np.full(len(a["doclens"]), -1, dtype=np.int32)
        # A filter enters as the documents to skip, the way deletions do: the kernel never sees the others.
        skip = self._deleted if allowed is None else self._excluded(allowed)
        cand = kernel.candidates(table, a["ivf_offsets"], a["ivf_docs"], a["pair_offsets"], a["pair_codes"],
                                 skip, ncells, threshold, ndocs, n_exact, slots, share)
        cand = np.sort(cand).astype(np.int64)   # index order: sequential reads of the residuals
        t2 = time.perf_counter()
        if extra is not None:
            # The survivors and the extra documents scored in one pass (one lookup table); only survivors rank.
            joined = np.union1d(cand, extra)
            every = self._exact_compiled(q, joined, stats, table)
            scored.update(zip(extra.tolist(), every[np.searchsorted(joined, extra)].tolist()))  # type: ignore[union-attr]
            exact = every[np.isin(joined, cand, assume_unique=True)]
        elif len(cand):
            exact = self._exact_compiled(q, cand, stats, table)
        if len(cand) == 0:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        order = np.argsort(-exact, kind="stable")[:k]
        if stats is not None:   # where a search's time goes, per stage
            t3 = time.perf_counter()
            stats.update({"centroid_scores_ms": (t1 - t0) * 1000, "candidates_ms": (t2 - t1) * 1000,
                          "exact_ms": (t3 - t2) * 1000})
        return torch.from_numpy(cand[order]), torch.from_numpy(exact[order])

    def _exact_compiled(self, q: torch.Tensor, cand: np.ndarray, stats: dict | None, table: np.ndarray | None = None,
                        stage: str | None = None) -> np.ndarray:
        """Exact MaxSim of q [Lq, dim] (float32, CPU) with documents cand (sorted positions), compiled stages.

        table: the query's centroid scores [C + 1, Lq] where stage 1 computed them; stage: one of EXACT_STAGES
        (default: the one chosen for this machine)."""
        a = self._np
        lens, starts = a["doclens"][cand], a["doc_offsets"][cand]
        if stats is not None:
            stats["exact_scored"], stats["vectors_decompressed"] = len(cand), int(lens.sum())
        stage = stage or self.exact_stage
        if stage == "lut":
            return self._exact_lut(q, lens, starts, table)
        rows = np_ranges(starts, starts + lens)
        if stage == "torch":
            vectors = dequantize(torch.from_numpy(a["codes"][rows].astype(np.int64)),
                                 torch.from_numpy(np.ascontiguousarray(self.index.residual_rows(rows))),
                                 self.centroids, self.index.codec._byte_table, self.index.codec._row_base)
            norms = vectors.norm(dim=-1).clamp_min_(1e-12).numpy()
            sim = (vectors @ q.T).numpy()
            return self.kernel.segment_maxsim(np.ascontiguousarray(sim), lens, norms)  # type: ignore[union-attr]
        vectors, norms = self._decompressed(rows)
        sim = self._scratch("sim", len(rows) * q.shape[0]).reshape(len(rows), q.shape[0])
        if stage == "decompress+numpy":
            np.matmul(vectors, q.numpy().T, out=sim)
        else:
            torch.mm(torch.from_numpy(vectors), q.T, out=torch.from_numpy(sim))
        # Scores of unnormalized vectors divided by their norms, as the torch stages compute them.
        return self.kernel.segment_maxsim(sim, lens, norms)  # type: ignore[union-attr]

    def _decompressed(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rebuilt vectors [n, dim] (unnormalized) of global rows, and their norms, in per-thread buffers."""
        a, kernel = self._np, self.kernel
        assert kernel is not None
        n, dim = len(rows), a["centroids8"].shape[1]
        vectors, norms = self._scratch("vectors", n * dim).reshape(n, dim), self._scratch("norms", n)
        if self._packed is not None:
            codes, packed, which = a["codes"], self._packed, rows
        else:
            codes, packed = a["codes"][rows], np.ascontiguousarray(self.index.residual_rows(rows))
            which = np.arange(n, dtype=np.int64)

        def decompress(lo: int, hi: int) -> None:
            kernel.decompress(codes, packed, a["centroids8"], a["scales"], a["byte_table"], which[lo:hi],
                              vectors[lo:hi], norms[lo:hi])

        self._on_two_threads(decompress, n)
        return vectors, norms

    def _exact_lut(self, q: torch.Tensor, lens: np.ndarray, starts: np.ndarray, table: np.ndarray | None) -> np.ndarray:
        """The exact stage scored from the compressed vectors: centroid scores plus residual byte lookups."""
        a, kernel = self._np, self.kernel
        assert kernel is not None and self._norms is not None
        qn = q.numpy()
        if self._packed is not None and table is not None:
            codes, packed, norms, first = a["codes"], self._packed, self._norms, starts
        else:
            # Rows gathered (an index of several segments, or documents chosen outside a search): the centroid
            # scores are then computed for the centroids these rows use only.
            rows = np_ranges(starts, starts + lens)
            used, codes = np.unique(a["codes"][rows], return_inverse=True)
            codes = codes.astype(np.int32).reshape(-1)
            packed = np.ascontiguousarray(self.index.residual_rows(rows))
            norms = self._norms[rows]
            first = np.cumsum(lens) - lens
            table = torch.mm(self.centroids[torch.from_numpy(used)], q.T).numpy()
        bt = self._byte_table3
        # lut[b, v, j]: the residual values byte value v packs at byte position b, dotted with query token j; rows
        # padded with zero columns to the width the kernel's vector loops read (zero-padded query tokens).
        # torch, not numpy, multiplies: numpy's BLAS has its own thread pool, which fights torch's for the cores.
        width = kernel.lut_width(qn.shape[0])
        qw = q if width == qn.shape[0] else torch.cat([q, q.new_zeros(width - qn.shape[0], q.shape[1])])
        lut = self._scratch("lut", bt.shape[0] * 256 * width).reshape(bt.shape[0], 256, width)
        torch.bmm(torch.from_numpy(bt), qw.T.reshape(bt.shape[0], bt.shape[2], width), out=torch.from_numpy(lut))
        out = np.empty(len(lens), dtype=np.float32)

        def score(lo: int, hi: int) -> None:
            out[lo:hi] = kernel.exact_lut(table, lut, codes, packed, norms, first[lo:hi], lens[lo:hi])

        # Split by documents so that each half holds about half the vectors; worth a hand-off only for larger
        # stages than decompression (the lookups are several times cheaper per vector).
        self._on_two_threads(score, len(lens), int(lens.sum()) // 4,
                             lambda half: int(np.searchsorted(np.cumsum(lens), 4 * half)))
        return out

    def _on_two_threads(self, fn, n: int, work: int | None = None, split=None) -> None:  # type: ignore[no-untyped-def]
        """fn(0, n), as two halves on two cores when the work is large and torch may use two threads (the
        kernel calls release the GIL; smaller stages cost more to hand off than they save)."""
        work = n if work is None else work
        if work < self.SPLIT_ROWS or torch.get_num_threads() < 2 or n < 2:
            fn(0, n)
            return
        half = split(work // 2) if split is not None else n // 2
        half = min(max(half, 1), n - 1)
        helper = self._helper().submit(fn, half, n)
        fn(0, half)
        helper.result()

    def _excluded(self, allowed: np.ndarray) -> np.ndarray:
        """The uint8 skip mask of a filter's matches (kept for the last mask this thread used: a filter is
        usually searched with many queries in a row)."""
        last = getattr(self._local, "excluded", None)
        if last is not None and last[0] is allowed:
            return last[1]
        if allowed.shape != (len(self._np["doclens"]),) or allowed.dtype != np.bool_:
            raise ValueError(f"allowed must be a boolean mask over the {len(self._np['doclens'])} index entries")
        excluded = (~allowed).view(np.uint8)
        self._local.excluded = (allowed, excluded)
        return excluded

    def _helper(self) -> ThreadPoolExecutor:
        """One worker thread that takes half of a query's decompression."""
        with self._helper_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="medcolbert-plaid")
            return self._pool

    def _scratch(self, name: str, size: int) -> np.ndarray:
        """A float32 buffer of `size` for this thread, reused between queries (fresh pages cost more than the work)."""
        if size > self.SCRATCH_LIMIT:   # a rare large request does not leave every thread holding its memory
            return _aligned_floats(size)
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        buf = buffers.get(name)
        if buf is None or len(buf) < size:
            grown = min(self.SCRATCH_LIMIT, 2 * len(buf)) if buf is not None else 0
            buf = buffers[name] = _aligned_floats(max(size, grown))
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


def _aligned_floats(n: int) -> np.ndarray:
    """An empty float32 array of n that starts on a 64-byte (cache line) boundary.

    The lookup loops read 8- or 16-float rows of these buffers with AVX2 / AVX-512 loads; numpy only promises 16-byte alignment
    for smaller arrays, and two engines over the same index, one buffer on a boundary and one off it, took 0.61
    and 1.0 ms a query in the exact stage (MedQuAD 1k)."""
    raw = np.empty(n + 16, dtype=np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + n]


def _stage_key(engine: PlaidEngine) -> str:
    codec = engine.index.codec
    kernel = f"|kernel r{engine.kernel.revision} {engine.kernel.isa}" if engine.kernel is not None else ""
    return f"{cpu_id()}|torch {torch.__version__} {torch_capability()}|numpy {np.__version__}|{torch.get_num_threads()} threads|" \
           f"dim {codec.dim}|nbits {codec.nbits}{kernel}"


def measure_exact_stages(engine: PlaidEngine, repeats: int = 7, docs: int = 96, doclen: int = 96,
                         query_tokens: int = 32) -> dict:
    """Time each exact stage on this machine over synthetic codes of the engine's codec (the kind of work a
    search's exact stage does: `docs` documents of `doclen` vectors, one query), in turns."""
    rng = np.random.default_rng(0)
    codec = engine.index.codec
    # An engine of its own over the synthetic codes, built the way any index's is (its norms for the lookup stage).
    probe = PlaidEngine(_SyntheticIndex(codec, rng, docs, doclen), "cpu", compiled=True, exact_stage="lut")  # type: ignore[arg-type]
    q = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((query_tokens, codec.dim), dtype=np.float32)), dim=-1)
    table = probe._centroid_table(q)
    cand = np.arange(docs, dtype=np.int64)
    times: dict[str, list[float]] = {s: [] for s in EXACT_STAGES}
    reference = probe._exact_compiled(q, cand, None, table, "decompress+torch")
    agree = {}
    for stage in EXACT_STAGES:
        got = probe._exact_compiled(q, cand, None, table, stage)
        agree[stage] = float(np.abs(got - reference).max())
    # Blocks of calls per stage in a rotating order over three rounds (each block's first call a warm-up), so
    # that a library whose own thread pool keeps spinning (numpy's OpenBLAS) does not slow whichever stage
    # comes next. Each timed unit is a small torch product, the stage, then torch ops on its scores, as in a
    # search, so that such a stage pays for the torch work around it that it slows. The best of the calls
    # counts: other work on the machine only adds time.
    wake = probe.centroids[:256]
    for round_ in range(3):
        for stage in EXACT_STAGES[round_:] + EXACT_STAGES[:round_]:
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                torch.mm(wake, q.T)
                scores = probe._exact_compiled(q, cand, None, table, stage)
                torch.topk(torch.from_numpy(scores), 10)
                torch.mm(wake, q.T)
                if i:
                    times[stage].append((time.perf_counter() - t0) * 1000)
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "vectors": docs * doclen,
            "p50_ms": {s: round(statistics.median(t), 4) for s, t in times.items()},
            "best_ms": {s: round(min(t), 4) for s, t in times.items()},
            "max_abs_diff": {s: round(v, 7) for s, v in agree.items()}}


class _SyntheticIndex:
    """The arrays PlaidEngine reads from an Index, for `docs` documents of `doclen` random codes and packed
    residuals of a codec and no inverted lists: what the exact stage reads, for timing only."""

    def __init__(self, codec, rng: np.random.Generator, docs: int, doclen: int) -> None:  # type: ignore[no-untyped-def]
        n = docs * doclen
        self.codec = codec
        self.codes = rng.integers(0, codec.num_centroids, n, dtype=np.int32)
        self._residual_parts = [rng.integers(0, 256, (n, codec.bytes_per_residual), dtype=np.uint8)]
        self.doc_offsets = np.arange(docs + 1, dtype=np.int64) * doclen
        self.doclens = np.full(docs, doclen, dtype=np.int64)
        self.deleted = np.zeros(docs, dtype=bool)
        self.ivf_offsets = np.zeros(codec.num_centroids + 1, dtype=np.int64)
        self.ivf_docs = np.zeros(0, dtype=np.int32)
        self.pair_offsets = np.zeros(docs + 1, dtype=np.int64)
        self.pair_codes = np.zeros(0, dtype=np.int32)

    def residual_rows(self, rows: np.ndarray) -> np.ndarray:
        """Packed residuals of rows."""
        return self._residual_parts[0][rows]


def choose_exact_stage(engine: PlaidEngine, force: str | None = None, remeasure: bool = False) -> dict:
    """The compiled path's exact stage for this machine: force (or $MEDCOLBERT_EXACT_STAGE), else the fastest
    measured, timed once per CPU model, library versions, thread count, dimension and nbits and remembered."""
    choice = force or os.environ.get("MEDCOLBERT_EXACT_STAGE", "auto")
    if choice not in ("auto", *EXACT_STAGES):
        raise ValueError(f"MEDCOLBERT_EXACT_STAGE must be auto or one of {', '.join(EXACT_STAGES)}, got {choice!r}")
    if choice != "auto":
        return {"chosen": choice, "reason": "forced"}

    def measured() -> dict:
        entry = measure_exact_stages(engine)
        entry["chosen"] = min(entry["best_ms"], key=entry["best_ms"].get)
        return entry

    entry = remembered("exact-stage", _stage_key(engine), measured,
                       lambda e: e.get("chosen") in EXACT_STAGES and "best_ms" in e, remeasure)
    return {**entry, "reason": "measured"}
