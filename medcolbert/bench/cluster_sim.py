"""A simulated cluster: each shard of a set timed as if it had a node (one core) to itself, the query's latency taken
as the slowest shard's, against one index of the whole collection on one core (issue 43's capacity model).

For every query (encoded once beforehand, search only, default preset, k=10) each shard's search is timed alone on
one thread, one shard after another, so that the per-query times of all shards are known; a cluster that gives every
shard its own node answers when its slowest shard has (plus the network hop and the merge, measured apart: the merge
here, the hop in experiments/scale/shard-set/). The capacity model in docs/engine.md assumes the slowest of N shards
is about each shard's high percentile, as if shards were independent; the simulation shows what the real
per-query maximum is (hard queries are hard on every shard) and what the independent-shards model predicts.

  .venv/bin/medcolbert bench cluster-sim --set .cache/shards/scale/set-10000000-8 \
      --one .cache/shards/scale/one-10000000 --model checkpoints/medcolbert-minilm-v5 \\
      --out experiments/scale/cluster-sim
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def make_set(path: Path, shards: int, vectors: int, source_index: str, codec_from: str, model_path: str | None) -> None:
    """A shard set of resampled vectors, one shard at a time (resumable: finished shards are kept)."""
    import json
    import shutil

    from medcolbert.bench.scale import make_shards
    from medcolbert.fsutil import atomic_write_text
    from medcolbert.indexing.builder import codec_checksum
    from medcolbert.indexing.index import Index
    from medcolbert.indexing.shards import HASH_RULE, SET_FORMAT, SET_VERSION, shard_name
    from medcolbert.indexing.vectors import build_from_vectors

    source = Index.open(source_index)
    model = source.load_model(model_path, device="cpu")
    codec = Index.open(codec_from).codec
    entries = []
    for k in range(shards):
        target = path / shard_name(k)
        if not (target / "manifest.json").is_file():
            folder = path.parent / f".{path.name}-vectors-{k}"
            make_shards(source_index, vectors, folder, seed=100 + k)
            for ids in folder.glob("*.ids.txt"):   # each shard its own documents
                ids.write_text("".join(f"n{k}-{line}\n" for line in ids.read_text().split()))
            build_from_vectors(target, [str(folder)], model_name=model.name,
                               model_fingerprint=model.fingerprint(weights_only=True), codec=codec, overwrite=True,
                               store_documents=False, show_progress=True)
            shutil.rmtree(folder)
        entries.append({"name": shard_name(k), "documents": len(Index.open(target).doc_ids)})
        print(f"shard {k}: {entries[-1]['documents']} documents", flush=True)
    manifest = {"format": SET_FORMAT, "version": SET_VERSION, "count": shards, "hash": HASH_RULE,
                "codec": codec_checksum(codec), "model": model.fingerprint(weights_only=True), "nbits": codec.nbits,
                "documents": sum(e["documents"] for e in entries), "shards": entries,
                "note": "simulation: documents resampled per shard, not routed by the hash rule (read-only)"}
    atomic_write_text(path / "shards.json", json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Time every shard and the one index per query; model the cluster; write the record."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="a shard set folder (medcolbert index --shards, or build_set), or a "
                    "folder of index folders (shards with their own codecs)")
    ap.add_argument("--one", default=None, help="one index of the same collection, timed the same way")
    ap.add_argument("--queries", default="../shared/data/medquad/dev-retrieval", help="BEIR folder of the queries")
    ap.add_argument("--num-queries", type=int, default=300)
    ap.add_argument("--model", default=None, help="the model that encoded the shards (default: the one their manifest names)")
    ap.add_argument("--draws", type=int, default=2000, help="resamplings of the independent-shards model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--make-set", type=int, default=0, metavar="N", help="first build a set of N resampled shards")
    ap.add_argument("--shard-vectors", type=int, default=10_000_000, help="with --make-set: vectors per shard")
    ap.add_argument("--source-index", default=".cache/shards/medquad/one", help="with --make-set: the vectors' source")
    ap.add_argument("--codec-from", default=None, help="with --make-set: the index whose codec every shard shares")
    args = ap.parse_args(argv)
    if args.make_set:
        if not args.codec_from:
            ap.error("--make-set needs --codec-from (an index whose codec the shards share)")
        make_set(Path(args.set), args.make_set, args.shard_vectors, args.source_index, args.codec_from, args.model)

    import torch

    from medcolbert.bench import cpu_model, percentiles, write_results
    from medcolbert.evaluation.datasets import load_queries
    from medcolbert.indexing.index import Index
    from medcolbert.indexing.shards import open_set
    from medcolbert.machine import cpu_features
    from medcolbert.modeling.encoder import encode_queries_pooled
    from medcolbert.search.plaid import Searcher

    torch.set_num_threads(1)   # one core per simulated node
    if (Path(args.set) / "shards.json").is_file():
        shards = open_set(args.set)
    else:   # a folder of index folders that need not share a codec (shards that trained their own)
        shards = [Index.open(p) for p in sorted(Path(args.set).iterdir()) if (p / "manifest.json").is_file()]
        if not shards:
            ap.error(f"{args.set} holds neither shards.json nor index folders")
    model = shards[0].load_model(args.model, device="cpu")
    queries = load_queries(Path(args.queries) / "queries.jsonl")
    texts = [queries[q] for q in sorted(queries)[:args.num_queries]]
    searchers = [Searcher(ix, model) for ix in shards]
    # The pooled vectors only where the shards' scoring uses them (indexes built with pooled vectors).
    Q, P = encode_queries_pooled(model, texts, show_progress=False) if searchers[0].hybrid else \
        (model.encode_queries(texts, show_progress=False), None)

    def time_all(searcher: Searcher) -> tuple[np.ndarray, list]:
        for i in range(min(10, len(texts))):   # warm-up: pages in, kernel choices made
            searcher.search_hits(Q[i], 10, None if P is None else P[i])
        times, hits = np.empty(len(texts)), []
        for i in range(len(texts)):
            t0 = time.perf_counter()
            hits.append(searcher.search_hits(Q[i], 10, None if P is None else P[i]))
            times[i] = (time.perf_counter() - t0) * 1000
        return times, hits

    per_shard, shard_hits = [], []
    for s in searchers:
        t, h = time_all(s)
        per_shard.append(t)
        shard_hits.append(h)
    T = np.stack(per_shard)                       # [shards, queries] ms
    merge_ms = []
    for i in range(len(texts)):
        t0 = time.perf_counter()
        sorted((hit for h in shard_hits for hit in h[i]), key=lambda x: -x[1])[:10]
        merge_ms.append((time.perf_counter() - t0) * 1000)
    cluster = T.max(axis=0)
    rng = np.random.default_rng(0)
    # Independent shards: each shard's time drawn from its own distribution at a random query.
    independent = np.stack([T[s, rng.integers(T.shape[1], size=args.draws)] for s in range(T.shape[0])]).max(axis=0)
    one = None
    if args.one:
        one_times, _ = time_all(Searcher(Index.open(args.one), model))
        one = percentiles(one_times, (50, 95))
    corr = float(np.mean([np.corrcoef(T[a], T[b])[0, 1] for a in range(len(T)) for b in range(a + 1, len(T))]))
    # Which quantile of one shard's times the per-query maximum reaches at its median.
    single = np.sort(T.ravel())
    q50 = float(np.searchsorted(single, np.median(cluster)) / len(single))
    documents = sum(len(ix.doc_ids) for ix in shards)
    cpu = f"{cpu_model()} [{'+'.join(cpu_features())}], 1 torch thread per simulated node"
    result = {"cpu": cpu, "set": Path(args.set).name, "shards": len(shards), "queries": len(texts),
              "vectors_per_shard": [int(ix.num_embeddings) for ix in shards], "documents": documents,
              "centroids_per_shard": [int(ix.codec.centroids.shape[0]) for ix in shards],
              "shard_ms": {f"shard-{s}": percentiles(T[s], (50, 95)) for s in range(len(T))},
              "all_shards_pooled_ms": percentiles(T.ravel(), (50, 95, 99)),
              "cluster_max_ms": percentiles(cluster, (50, 95)), "independent_model_ms": percentiles(independent, (50, 95)),
              "merge_ms": percentiles(merge_ms, (50, 95)), "one_index_ms": one,
              "mean_pairwise_correlation_of_shard_times": round(corr, 3),
              "cluster_p50_as_quantile_of_one_shard": round(q50, 3)}
    f = lambda p: f"{p['p50_ms']:.2f} / {p['p95_ms']:.2f}"  # noqa: E731
    lines = [f"# A simulated cluster: {len(shards)} shards of {result['set']} ({sum(result['vectors_per_shard']):,} "
             f"vectors, {result['centroids_per_shard'][0]:,} centroids per shard), each on its own core", "",
             f"CPU: {cpu}. {len(texts)} queries of {Path(args.queries).name}, search only (encoded beforehand), default preset, "
             "k=10; each shard timed alone per query, one after another.", "",
             "| what | p50 / p95 ms |", "|---|---|",
             f"| one shard (all shards' times pooled) | {f(result['all_shards_pooled_ms'])} |",
             f"| the cluster: slowest shard per query | {f(result['cluster_max_ms'])} |",
             f"| independent-shards model (slowest of {len(shards)} random draws) | {f(result['independent_model_ms'])} |",
             f"| merge of the {len(shards)} top-10 lists | {f(result['merge_ms'])} |"]
    if one:
        lines.append(f"| one index of the whole collection, one core | {f(one)} |")
    lines += ["", f"Shards' times per query correlate (mean pairwise r = {result['mean_pairwise_correlation_of_shard_times']}); "
              f"the cluster's median is one shard's {100 * q50:.0f}th percentile. Add one network hop (0.8-2.6 ms "
              "to 1-4 actors on one machine, experiments/scale/shard-set/ray_roundtrip.txt).", "",
              f"Command: `.venv/bin/medcolbert bench cluster-sim --set {args.set} "
              + (f"--one {args.one} " if args.one else "") + (f"--model {args.model} " if args.model else "")
              + f"--out {args.out}`"]
    write_results(Path(args.out) / "results.json", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
