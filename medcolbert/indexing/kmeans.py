"""k-means centroids over a sample of token vectors (faiss; on the GPU when faiss-gpu and CUDA are there)."""

from __future__ import annotations

import math

import numpy as np


CENTROIDS_PER_SQRT = 16


def default_num_centroids(num_embeddings: int, factor: float = CENTROIDS_PER_SQRT) -> int:
    """The power of two at or below factor * sqrt(number of token vectors)."""
    # colbert-ai's rule (factor 16). Until 2026-12-03 the factor was 8, to keep a 2-bit index under 34 bytes per
    # vector; with the v4 model on consumer-health dev (2.7M vectors) 2-bit PLAID scored 0.5812 nDCG@10 at 8,192
    # centroids, 0.5915 at 16,384 and 0.5937 at 32,768 (4-bit at 8,192: 0.5899) for 0.5 and 1.4 more bytes per
    # vector (experiments/engine/v4-e2e/centroids/), and on 1,000 MedQuAD documents twice the centroids raised PLAID
    # from 0.757 to 0.805 (experiments/engine/plaid-scaling/centroids-medquad-1000/): 2-bit residuals need fine centroids.
    if num_embeddings <= 0:
        raise ValueError("cannot size centroids for an empty collection")
    target = factor * math.sqrt(num_embeddings)
    return int(2 ** max(0, math.floor(math.log2(max(1.0, target)))))


def gpu_available() -> bool:
    """Whether faiss was built with GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


KMEANS_METHODS = ("flat", "two-level")
# At or past this many centroids, "auto" clusters in two levels: flat k-means costs sample x centroids x
# iterations (1,043 s for 16,384 centroids over 786k vectors on 2 cores, experiments/scale/), which grows with
# the collection's size to the power 1.5 (both factors grow with its square root) and makes 65k centroids for
# 100M vectors take hours; two levels cost sample x 2 sqrt(centroids) x iterations (experiments/engine/kmeans/speed/).
TWO_LEVEL_MIN_CENTROIDS = 16384


def resolve_kmeans(method: str, num_centroids: int) -> str:
    """"auto" by size: flat k-means below TWO_LEVEL_MIN_CENTROIDS centroids, two-level from there."""
    if method != "auto":
        if method not in KMEANS_METHODS:
            raise ValueError(f"kmeans must be auto, flat or two-level, got {method!r}")
        return method
    return "two-level" if num_centroids >= TWO_LEVEL_MIN_CENTROIDS else "flat"


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _flat(sample: np.ndarray, k: int, niter: int, seed: int, use_gpu: bool, verbose: bool = False) -> np.ndarray:
    import faiss

    if k >= sample.shape[0]:  # as many centroids as points: the points are the centroids
        return _unit(sample[:k].copy())
    if k == 1:
        return _unit(sample.mean(axis=0, keepdims=True))
    kmeans = faiss.Kmeans(sample.shape[1], k, niter=niter, seed=seed, gpu=use_gpu, verbose=verbose,
                          spherical=True, max_points_per_centroid=256)
    kmeans.train(sample)
    return _unit(kmeans.centroids.astype(np.float32))


def share_out(total: int, sizes: np.ndarray) -> np.ndarray:
    """`total` split over groups in proportion to `sizes` (largest remainders), at most a group's size; every
    non-empty group gets at least one while there are enough. Sums to min(total, sizes.sum())."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(min(total, sizes.sum()))
    exact = total * sizes / max(int(sizes.sum()), 1)
    share = np.minimum(np.floor(exact).astype(np.int64), sizes)
    share[(sizes > 0) & (share == 0)] = 1
    # Too many (the ones given to small groups): take back where a group keeps one, most over its due first.
    while share.sum() > total:
        keeps = share > 1 if (share > 1).any() else share > 0
        share[np.argmax(np.where(keeps, share - exact, -np.inf))] -= 1
    # Too few: give to the groups with the largest remainders that still have room.
    while share.sum() < total:
        room = np.where(share < sizes, exact - share, -np.inf)
        share[np.argmax(room)] += 1
    return share


def _two_level(sample: np.ndarray, k: int, niter: int, seed: int, use_gpu: bool) -> np.ndarray:
    # sqrt(k) coarse clusters, then each coarse cluster's points get k-means of their share of the k centroids:
    # every point is compared with about 2 sqrt(k) centroids per iteration instead of k.
    import faiss

    n_coarse = max(1, min(int(round(math.sqrt(k))), sample.shape[0]))
    coarse = _flat(sample, n_coarse, niter, seed, use_gpu)
    index = faiss.IndexFlatIP(sample.shape[1])
    index.add(coarse)
    _, labels = index.search(sample, 1)
    labels = labels[:, 0]
    counts = np.bincount(labels, minlength=n_coarse)
    shares = share_out(k, counts)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    parts = [_flat(sample[order[bounds[c]:bounds[c + 1]]], int(shares[c]), niter, seed + 1 + c, use_gpu)
             for c in range(n_coarse) if shares[c] > 0]
    return np.concatenate(parts).astype(np.float32)


def train_centroids(sample: np.ndarray, num_centroids: int, niter: int = 10, seed: int = 0,
                    use_gpu: bool | None = None, verbose: bool = False, method: str = "flat") -> np.ndarray:
    """Unit-length k-means centroids [num_centroids, dim] (float32) of the sample's rows.

    method "flat" is one spherical k-means; "two-level" clusters into sqrt(num_centroids) groups first and
    each group into its share of the centroids ("auto": by size, see resolve_kmeans).
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise ValueError("k-means needs a non-empty [n, dim] sample")
    k = min(num_centroids, sample.shape[0])
    if use_gpu is None:
        use_gpu = gpu_available()
    if resolve_kmeans(method, k) == "two-level":
        return _two_level(sample, k, niter, seed, bool(use_gpu))
    return _flat(sample, k, niter, seed, bool(use_gpu), verbose)
