"""PLAID knobs against exact MaxSim on one index, search stages only: nDCG@10, agreement of the top 10 with
exact search, and per-query milliseconds (queries encoded once beforehand, compiled CPU stages).

Each setting is "ncells,threshold,ndocs[,exact_docs]" (exact_docs: how many of the ndocs survivors are scored
exactly; default ndocs // 4, colbert-ai's rule). Records OUT.json / OUT.md with lscpu's model name:

  .venv/bin/python experiments/engine/plaid-knobs/v2/bench_plaid_knobs.py --data ../shared/data/medquad/dev-retrieval --split dev \
      --index .cache/experiments/flagship/plaid-medquad-nbits2-e5788db7db3657701e20648f --max-queries 500 \
      --k 10 --settings 1,0.5,256 2,0.45,1024,512 4,0.4,4096@100 --out experiments/engine/plaid-knobs/v2/grid-medquad
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from medcolbert.bench import cpu_model as cpu_name


def main() -> None:
    """Grid over the settings; one table per k."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--index", required=True)
    ap.add_argument("--max-queries", type=int, default=None, help="the first N query ids in sorted order")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--settings", nargs="+", required=True, help="ncells,threshold,ndocs[,exact_docs][@k] (k: this "
                    "setting's own k instead of --k)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--exact-cache", default=None, help="JSON file keeping the exact top 100 between runs (same index and queries)")
    args = ap.parse_args()

    from medcolbert.evaluation.datasets import load_beir
    from medcolbert.evaluation.metrics import evaluate
    from medcolbert.indexing.index import Index
    from medcolbert.search.engine import PlaidEngine
    from medcolbert.search.exact import exact_search

    data = load_beir(args.data, args.split)
    qids = sorted(q for q in data.queries if q in data.qrels)[: args.max_queries]
    qrels = {q: data.qrels[q] for q in qids}
    index = Index.open(args.index)
    model = index.load_model(None, device="cpu")
    Q = model.encode_queries([data.queries[q] for q in qids], show_progress=False)
    queries = [Q[i][Q[i].abs().sum(-1) > 0] for i in range(len(qids))]
    ids = index.doc_ids
    cache = Path(args.exact_cache) if args.exact_cache else None
    key = f"{Path(args.index).name}:{len(index)}:{','.join(qids)}"
    saved = json.loads(cache.read_text()) if cache and cache.exists() else None
    if saved and saved["key"] == key:
        exact, exact_ms = saved["run"], saved["ms"]
    else:
        t0 = time.perf_counter()
        exact = {qid: dict(hits) for qid, hits in zip(qids, exact_search(index, Q, 100))}
        exact_ms = (time.perf_counter() - t0) * 1000 / len(qids)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "run": exact, "ms": exact_ms}))
    exact_top = {q: [d for d, _ in sorted(h.items(), key=lambda kv: -kv[1])[:10]] for q, h in exact.items()}
    rows = [{"setting": "exact MaxSim", "ndcg@10": evaluate(exact, qrels, ["ndcg@10"])["ndcg@10"],
             "recall@100": evaluate(exact, qrels, ["recall@100"])["recall@100"],
             "top10_agreement": 1.0, "p50_ms": None, "mean_ms": exact_ms}]
    engine = PlaidEngine(index, "cpu")
    for setting in args.settings:
        knobs, _, own_k = setting.partition("@")
        k = int(own_k) if own_k else args.k
        parts = knobs.split(",")
        ncells, threshold, ndocs = int(parts[0]), float(parts[1]), int(parts[2])
        exact_docs = int(parts[3]) if len(parts) > 3 else None
        run, times = {}, []
        for qid, q in zip(qids, queries):
            t = time.perf_counter()
            docs, scores = engine.search(q, k, ncells, threshold, max(ndocs, k), exact_docs=exact_docs)
            times.append((time.perf_counter() - t) * 1000)
            run[qid] = {ids[d]: float(s) for d, s in zip(docs.tolist(), scores.tolist())}
        agree = np.mean([len(set(exact_top[q][: min(10, k)]) & set(list(run[q])[:10])) / min(10, k) for q in qids])
        rows.append({"setting": setting, "k": k, "ndcg@10": evaluate(run, qrels, ["ndcg@10"])["ndcg@10"],
                     "recall@100": evaluate(run, qrels, ["recall@100"])["recall@100"] if k >= 100 else None,
                     "top10_agreement": float(agree), "p50_ms": float(np.percentile(times[3:], 50)),
                     "mean_ms": float(np.mean(times[3:]))})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "index": Path(args.index).name,
            "documents": len(index), "centroids": index.codec.num_centroids, "queries": len(qids), "k": args.k}
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    base = rows[0]["ndcg@10"]
    lines = [f"PLAID settings against exact MaxSim (k={args.k} unless the setting names its own): {Path(args.data).name} {args.split}, {len(qids)} queries, "
             f"{len(index)} documents, {meta['centroids']} centroids; search stages only (queries encoded beforehand), "
             f"{meta['torch_threads']} torch threads, {meta['cpu']}.", "",
             "| ncells, threshold, ndocs[, exact_docs][@k] | nDCG@10 | minus exact | R@100 | top-10 agreement with exact | p50 ms | mean ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p50 = "" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        rec = "" if r.get("recall@100") is None else f"{r['recall@100']:.4f}"
        lines.append(f"| {r['setting']} | {r['ndcg@10']:.4f} | {r['ndcg@10'] - base:+.4f} | {rec} | {r['top10_agreement']:.3f} | "
                     f"{p50} | {r['mean_ms']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
