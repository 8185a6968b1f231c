"""A shard set against one index (issue 43), on one machine: quality per shard count and what serving on Ray costs.

Quality (SciFact test by default, v5): PLAID's top 10 against exact MaxSim's top 10 of one index (overlap@10 and
nDCG@10) for one index, for shard sets of N = 2, 4, 8 sharing one codec (`build_set`), and for N shards that each
train their own codec (the earlier way, experiments/scale/sharded/); and a check that exact search over a set equals
exact search over one index with the same codec. Every index is built from one encoding of the corpus (the
experiment harness's vector cache), so only the codec and the sharding differ.

Cost (N = 1, 2, 4, the default preset, k=10, queries encoded beforehand so that only the search and the hop count):
p50/p95 of the in-process sharded search (threads) against the same set on Ray actors, one query at a time;
throughput with 4 client threads; each actor's resident memory.

    .venv/bin/medcolbert bench shards --out experiments/scale/shard-set
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medcolbert.bench import overlap_at_k


def overlap(a: dict, b: dict, k: int = 10) -> float:
    """Mean overlap@k of two runs ({query: {doc: score}} best first) over the reference b's queries."""
    return overlap_at_k([a[q] for q in b], [b[q] for q in b], k)


def main(argv: list[str] | None = None) -> None:
    """Build, measure, write."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default="checkpoints/medcolbert-minilm-v5")
    ap.add_argument("--vectors", default=".cache/experiments/hybrid-panel/vectors",
                    help="a vector cache folder to reuse (the harness's), else encoded once into --work")
    ap.add_argument("--work", default=".cache/shards/scifact")
    ap.add_argument("--shards", default="2,4,8")
    ap.add_argument("--hop-shards", default="1,2,4", help="shard counts for the Ray hop ('' to skip it)")
    ap.add_argument("--max-queries", type=int, default=None, help="the first N judged queries (default: all)")
    ap.add_argument("--shards-per-actor", type=int, default=1, help="shards one Ray actor holds (default: 1)")
    ap.add_argument("--no-exact-check", action="store_true",
                    help="skip building one more index to check exact search over the largest set (saves a build)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch

    from medcolbert import ColBERT, evaluate, load_beir
    from medcolbert.bench import cpu_model, percentiles, time_each, write_results
    from medcolbert.indexing.index import Index
    from medcolbert.indexing.shards import build_set, shard_of
    from medcolbert.machine import cpu_features
    from medcolbert.modeling.encoder import encode_queries_pooled
    from medcolbert.scoring import score_candidates
    from medcolbert.search.plaid import SearchConfig, Searcher
    from medcolbert.search.sharded import ShardedSearcher
    from medcolbert.vector_cache import CachedEncoder, VectorCache

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = load_beir(args.data, args.split)
    corpus = {d: doc.full_text for d, doc in data.corpus.items()}
    qids = [q for q in sorted(data.qrels) if q in data.queries][:args.max_queries]
    queries = {q: data.queries[q] for q in qids}
    model = ColBERT.from_pretrained(args.model, device="cpu")
    cache_root = Path(args.vectors) if Path(args.vectors).is_dir() else work / "vectors"
    cached = CachedEncoder(model, VectorCache(model, cache_root), corpus)

    def built(path: Path, docs: dict, **options):  # type: ignore[no-untyped-def]
        return Index.open(path) if (path / "manifest.json").is_file() else \
            Index.build(path, cached, docs, show_progress=False, **options)

    one = built(work / "one", corpus)
    Q, P = encode_queries_pooled(model, [queries[q] for q in qids], show_progress=False)
    encoded = {q: (Q[i], None if P is None else P[i]) for i, q in enumerate(qids)}

    def run_of(searcher, k: int = 10, **knobs) -> dict:  # type: ignore[no-untyped-def]
        return {q: {d: x for d, x, _ in searcher.search_hits(encoded[q][0], k, encoded[q][1], **knobs)}
                for q in qids}

    exact = run_of(Searcher(one, model, SearchConfig(exact=True)))
    # A second reference that no codec shapes: exact scores over the uncompressed vectors (and float pooled vectors),
    # by the one scoring function the searchers use. Against it a set's codec is judged on its own merits rather
    # than by how closely it reproduces the one index's compression.
    doc_ids = list(corpus)
    if P is not None:
        D, Dp = cached.encode_documents([corpus[d] for d in doc_ids], pooled=True)
    else:
        D, Dp = cached.encode_documents([corpus[d] for d in doc_ids]), None
    uncompressed = {}
    for q in qids:
        s = score_candidates(encoded[q][0], D, model.config, encoded[q][1], Dp)
        top = torch.topk(s, 10).indices.tolist()
        uncompressed[q] = {doc_ids[j]: float(s[j]) for j in top}
    del D, Dp
    qrels = {q: data.qrels[q] for q in qids}
    rows = [{"system": "one index", "shards": 1, "codec": "own",
             "run": run_of(Searcher(one, model))}]
    exact_equal = None
    for n in [int(x) for x in args.shards.split(",") if x]:
        set_path = work / f"set-{n}"
        if not (set_path / "shards.json").is_file():
            build_set(set_path, cached, corpus, shards=n, show_progress=False)
        shared = ShardedSearcher.from_set(set_path, model)
        rows.append({"system": "shard set, one codec", "shards": n, "codec": "shared", "run": run_of(shared)})
        exact_equal = None
        if n == max(int(x) for x in args.shards.split(",")) and not args.no_exact_check:
            # Exact search over the set equals exact search over one index with the set's codec.
            same = built(work / f"one-codec-of-set-{n}", corpus, codec=shared.searchers[0].index.codec)
            a = run_of(ShardedSearcher.from_set(set_path, model, SearchConfig(exact=True)))
            b = run_of(Searcher(same, model, SearchConfig(exact=True)))
            exact_equal = all(list(a[q]) == list(b[q]) for q in qids)
        own = []
        for s in range(n):
            part = {d: t for d, t in corpus.items() if shard_of(d, n) == s}
            own.append(built(work / f"own-{n}" / f"shard-{s}", part))
        rows.append({"system": "shards, each its own codec", "shards": n, "codec": "own",
                     "run": run_of(ShardedSearcher(own, model))})
        shared.close()
    for row in rows:
        row["overlap@10 with exact"] = round(overlap(row["run"], exact), 4)
        row["overlap@10 with uncompressed exact"] = round(overlap(row["run"], uncompressed), 4)
        row["ndcg@10"] = round(evaluate(row["run"], qrels, ["ndcg@10"])["ndcg@10"], 4)
    exact_ndcg = round(evaluate(exact, qrels, ["ndcg@10"])["ndcg@10"], 4)
    uncompressed_ndcg = round(evaluate(uncompressed, qrels, ["ndcg@10"])["ndcg@10"], 4)

    hop = []
    hop_counts = [int(x) for x in args.hop_shards.split(",") if x]
    # ---- the Ray hop
    import ray

    from medcolbert.search.ray_shards import RayShardedSearcher

    if hop_counts:
        ray.init(include_dashboard=False, log_to_driver=False)
    order = qids[:200]
    for n in hop_counts:
        set_path = work / f"set-{n}"
        if not (set_path / "shards.json").is_file():
            build_set(set_path, cached, corpus, shards=n, show_progress=False)
        local = ShardedSearcher.from_set(set_path, model)
        served = RayShardedSearcher(set_path, model, shards_per_actor=args.shards_per_actor)
        entry = {"shards": n}
        for name, searcher in (("in-process", local), ("ray", served), ("in-process again", local),
                               ("ray again", served)):
            def one_query(q: str, s=searcher) -> object:  # type: ignore[no-untyped-def]
                return s.search_hits(encoded[q][0], 10, encoded[q][1])

            entry[name] = percentiles(time_each(one_query, order, warmup=10), (50, 95))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(one_query, order))
            entry[f"{name} qps (4 clients)"] = round(len(order) / (time.perf_counter() - t0), 1)
        entry["actor rss MB"] = [h["rss_mb"] for h in served.health()]
        hop.append(entry)
        served.close()
        local.close()
    if hop_counts:
        ray.shutdown()

    cpu = f"{cpu_model()} [{'+'.join(cpu_features())}], torch threads {torch.get_num_threads()}"
    vectors = int(one.num_embeddings)
    lines = [f"# A shard set against one index ({Path(args.data).name} {args.split}, {len(qids)} queries, k=10, "
             f"{len(corpus):,} documents, {vectors:,} vectors)", "",
             f"CPU: {cpu}. Exact MaxSim nDCG@10 {exact_ndcg}. Exact search over the largest set equals exact search over "
             f"one index with its codec: {'not checked' if exact_equal is None else exact_equal}.",
             f"Uncompressed exact nDCG@10 {uncompressed_ndcg}.", "",
             "Two references: exact search over the one index (its compressed vectors), and exact scores over the "
             "uncompressed vectors (no codec).", "",
             "| system | shards | codec | overlap@10 with exact | with uncompressed exact | nDCG@10 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['system']} | {r['shards']} | {r['codec']} | {r['overlap@10 with exact']} | "
              f"{r['overlap@10 with uncompressed exact']} | {r['ndcg@10']} |"
              for r in rows]
    if hop:
        lines += ["", f"Ray actors each hold {args.shards_per_actor} shard(s). Search only (queries encoded "
                  "beforehand), default preset, k=10, ms; each system measured twice, in turn; throughput with 4 "
                  "client threads over the same 200 queries.", "",
                  "| shards | in-process p50 / p95 | Ray p50 / p95 | in-process again | Ray again | qps in-process "
                  "| qps Ray | actor RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for e in hop:
        f = lambda name: f"{e[name]['p50_ms']:.2f} / {e[name]['p95_ms']:.2f}"  # noqa: E731
        lines.append(f"| {e['shards']} | {f('in-process')} | {f('ray')} | {f('in-process again')} | {f('ray again')} "
                     f"| {e['in-process again qps (4 clients)']} | {e['ray again qps (4 clients)']} | "
                     f"{', '.join(map(str, e['actor rss MB']))} |")
    result = {"cpu": cpu, "exact_ndcg@10": exact_ndcg, "uncompressed_ndcg@10": uncompressed_ndcg, "exact_equal": exact_equal,
              "quality": [{k: v for k, v in r.items() if k != "run"} for r in rows], "hop": hop}
    write_results(Path(args.out) / "results.json", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
