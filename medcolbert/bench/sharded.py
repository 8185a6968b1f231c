"""Shard-merge simulation: S indexes searched apart and their top k merged, against one index of the same vectors.

Takes S vector shards (e.g. the first shards medcolbert/bench/scale.py wrote, copied aside), builds one index per
shard and one index over all of them (`Index.build_from_vectors`, resumable), then runs the same encoded
queries through both with the compiled CPU stages. For the sharded side every shard is searched in turn and
timed alone, so the latency of S machines each holding one shard is simulated as the slowest shard's time
plus the merge (the network left out), and one machine searching them one after another as their sum.
Quality: overlap of the merged top k with the single index's top k (each shard prunes on its own centroids).
Records experiments/scale/sharded/.

  .venv/bin/medcolbert bench sharded --shards .cache/sharded-sim/shards --model-from \
      .cache/scale/index-1000000 --queries .cache/scale/queries.npy --work .cache/sharded-sim
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medcolbert.bench import cpu_model as cpu_name
from medcolbert.bench import percentiles, write_results

from medcolbert.indexing.index import Index
from medcolbert.search.engine import PlaidEngine
from medcolbert.search.plaid import SearchConfig
from medcolbert.search.sharded import merge_top_k


def build(path: Path, stems: list[Path], model: dict) -> tuple[Index, float]:
    """The index of these shard stems at path (built once; the build time is 0 when it was there)."""
    if (path / "manifest.json").exists():
        return Index.open(path), 0.0
    files = [f"{stem}.vectors.npy" for stem in stems]
    t0 = time.perf_counter()
    index = Index.build_from_vectors(path, files, model_name=model["name"], model_fingerprint=model["fingerprint"],
                                     show_progress=True)
    return index, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True, help="folder of NAME.vectors.npy / NAME.doclens.npy / NAME.ids.txt shards")
    ap.add_argument("--model-from", required=True, help="an index whose manifest names the model that made the vectors")
    ap.add_argument("--queries", required=True, help=".npy of encoded queries [n, Lq, dim] (zero rows are padding)")
    ap.add_argument("--work", default=".cache/sharded-sim")
    ap.add_argument("--out", default="experiments/scale/sharded")
    args = ap.parse_args(argv)

    stems = sorted({p.parent / p.name.split(".")[0] for p in Path(args.shards).glob("*.vectors.npy")})
    if not stems:
        raise SystemExit(f"no NAME.vectors.npy shards in {args.shards}")
    model = Index.open(args.model_from).manifest["model"]
    work = Path(args.work)
    single, single_s = build(work / "single", stems, model)
    shards, shard_s = [], []
    for i, stem in enumerate(stems):
        index, seconds = build(work / f"shard-{i}", [stem], model)
        shards.append(index)
        shard_s.append(seconds)
    Q = torch.from_numpy(np.load(args.queries, allow_pickle=False))
    queries = [Q[i][Q[i].abs().sum(-1) > 0] for i in range(Q.shape[0])]
    one = PlaidEngine(single, "cpu", None)
    apart = [PlaidEngine(ix, "cpu", None) for ix in shards]
    rows = []
    for preset in ("quality", "colbert-ai"):
        for k in (10, 100):
            cfg1 = SearchConfig(preset=preset).resolved(k, len(single))
            cfgs = [SearchConfig(preset=preset).resolved(k, len(ix)) for ix in shards]
            t_one, t_max, t_sum, t_merge, overlap = [], [], [], [], []
            for q in queries:
                t0 = time.perf_counter()
                docs, _ = one.search(q, k, cfg1.ncells, cfg1.centroid_score_threshold, cfg1.ndocs)
                t_one.append(time.perf_counter() - t0)
                best = {single.doc_ids[int(d)] for d in docs}
                parts, times = [], []
                for engine, ix, cfg in zip(apart, shards, cfgs):
                    t0 = time.perf_counter()
                    d, s = engine.search(q, k, cfg.ncells, cfg.centroid_score_threshold, cfg.ndocs)
                    times.append(time.perf_counter() - t0)
                    parts.append([(ix.doc_ids[int(pos)], float(score)) for pos, score in zip(d, s)])
                t0 = time.perf_counter()
                merged = merge_top_k(parts, k)   # ShardedSearcher's own merge
                t_merge.append(time.perf_counter() - t0)
                t_max.append(max(times))
                t_sum.append(sum(times))
                overlap.append(len(best & {doc for doc, _ in merged}) / k)
            ms = lambda xs: round(percentiles(np.array(xs[3:]) * 1000, (50,))["p50_ms"], 2)   # noqa: E731
            ms95 = lambda xs: round(percentiles(np.array(xs[3:]) * 1000, (95,))["p95_ms"], 2)  # noqa: E731
            rows.append({"preset": preset, "k": k, "one_index_p50_ms": ms(t_one), "one_index_p95_ms": ms95(t_one),
                         "shards_parallel_p50_ms": ms([a + b for a, b in zip(t_max, t_merge)]),
                         "shards_parallel_p95_ms": ms95([a + b for a, b in zip(t_max, t_merge)]),
                         "shards_in_turn_p50_ms": ms(t_sum), "merge_p50_ms": round(float(np.median(t_merge)) * 1000, 4),
                         "top_k_overlap_with_one_index": round(float(np.mean(overlap)), 4)})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "shards": len(stems),
            "vectors": int(single.num_embeddings), "documents": len(single),
            "vectors_per_shard": [int(ix.num_embeddings) for ix in shards],
            "centroids": {"one index": single.codec.num_centroids, "per shard": [ix.codec.num_centroids for ix in shards]},
            "build_s": {"one index": round(single_s, 1), "shards": [round(s, 1) for s in shard_s]},
            "queries": len(queries), "command": " ".join(["medcolbert bench sharded", *sys.argv[1:]])}
    lines = [f"CPU: {meta['cpu']}, {meta['torch_threads']} threads; {meta['vectors']:,} vectors ({meta['documents']:,} "
             f"documents) as one index ({meta['centroids']['one index']} centroids) and as {len(stems)} shards of about "
             f"{meta['vectors_per_shard'][0]:,} ({meta['centroids']['per shard'][0]} centroids each); {len(queries)} "
             "real queries, search stages only; S machines = slowest shard + merge (network left out).", "",
             "| preset | k | one index p50 / p95 ms | S machines p50 / p95 ms | one machine, shards in turn p50 ms | merge p50 ms | top-k overlap with one index |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['k']} | {r['one_index_p50_ms']} / {r['one_index_p95_ms']} | "
                     f"{r['shards_parallel_p50_ms']} / {r['shards_parallel_p95_ms']} | {r['shards_in_turn_p50_ms']} | "
                     f"{r['merge_p50_ms']} | {r['top_k_overlap_with_one_index']} |")
    write_results(out / "results.json", {"meta": meta, "rows": rows}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
