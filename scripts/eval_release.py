"""Quality of the fine-tuned models against BM25 and single-vector baselines, on SciFact test and MedQuAD dev.

Systems, all over the whole corpus of each set: BM25 (bm25s); a single-vector model before and after
MedEmbed-style fine-tuning (faiss flat inner product); a ColBERT model end to end (PLAID index, k=100) and
as a reranker of BM25's top 100 (exact MaxSim, the same document vectors the index was built from).
Raw runs and metrics go to OUT (runs/*.trec, results.json, results.md).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from medcolbert import BM25, ColBERT, evaluate, load_beir, rerank_run, write_run
from medcolbert.baselines.dense import BiEncoder, DenseIndex
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
from medcolbert.vector_cache import CachedEncoder, VectorCache

METRICS = ["ndcg@10", "map@100", "recall@100", "mrr@10"]
SETS = {"scifact": ("scifact", "test"), "medquad": ("medquad/dev-retrieval", "dev")}


def main() -> None:
    """Evaluate every system on every set and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--colbert", action="append", default=[], metavar="NAME=PATH", help="ColBERT model(s)")
    ap.add_argument("--dense", action="append", default=[], metavar="NAME=PATH",
                    help="single-vector model(s); PATH 'packaged' = the packaged all-MiniLM-L6-v2")
    ap.add_argument("--sets", default="scifact,medquad")
    ap.add_argument("--doc-maxlen", type=int, default=300)
    ap.add_argument("--work", default=".cache/eval")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for set_name in args.sets.split(","):
        folder, split = SETS[set_name]
        data = load_beir(Path(args.data_root) / folder, split)
        corpus = {d: doc.full_text for d, doc in data.corpus.items()}
        table = results.setdefault(set_name, {})

        def record(system: str, run: dict, seconds: float) -> None:
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", system).strip("-")
            write_run(run, out / "runs" / f"{set_name}.{slug}.trec", tag=slug)
            table[system] = {**evaluate(run, data.qrels, METRICS), "seconds": round(seconds, 1)}
            results_file.write_text(json.dumps(results, indent=2) + "\n")
            print(set_name, system, {m: round(v, 4) for m, v in table[system].items()}, flush=True)

        t0 = time.perf_counter()
        bm25 = BM25().index(corpus).search(data.queries, k=100)
        record("bm25", bm25, time.perf_counter() - t0)
        for spec in args.dense:
            name, path = spec.split("=", 1)
            t0 = time.perf_counter()
            model = BiEncoder.from_pretrained(None if path == "packaged" else path, max_length=args.doc_maxlen)
            record(name, DenseIndex(model).index(corpus, show_progress=True).search(data.queries, k=100),
                   time.perf_counter() - t0)
        for spec in args.colbert:
            name, path = spec.split("=", 1)
            t0 = time.perf_counter()
            model = ColBERT.from_pretrained(None if path == "packaged" else path, doc_maxlen=args.doc_maxlen)
            cache = VectorCache(model, Path(args.work) / "vectors")
            index_dir = Path(args.work) / f"{set_name}-{model.fingerprint()}"
            if (index_dir / "manifest.json").is_file():
                index = Index.open(index_dir)
            else:
                index = Index.build(index_dir, CachedEncoder(model, cache, corpus), corpus, nbits=2)
            run = Searcher(index, model).search_all(data.queries, k=100)
            record(f"{name} (PLAID end-to-end)", run, time.perf_counter() - t0)
            t0 = time.perf_counter()
            reranked = rerank_run(model, data.queries, bm25, corpus, depth=100, cache=cache)
            record(f"BM25 -> {name} (rerank top 100)", reranked, time.perf_counter() - t0)
    lines = []
    for set_name, table in results.items():
        lines += [f"## {set_name}", "", "| system | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for system, m in table.items():
            lines.append(f"| {system} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
