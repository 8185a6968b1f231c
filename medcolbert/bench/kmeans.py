"""Centroid training cost at scale: flat against two-level k-means, time and fit, on realistic token vectors.

Vectors: real token vectors decompressed from an index of real documents (e.g. MedQuAD with the default model),
resampled with the same Gaussian noise as medcolbert/bench/scale.py, at the sample size the builder uses for each
centroid count (48 vectors per centroid). For each centroid count, both methods train on the same sample with
the same seed; fit = mean cosine of 50,000 held-out vectors to their nearest centroid (what the residual
codec then has to encode). Flat k-means runs only up to --max-flat centroids (its cost grows with sample x
centroids, i.e. with the centroid count squared here). Records experiments/engine/kmeans/speed/.

  .venv/bin/medcolbert bench kmeans \
      --source-index .cache/experiments/flagship/plaid-medquad-nbits2-e5788db7db3657701e20648f \
      --centroids 4096 8192 16384 65536 --max-flat 8192
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from medcolbert.bench.scale import NOISE  # noqa: E402
from medcolbert.bench import cpu_model as cpu_name  # noqa: E402
from medcolbert.bench import write_results

from medcolbert.indexing.builder import SAMPLE_POINTS_PER_CENTROID  # noqa: E402
from medcolbert.indexing.kmeans import train_centroids  # noqa: E402

HELD_OUT = 50_000


def resample(source: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows drawn from the source with per-dimension Gaussian noise, renormalized."""
    out = np.empty((n, source.shape[1]), np.float32)
    for start in range(0, n, 1 << 20):
        rows = source[rng.integers(0, len(source), min(1 << 20, n - start))]
        block = rows + rng.normal(0.0, NOISE, size=rows.shape).astype(np.float32)
        out[start:start + len(rows)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def fit(held: np.ndarray, centroids: np.ndarray) -> float:
    """Mean cosine of each held-out vector to its nearest centroid."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    scores, _ = index.search(held, 1)
    return float(scores.mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-index", required=True, help="an index of real documents whose vectors are resampled")
    ap.add_argument("--centroids", type=int, nargs="+", default=[4096, 8192, 16384, 65536])
    ap.add_argument("--max-flat", type=int, default=8192, help="largest centroid count flat k-means is run at")
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--out", default="experiments/engine/kmeans/speed")
    args = ap.parse_args(argv)
    import torch

    from medcolbert.indexing.index import Index

    index = Index.open(args.source_index)
    source = index.codec.decompress(index.codes, index.residual_rows(np.arange(index.num_embeddings))).numpy()
    rng = np.random.default_rng(0)
    held = resample(source, HELD_OUT, rng)
    rows = []
    for k in args.centroids:
        sample = resample(source, k * SAMPLE_POINTS_PER_CENTROID, rng)
        for method in ("flat", "two-level"):
            if method == "flat" and k > args.max_flat:
                continue
            t0 = time.perf_counter()
            centroids = train_centroids(sample, k, niter=args.niter, seed=0, method=method)
            seconds = time.perf_counter() - t0
            row = {"centroids": k, "sample": len(sample), "method": method, "seconds": round(seconds, 2),
                   "fit_cosine": round(fit(held, centroids), 5), "trained": int(len(centroids))}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del sample
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "source_index": Path(args.source_index).name,
            "source_vectors": int(len(source)), "noise_per_dim": NOISE, "niter": args.niter,
            "held_out": HELD_OUT, "command": " ".join(["medcolbert bench kmeans", *sys.argv[1:]])}
    lines = [f"CPU: {meta['cpu']}; sample = {SAMPLE_POINTS_PER_CENTROID} vectors per centroid (the builder's), "
             f"resampled from {meta['source_index']} with noise; fit = mean cosine of {HELD_OUT} held-out vectors "
             f"to their nearest centroid; {args.niter} iterations.", "",
             "| centroids | sample vectors | method | seconds | fit (cosine) |", "|---|---|---|---|---|"]
    lines += [f"| {r['centroids']:,} | {r['sample']:,} | {r['method']} | {r['seconds']} | {r['fit_cosine']} |" for r in rows]
    write_results(out / "results.json", {"meta": meta, "rows": rows}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
