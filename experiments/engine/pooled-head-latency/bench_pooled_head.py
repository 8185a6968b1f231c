"""What the pooled head costs at search time: one model's PLAID search with and without it, side by side.

Opens a PLAID index that holds pooled vectors (the flagship leaves one per data set in its work folder) and times
every query one at a time at k, in alternating rounds (A B A B ...), for the model as released (MaxSim + pooled
head: PLAID's top max(k, 100) on colbert-ai's knobs joined with the pooled nearest max(k, 100), all scored
exactly) and for the same model with dense_weight 0 (MaxSim only on the quality preset, v2's search). Each time
is split into query encoding and the search after it. nDCG@10 of the very results timed. Raw latencies to
OUT/latency.json, a table to OUT/latency.md.
Usage: python experiments/engine/pooled-head-latency/bench_pooled_head.py --index FOLDER --data BEIR_FOLDER --split dev --out OUT [--k 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medcolbert import ColBERT, evaluate, load_beir
from medcolbert.modeling.encoder import encode_queries_pooled
from medcolbert.bench import cpu_model
from medcolbert.search.plaid import Searcher


def timed_round(searcher: Searcher, queries: dict[str, str], k: int) -> tuple[dict, list[float], list[float]]:
    """One pass over the queries: the run, and per query the encoding and search milliseconds."""
    run, encode_ms, search_ms = {}, [], []
    for qid, text in queries.items():
        t0 = time.perf_counter()
        q, q_pooled = encode_queries_pooled(searcher.model, [text], show_progress=False)
        t1 = time.perf_counter()
        hits = searcher.search_encoded(q[0], k, q_pooled=None if q_pooled is None else q_pooled[0])
        t2 = time.perf_counter()
        run[qid] = dict(hits)
        encode_ms.append((t1 - t0) * 1e3)
        search_ms.append((t2 - t1) * 1e3)
    return run, encode_ms, search_ms


def main() -> None:
    """Time both ways of searching one index and write the raw numbers and a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--model", default=None, help="default: the released default model")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--queries", type=int, default=50, help="the first N query ids in sorted order")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = load_beir(args.data, split=args.split)
    queries = {q: data.queries[q] for q in sorted(data.queries)[: args.queries]}
    hybrid = ColBERT.from_pretrained(args.model, device="cpu")
    if hybrid.config.dense_weight <= 0:
        raise SystemExit(f"{args.model or 'the default model'} has no pooled head (dense_weight 0): nothing to compare")
    maxsim_only = ColBERT.from_pretrained(args.model, device="cpu", dense_weight=0.0)
    systems = {f"MaxSim + pooled head (dense_weight {hybrid.config.dense_weight:g})": Searcher(args.index, hybrid),
               "MaxSim only (dense_weight 0)": Searcher(args.index, maxsim_only)}
    for searcher in systems.values():  # warm-up: traced query graphs, page cache
        timed_round(searcher, dict(list(queries.items())[:5]), args.k)
    raw: dict[str, dict[str, list[float]]] = {name: {"encode_ms": [], "search_ms": []} for name in systems}
    scores: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, searcher in systems.items():
            run, enc, srch = timed_round(searcher, queries, args.k)
            raw[name]["encode_ms"] += enc
            raw[name]["search_ms"] += srch
            scores[name] = evaluate(run, {q: data.qrels[q] for q in queries if q in data.qrels}, ["ndcg@10"])["ndcg@10"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "k": args.k, "queries": len(queries),
            "rounds": args.rounds, "index": Path(args.index).name, "data": Path(args.data).name, "split": args.split}
    (out / "latency.json").write_text(json.dumps({"meta": meta, "ndcg@10": scores, "raw": raw}, indent=1) + "\n")
    lines = [f"# Pooled head at search time ({meta['cpu']}, {meta['threads']} threads, k={args.k}, "
             f"{len(queries)} queries x {args.rounds} alternating rounds, one query at a time)", "",
             "| system | p50 total ms | p50 encode ms | p50 search ms | p95 total ms | nDCG@10 (these queries) |",
             "|---|---|---|---|---|---|"]
    for name, r in raw.items():
        total = np.add(r["encode_ms"], r["search_ms"])
        lines.append(f"| {name} | {np.percentile(total, 50):.1f} | {np.percentile(r['encode_ms'], 50):.1f} | "
                     f"{np.percentile(r['search_ms'], 50):.1f} | {np.percentile(total, 95):.1f} | {scores[name]:.4f} |")
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
