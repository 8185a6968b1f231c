"""Filtered search: latency and correctness per filter selectivity, against unfiltered search and post-filtering.

For each selectivity (the share of documents the filter matches) and seed, a random id-set filter (`id in {...}`,
evaluated once from the index's id column and cached, as any repeated filter is) is searched with the same
encoded queries, one at a time, search only, k=10:
  unfiltered      PLAID without the filter (the reference cost)
  pre-filter      PLAID with the filter inside its candidate stages (Searcher.FILTER_EXACT_VECTORS = 0)
  exact subset    exact MaxSim over every matching document (FILTER_EXACT_VECTORS = infinity)
  default         what Searcher chooses by the subset's size (FILTER_EXACT_VECTORS as shipped)
  post-filter     unfiltered PLAID for k / selectivity hits (at most --post-k), then the matching ones kept
Correctness: overlap@10 of pre-filter and default with exact MaxSim over the subset (brute force over the
filter's documents, `exact=True`; with a pooled head, plus its term), hits outside the filter (must be 0), and whether k hits came back
whenever k documents match. Raw per-query numbers and the CPU's model name go to OUT/results.json, a table to
OUT/results.md.

  .venv/bin/medcolbert bench filters --index .cache/scale-v5/index-1000000 \\
      --queries-npy .cache/scale-v5/queries.npy --out experiments/engine/filters/scale-1m
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from medcolbert.bench import cpu_model, percentiles, write_results
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher


def timed(fn, items):  # type: ignore[no-untyped-def]
    """(milliseconds, result) of fn(item) for each item, one at a time, after two warm-up calls."""
    for item in items[:2]:
        fn(item)
    out = []
    for item in items:
        t0 = time.perf_counter()
        got = fn(item)
        out.append(((time.perf_counter() - t0) * 1000, got))
    return out


def main(argv: list[str] | None = None) -> None:
    """Run every selectivity and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries-npy", required=True, help="encoded queries [n, Lq, dim] (e.g. bench_scale's queries.npy)")
    ap.add_argument("--pooled-npy", default=None, help="their pooled vectors, for an index searched with a pooled head")
    ap.add_argument("--num-queries", type=int, default=30)
    ap.add_argument("--selectivities", type=float, nargs="+", default=[0.001, 0.01, 0.1, 0.5])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--post-k", type=int, default=1000, help="largest k post-filtering may ask for")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = Index.open(args.index)
    model = index.load_model(device="cpu")
    searcher = Searcher(index, model)
    Q = torch.from_numpy(np.load(args.queries_npy)[: args.num_queries])
    P = torch.from_numpy(np.load(args.pooled_npy)[: args.num_queries]) if args.pooled_npy else None
    qs = list(range(len(Q)))
    k = args.k
    shipped = searcher.FILTER_EXACT_VECTORS
    N = len(index)

    def search(i: int, where=None, kk: int = k, **knobs):  # type: ignore[no-untyped-def]
        return searcher.search_encoded(Q[i], kk, q_pooled=None if P is None else P[i], where=where, **knobs)

    result: dict = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "index": Path(args.index).name,
                    "documents": N, "vectors": int(index.doclens[~index.deleted].sum()), "queries": len(qs), "k": k,
                    "exact_stage": searcher.engine.exact_stage, "filter_exact_vectors": shipped, "runs": []}
    base = timed(search, qs)
    result["unfiltered"] = percentiles([ms for ms, _ in base], (50, 95))
    print(f"unfiltered: p50 {result['unfiltered']['p50_ms']:.2f} ms", flush=True)
    for share in args.selectivities:
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed * 1000 + int(share * 1e6))
            size = max(1, round(share * N))
            ids = [index.doc_ids[p] for p in rng.choice(np.flatnonzero(~index.deleted), size, replace=False)]
            where = {"id": ids}
            t0 = time.perf_counter()
            mask = index.matching(where)
            filter_ms = (time.perf_counter() - t0) * 1000
            allowed = set(ids)
            vectors = int(index.doclens[mask].sum())
            row: dict = {"selectivity": share, "seed": seed, "documents": size, "vectors": vectors,
                         "filter_eval_ms": filter_ms}
            # The ground truth: exact MaxSim over the subset (brute force; with a pooled head, plus its term).
            truth_ids = [[d for d, _ in search(i, mask, exact=True)] for i in qs]
            for name, limit in (("pre-filter", 0), ("exact subset", 1 << 62), ("default", shipped)):
                searcher.FILTER_EXACT_VECTORS = limit
                got = timed(lambda i: search(i, mask), qs)
                hits = [[d for d, _ in h] for _, h in got]
                row[name] = {**percentiles([ms for ms, _ in got], (50, 95)),
                             "overlap@10": float(np.mean([len(set(h[:10]) & set(t[:10])) / max(1, len(t[:10]))
                                                          for h, t in zip(hits, truth_ids)])),
                             "outside_filter": int(sum(d not in allowed for h in hits for d in h)),
                             "k_hits_when_k_match": bool(all(len(h) == min(k, size) for h in hits))}
            searcher.FILTER_EXACT_VECTORS = shipped
            post_k = min(args.post_k, N, math.ceil(k / share))
            got = timed(lambda i: search(i, None, post_k), qs)
            kept = [[d for d, _ in h if d in allowed][:k] for _, h in got]
            row["post-filter"] = {**percentiles([ms for ms, _ in got], (50, 95)), "k_asked": post_k,
                                  "mean_hits": float(np.mean([len(h) for h in kept])),
                                  "overlap@10": float(np.mean([len(set(h) & set(t[:10])) / max(1, len(t[:10]))
                                                               for h, t in zip(kept, truth_ids)]))}
            result["runs"].append(row)
            print(f"{share:.3%} seed {seed}: " + ", ".join(
                f"{n} p50 {row[n]['p50_ms']:.2f} ms" for n in ("pre-filter", "exact subset", "default", "post-filter")),
                flush=True)
            write_results(out / "results.json", result, report(result))   # after each selectivity: a partial record
    print(report(result))


