"""Nearest-centroid assignment at scale: exact (every centroid) against faiss HNSW or an inverted file (IVF) over them.

Real token vectors (decompressed from an index built from real documents) are split into centroids and
queries; for each centroid count, exact and HNSW assignment are timed on the same vectors and compared
(agreement of the chosen centroid, and the dot product lost when HNSW picks another one). The cost of
assigning 100M vectors is extrapolated from the measured per-vector time. Records JSON + Markdown.

  .venv/bin/medcolbert bench assignment --index .cache/bench/query-length/index \
      --out experiments/engine/assignment/speed
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from medcolbert.bench import cpu_model as cpu_name
from medcolbert.bench import write_results
from medcolbert.indexing.codec import HNSWAssigner
from medcolbert.indexing.index import Index


class IVFAssigner:
    """Nearest centroid through a faiss inverted file over the centroids (about sqrt(C) lists, nprobe of them
    searched). Measured against HNSW here only: it was no faster at the same agreement, so the library
    does not offer it (experiments/engine/assignment/ivf/)."""

    def __init__(self, centroids: torch.Tensor, nprobe: int = 16) -> None:
        import faiss

        table = np.ascontiguousarray(centroids.numpy(), dtype=np.float32)
        nlist = max(1, 2 ** round(np.log2(np.sqrt(table.shape[0]))))
        self.quantizer = faiss.IndexFlatIP(table.shape[1])   # kept alive: the inverted file does not own it
        self.index = faiss.IndexIVFFlat(self.quantizer, table.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = 0
        self.index.train(table)
        self.index.add(table)
        self.index.nprobe = min(nprobe, nlist)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(vectors.float().numpy(), dtype=np.float32)
        _, ids = self.index.search(x, 1)
        return torch.from_numpy(ids[:, 0].astype(np.int64))


def exact(vectors: torch.Tensor, centroids: torch.Tensor, batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Best centroid and its score for every vector, by brute force."""
    ids, scores = [], []
    for s in range(0, vectors.shape[0], batch):
        sim = vectors[s:s + batch] @ centroids.T
        best = sim.max(dim=1)
        ids.append(best.indices)
        scores.append(best.values)
    return torch.cat(ids), torch.cat(scores)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="an index built from real documents (its vectors are used)")
    ap.add_argument("--centroids", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--queries", type=int, default=100_000, help="vectors to assign per setting")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[], help="also time an inverted file over the centroids")
    ap.add_argument("--out", default="experiments/engine/assignment/speed")
    args = ap.parse_args(argv)

    index = Index.open(args.index)
    all_rows = np.arange(index.num_embeddings)
    vectors = index.codec.decompress(index.codes, index.residual_rows(all_rows)).float()
    rng = np.random.default_rng(0)
    perm = torch.from_numpy(rng.permutation(vectors.shape[0]))
    queries = vectors[perm[: args.queries]]
    pool = vectors[perm[args.queries:]]
    result = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "index": Path(args.index).name,
              "source_vectors": int(vectors.shape[0]), "query_vectors": int(queries.shape[0]), "settings": []}
    for c in args.centroids:
        if c > pool.shape[0]:
            print(f"skipping {c} centroids: only {pool.shape[0]} vectors to draw them from")
            continue
        # Centroids drawn from the real vectors (k-means++-style seeding, no iterations: training 65k
        # centroids is out of reach here), so their spread follows the collection's.
        centroids = pool[torch.from_numpy(rng.choice(pool.shape[0], c, replace=False))].contiguous()
        t0 = time.perf_counter()
        ex_ids, ex_scores = exact(queries, centroids)
        t_exact = time.perf_counter() - t0
        t0 = time.perf_counter()
        assigner = HNSWAssigner(centroids)
        t_build = time.perf_counter() - t0
        row = {"centroids": c, "exact_s": round(t_exact, 3),
               "exact_us_per_vector": round(t_exact / queries.shape[0] * 1e6, 3),
               "exact_100M_vectors_hours": round(t_exact / queries.shape[0] * 1e8 / 3600, 2),
               "hnsw_build_s": round(t_build, 3), "hnsw": []}
        t0 = time.perf_counter()
        ivf = IVFAssigner(centroids) if args.nprobe else None
        row["ivf_build_s"] = round(time.perf_counter() - t0, 3)
        settings = [("hnsw", ef) for ef in args.ef_search] + [("ivf", n) for n in args.nprobe]
        for method, ef in settings:
            if method == "hnsw":
                assigner.index.hnsw.efSearch = ef
            else:
                ivf.index.nprobe = ef
            t0 = time.perf_counter()
            ids = (assigner if method == "hnsw" else ivf)(queries)
            t = time.perf_counter() - t0
            got = (queries * centroids[ids]).sum(dim=1)
            lost = (ex_scores - got).clamp_min(0)
            row["hnsw"].append({"method": method, "ef_search": ef, "s": round(t, 3), "us_per_vector": round(t / queries.shape[0] * 1e6, 3),
                                "speedup": round(t_exact / t, 2), "same_centroid": round(float((ids == ex_ids).float().mean()), 4),
                                "mean_dot_lost": round(float(lost.mean()), 5), "p99_dot_lost": round(float(lost.quantile(0.99)), 5),
                                "100M_vectors_hours": round(t / queries.shape[0] * 1e8 / 3600, 3)})
            print(c, row["hnsw"][-1], "exact", row["exact_s"], flush=True)
        result["settings"].append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"CPU: {result['cpu']}, {result['torch_threads']} torch threads; {result['query_vectors']} real token "
             f"vectors of {result['index']} assigned per setting.", "",
             "| centroids | exact µs/vector | exact, 100M vectors | approximate: efSearch (HNSW) or nprobe (IVF) | µs/vector | speed-up | same centroid | mean dot lost | p99 dot lost |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["settings"]:
        for h in row["hnsw"]:
            lines.append(f"| {row['centroids']} | {row['exact_us_per_vector']} | {row['exact_100M_vectors_hours']} h | "
                         f"{h.get('method', 'hnsw')} {h['ef_search']} | {h['us_per_vector']} | {h['speedup']}x | {h['same_centroid']} | "
                         f"{h['mean_dot_lost']} | {h['p99_dot_lost']} |")
    write_results(out / "results.json", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
