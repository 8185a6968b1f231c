"""Residual compression: each vector is its nearest centroid plus a residual quantized to nbits per dimension."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ResidualCodec:
    """Centroids plus per-dimension bucket cutoffs and weights for 1-, 2- or 4-bit residuals."""

    centroids: np.ndarray        # [C, dim] int8; centroid = centroids * centroid_scales
    centroid_scales: np.ndarray  # [C] float16
    bucket_cutoffs: np.ndarray   # [dim, 2**nbits - 1] float32
    bucket_weights: np.ndarray   # [dim, 2**nbits] float32
    nbits: int

    ARRAYS = ("centroids", "centroid_scales", "bucket_cutoffs", "bucket_weights")

    def __post_init__(self) -> None:
        if self.nbits not in (1, 2, 4):
            raise ValueError(f"nbits must be 1, 2 or 4, got {self.nbits}")
        if self.dim * self.nbits % 8:
            raise ValueError(f"dim {self.dim} x nbits {self.nbits} is not a whole number of bytes")
        n = 1 << self.nbits
        if self.bucket_cutoffs.shape != (self.dim, n - 1) or self.bucket_weights.shape != (self.dim, n):
            raise ValueError(f"bucket arrays have shapes {self.bucket_cutoffs.shape} and {self.bucket_weights.shape}, "
                             f"expected ({self.dim}, {n - 1}) and ({self.dim}, {n})")
        if self.centroids.dtype != np.int8 or self.centroid_scales.shape != (self.centroids.shape[0],):
            raise ValueError("centroids must be int8 [C, dim] with one scale per centroid")
        # Residuals are always taken against these dequantized values, so 8-bit centroids cost no accuracy
        # in the reconstruction; they halve the centroid table, which matters on small collections.
        self._centroids32 = torch.from_numpy(self.centroids.astype(np.float32)
                                             * self.centroid_scales.astype(np.float32)[:, None])
        self._cutoffs = torch.from_numpy(self.bucket_cutoffs.astype(np.float32))
        # (byte position, byte value) -> the (8 / nbits) residual values it packs, so decompression is
        # one table lookup per byte. Row index = position * 256 + value.
        per_byte = 8 // self.nbits
        values = np.arange(256, dtype=np.uint16)
        shifts = np.arange(per_byte - 1, -1, -1) * self.nbits
        buckets = (values[:, None] >> shifts[None, :]) & (n - 1)                     # [256, per_byte]
        weights = self.bucket_weights.astype(np.float32).reshape(-1, per_byte, n)     # [positions, per_byte, n]
        table = np.take_along_axis(weights[:, None, :, :], buckets[None, :, :, None].astype(np.int64), axis=3)
        self._byte_table = torch.from_numpy(np.ascontiguousarray(table[..., 0].reshape(-1, per_byte)))
        self._row_base = torch.arange(self.bytes_per_residual, dtype=torch.int32) * 256

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.centroids.shape[1])

    @property
    def num_centroids(self) -> int:
        """Number of centroids."""
        return int(self.centroids.shape[0])

    @property
    def bytes_per_residual(self) -> int:
        """Packed residual size of one vector."""
        return self.dim * self.nbits // 8

    @property
    def centroids_f32(self) -> torch.Tensor:
        """The centroids as float32, [C, dim]."""
        return self._centroids32

    @classmethod
    def fit(cls, centroids: np.ndarray, heldout: np.ndarray, nbits: int) -> "ResidualCodec":
        """Per-dimension bucket cutoffs and weights: quantiles of held-out residuals."""
        # colbert-ai shares one set of buckets across dimensions; the residual spread differs a lot from
        # one dimension to another, and per-dimension quantiles cost 128 x 2**nbits floats.
        scales = (np.abs(centroids).max(axis=1) / 127.0).astype(np.float16)
        scales = np.where(scales > 0, scales, np.float16(1.0)).astype(np.float16)
        stored = np.clip(np.rint(centroids / scales.astype(np.float32)[:, None]), -127, 127).astype(np.int8)
        dim, n = stored.shape[1], 1 << nbits
        codec = cls(stored, scales, np.zeros((dim, n - 1), np.float32), np.zeros((dim, n), np.float32), nbits)
        vectors = torch.from_numpy(np.asarray(heldout, np.float32))
        residuals = vectors - codec._centroids32[codec.assign(vectors)]
        if residuals.shape[0] > 60_000:  # quantiles of 60k values per dimension are plenty
            residuals = residuals[torch.randperm(residuals.shape[0], generator=torch.Generator().manual_seed(0))[:60_000]]
        cutoff_q = torch.arange(1, n, dtype=torch.float32) / n
        weight_q = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        cutoffs = torch.quantile(residuals, cutoff_q, dim=0).T.contiguous().numpy()
        weights = torch.quantile(residuals, weight_q, dim=0).T.contiguous().numpy()
        return cls(stored, scales, cutoffs.astype(np.float32), weights.astype(np.float32), nbits)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays stored on disk, by file stem."""
        return {name: getattr(self, name) for name in self.ARRAYS}

    @classmethod
    def from_arrays(cls, load: Callable[[str], np.ndarray], nbits: int) -> "ResidualCodec":
        """A codec from its stored arrays; load(stem) returns one."""
        return cls(*(load(name) for name in cls.ARRAYS), nbits)

    def use_assignment(self, method: str) -> "ResidualCodec":
        """How compress() finds each vector's centroid: "exact" (every centroid) or "hnsw" (a faiss HNSW graph
        over the centroids: approximate, far cheaper at tens of thousands of centroids)."""
        if method not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {method!r}")
        self._assigner = HNSWAssigner(self._centroids32) if method == "hnsw" else None
        return self

    @property
    def assignment(self) -> str:
        """The centroid assignment compress() uses."""
        return "hnsw" if getattr(self, "_assigner", None) is not None else "exact"

    def assign(self, vectors: torch.Tensor, batch: int = 8192) -> torch.Tensor:
        """Nearest centroid (highest dot product) of each vector, int64 [n] (approximate under "hnsw")."""
        assigner = getattr(self, "_assigner", None)
        if assigner is not None:
            return assigner(vectors)
        out = torch.empty(vectors.shape[0], dtype=torch.int64)
        for s in range(0, vectors.shape[0], batch):
            out[s:s + batch] = (vectors[s:s + batch].float() @ self._centroids32.T).argmax(dim=1)
        return out

    def compress(self, vectors: torch.Tensor, block: int = 32768) -> tuple[np.ndarray, np.ndarray]:
        """Centroid ids (int64 [n]) and packed residuals (uint8 [n, dim * nbits / 8])."""
        n = vectors.shape[0]
        codes = np.empty(n, dtype=np.int64)
        packed = np.empty((n, self.bytes_per_residual), dtype=np.uint8)
        per_byte = 8 // self.nbits
        shifts = (np.arange(per_byte - 1, -1, -1) * self.nbits).astype(np.uint16)
        # Block by block: the temporaries (residuals, bucket comparisons) stay a few MB whatever the chunk's size.
        for s in range(0, n, block):
            part = vectors[s:s + block].float()
            ids = self.assign(part)
            residuals = part - self._centroids32[ids]
            buckets = (residuals.unsqueeze(-1) > self._cutoffs).sum(dim=-1, dtype=torch.uint8).numpy()  # [b, dim]
            grouped = buckets.reshape(buckets.shape[0], -1, per_byte).astype(np.uint16)
            packed[s:s + block] = (grouped << shifts).sum(axis=2).astype(np.uint8)
            codes[s:s + block] = ids.numpy()
        return codes, packed

    def _unnormalized(self, codes: torch.Tensor, packed: np.ndarray) -> torch.Tensor:
        """Centroid plus dequantized residual, float32 [n, dim], before normalization."""
        return dequantize(codes, torch.from_numpy(np.ascontiguousarray(packed)), self._centroids32,
                          self._byte_table, self._row_base)

    def decompress(self, codes: np.ndarray | torch.Tensor, packed: np.ndarray) -> torch.Tensor:
        """Unit-length approximations of the vectors, float32 [n, dim]."""
        vectors = self._unnormalized(torch.as_tensor(np.asarray(codes, dtype=np.int64)), packed)
        return vectors.div_(vectors.norm(dim=-1, keepdim=True).clamp_min_(1e-12))