def report(result: dict) -> str:
    """Medians over seeds per selectivity."""
    lines = [f"# {result['index']}: {result['documents']:,} documents, {result['vectors']:,} vectors; "
             f"{result['queries']} queries, k={result['k']}, search only", "",
             f"CPU: {result['cpu']} ({result['threads']} threads); exact stage {result['exact_stage']}; unfiltered "
             f"PLAID p50 {result['unfiltered']['p50_ms']:.2f} ms, p95 {result['unfiltered']['p95_ms']:.2f} ms; "
             f"the default switches to exact MaxSim at <= {result['filter_exact_vectors']:,} matching vectors.", "",
             "| selectivity | matching docs / vectors | pre-filter p50 / p95 ms (overlap@10) | exact subset p50 / p95 ms | "
             "default p50 ms (overlap@10) | post-filter p50 ms (k asked, mean hits, overlap@10) | outside filter | "
             "k hits when k match |", "|---|---|---|---|---|---|---|---|"]
    for share in sorted({r["selectivity"] for r in result["runs"]}):
        rows = [r for r in result["runs"] if r["selectivity"] == share]

        def m(name: str, key: str) -> float:
            return float(np.median([r[name][key] for r in rows]))

        lines.append(
            f"| {share:.1%} | {int(np.median([r['documents'] for r in rows])):,} / {int(np.median([r['vectors'] for r in rows])):,} | "
            f"{m('pre-filter', 'p50_ms'):.2f} / {m('pre-filter', 'p95_ms'):.2f} ({m('pre-filter', 'overlap@10'):.3f}) | "
            f"{m('exact subset', 'p50_ms'):.2f} / {m('exact subset', 'p95_ms'):.2f} | "
            f"{m('default', 'p50_ms'):.2f} ({m('default', 'overlap@10'):.3f}) | "
            f"{m('post-filter', 'p50_ms'):.2f} ({int(m('post-filter', 'k_asked'))}, {m('post-filter', 'mean_hits'):.1f}, "
            f"{m('post-filter', 'overlap@10'):.3f}) | "
            f"{sum(r[n]['outside_filter'] for r in rows for n in ('pre-filter', 'exact subset', 'default'))} | "
            f"{all(r[n]['k_hits_when_k_match'] for r in rows for n in ('pre-filter', 'exact subset', 'default'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
