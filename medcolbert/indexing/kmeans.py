"""k-means centroids over a sample of token vectors (faiss; on the GPU when faiss-gpu and CUDA are there)."""

from __future__ import annotations

import math

import numpy as np


CENTROIDS_PER_SQRT = 8


def default_num_centroids(num_embeddings: int, factor: float = CENTROIDS_PER_SQRT) -> int:
    """The power of two at or below factor * sqrt(number of token vectors)."""
    # colbert-ai uses factor 16. Half of that makes k-means 4x cheaper on a CPU and, with 8-bit centroids,
    # keeps the centroid table under 1 byte per stored vector, so a 2-bit index stays within 34 bytes per
    # vector. On SciFact, 8 gave the quality of exact MaxSim and 4 lost about 0.01 nDCG@10
    # (experiments/plaid-scifact).
    if num_embeddings <= 0:
        raise ValueError("cannot size centroids for an empty collection")
    target = factor * math.sqrt(num_embeddings)
    return int(2 ** max(0, math.floor(math.log2(max(1.0, target)))))


def gpu_available() -> bool:
    """Whether faiss was built with GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def train_centroids(sample: np.ndarray, num_centroids: int, niter: int = 10, seed: int = 0,
                    use_gpu: bool | None = None, verbose: bool = False) -> np.ndarray:
    """Unit-length k-means centroids [num_centroids, dim] (float32) of the sample's rows."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if sample.ndim != 2 or sample.shape[0] == 0:
        raise ValueError("k-means needs a non-empty [n, dim] sample")
    k = min(num_centroids, sample.shape[0])
    if use_gpu is None:
        use_gpu = gpu_available()
    kmeans = faiss.Kmeans(sample.shape[1], k, niter=niter, seed=seed, gpu=bool(use_gpu), verbose=verbose,
                          spherical=True, max_points_per_centroid=256)
    kmeans.train(sample)
    centroids = kmeans.centroids.astype(np.float32)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids / np.maximum(norms, 1e-12)