ASSIGNMENTS = ("exact", "hnsw")
# At or past this many centroids, "auto" assigns through HNSW: there it was 2.8x (16k) to 6.9x (65k) faster than
# exact with 99.7-99.9% the same centroid (medcolbert/bench/assignment.py, experiments/engine/assignment/speed/).
HNSW_MIN_CENTROIDS = 16384


def resolve_assignment(method: str, num_centroids: int) -> str:
    """"auto" by size: exact below HNSW_MIN_CENTROIDS centroids (or without faiss), HNSW from there."""
    if method != "auto":
        if method not in ASSIGNMENTS:
            raise ValueError(f"assignment must be auto, exact or hnsw, got {method!r}")
        return method
    if num_centroids < HNSW_MIN_CENTROIDS:
        return "exact"
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "exact"
    return "hnsw"


class HNSWAssigner:
    """Nearest centroid by inner product through a faiss HNSW graph over the centroids."""

    def __init__(self, centroids: torch.Tensor, m: int = 32, ef_construction: int = 80, ef_search: int = 64) -> None:
        import faiss

        self.index = faiss.IndexHNSWFlat(centroids.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(np.ascontiguousarray(centroids.numpy(), dtype=np.float32))
        self.index.hnsw.efSearch = ef_search

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(vectors.float().numpy(), dtype=np.float32)
        _, ids = self.index.search(x, 1)
        return torch.from_numpy(ids[:, 0].astype(np.int64))


def dequantize(codes: torch.Tensor, packed: torch.Tensor, centroids: torch.Tensor, byte_table: torch.Tensor,
               row_base: torch.Tensor) -> torch.Tensor:
    """Centroid plus dequantized residual, float32 [n, dim], before normalization; inputs on one device.

    `byte_table` maps (byte position * 256 + byte value) to the residual values that byte packs.
    """
    rows = packed.int() + row_base
    # embedding() is a much faster gather on CPU than advanced indexing (measured about 5x here).
    residual = torch.nn.functional.embedding(rows, byte_table).view(rows.shape[0], -1)
    return torch.nn.functional.embedding(codes, centroids).add_(residual)
