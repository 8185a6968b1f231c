"""nDCG@10 of PLAID and exact MaxSim against the number of k-means centroids, on one collection.

Builds one index per centroid count in WORK/centroids-C (the checkpoint in WORK/checkpoint, as the other
bench scripts use it) over the same documents and queries as medcolbert/bench/search.py with the same --max-docs
and --max-queries, and writes OUT/centroids.json (one JSON line per count also goes to stdout).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medcolbert import ColBERT, evaluate, load_beir
from medcolbert.bench.search import subset
from medcolbert.indexing.index import Index
from medcolbert.indexing.kmeans import default_num_centroids
from medcolbert.search.plaid import Searcher


def main() -> None:
    """Build, search and record."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/medquad/dev-retrieval")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--work", default=".cache/bench/medquad-1000")
    ap.add_argument("--max-docs", type=int, default=1000)
    ap.add_argument("--max-queries", type=int, default=200)
    ap.add_argument("--centroids", default="2048,4096", help="comma-separated centroid counts")
    ap.add_argument("--out", default="experiments/engine/plaid-scaling/centroids-medquad-1000")
    args = ap.parse_args()
    data = load_beir(args.data, args.split)
    qids, doc_ids = subset(data, args.max_docs, args.max_queries)
    model = ColBERT.from_pretrained(Path(args.work) / "checkpoint", device="cpu")
    corpus = {d: data.corpus[d].full_text for d in doc_ids}
    queries, qrels = {q: data.queries[q] for q in qids}, {q: data.qrels[q] for q in qids}
    rows = []
    for count in (int(c) for c in args.centroids.split(",")):
        path = Path(args.work) / f"centroids-{count}"
        index = Index.open(path) if (path / "manifest.json").is_file() else \
            Index.build(path, model, corpus, nbits=2, num_centroids=count)
        searcher = Searcher(index, model)
        row = {"centroids": count, **index.stats()}
        for name, knobs in (("plaid", {}), ("exact", {"exact": True})):
            run = searcher.search_all(queries, k=10, show_progress=False, **knobs)
            row[f"ndcg@10 {name}"] = evaluate(run, qrels, ["ndcg@10"])["ndcg@10"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"data": args.data, "documents": len(doc_ids), "queries": len(qids),
               "default_centroids": default_num_centroids(rows[0]["embeddings"]), "rows": rows}
    (out / "centroids.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
