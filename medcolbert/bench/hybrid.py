"""What the lexical side costs (issue 41): search latency of each mode, bytes of the postings, their build time.

Builds (or reuses) a v5 index of a BEIR corpus, then times one query at a time, query encoding included, for PLAID,
lexical and hybrid at k=10 and k=100 in alternating rounds (every mode in every round; the machine is noisy, so
ratios are taken within a round), and records the postings' share of the index folder and the time to write them.

    medcolbert bench hybrid --data ../shared/data/scifact --split test --work .cache/bench/hybrid-scifact \
        --out experiments/quality/hybrid/cost-scifact/results.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path



def main(argv: list[str] | None = None) -> int:
    """Build or reuse the index, time the modes, record."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--model", default="medcolbert-minilm-v5")
    p.add_argument("--work", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-queries", type=int, default=300)
    p.add_argument("--vectors", default=None,
                   help="a vector cache folder (the experiment harness's) to build the index from without encoding")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from medcolbert import ColBERT
    from medcolbert.bench import cpu_model, percentiles, time_each, write_results
    from medcolbert.machine import cpu_features
    from medcolbert.evaluation.datasets import load_beir
    from medcolbert.indexing.index import Index
    from medcolbert.lexical import postings
    from medcolbert.search.plaid import Searcher

    data = load_beir(args.data, args.split)
    model = ColBERT.from_pretrained(args.model, device="cpu")
    path = Path(args.work) / "index"
    if not (path / "manifest.json").is_file():
        corpus = {d: doc.full_text for d, doc in data.corpus.items()}
        encoder = model
        if args.vectors:
            from medcolbert.vector_cache import CachedEncoder, VectorCache

            encoder = CachedEncoder(model, VectorCache(model, args.vectors), corpus)
        Index.build(path, encoder, corpus)
    index = Index.open(path)
    searcher = Searcher(index, model)
    queries = [data.queries[q] for q in sorted(data.queries)][: args.max_queries]
    texts = [index.document(i)["text"] for i in range(len(index.doc_ids))]
    t0 = time.perf_counter()
    postings(texts)
    build_s = time.perf_counter() - t0
    files = index.manifest["files"]
    lexical_bytes = sum(v["bytes"] for k, v in files.items() if "/lex_" in k)
    total_bytes = sum(v["bytes"] for v in files.values())
    rows, table = [], ["| round | k | mode | p50 ms | p95 ms | vs PLAID (p50) |", "|---|---|---|---|---|---|"]
    for r in range(args.rounds):
        for k in (10, 100):
            modes = ["plaid", "lexical", "hybrid"]
            modes = modes[r % 3:] + modes[:r % 3]   # each mode takes each turn
            p50 = {}
            for mode in modes:
                ms = time_each(lambda q: searcher.search(q, k=k, mode=mode), queries)
                stats = percentiles(ms, (50, 95))
                p50[mode] = stats["p50_ms"]
                rows.append({"round": r, "k": k, "mode": mode, **stats})
            for mode in ("plaid", "lexical", "hybrid"):
                row = next(x for x in rows if x["round"] == r and x["k"] == k and x["mode"] == mode)
                row["ratio_to_plaid"] = p50[mode] / p50["plaid"]
                table.append(f"| {r} | {k} | {mode} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['ratio_to_plaid']:.2f} |")
    result = {"cpu": cpu_model(), "cpu_features": list(cpu_features()), "data": args.data, "split": args.split, "documents": len(index.doc_ids),
              "vectors": int(index.num_embeddings),
              "queries": len(queries), "model": args.model, "rows": rows,
              "lexical_bytes": lexical_bytes, "index_bytes": total_bytes, "lexical_share": lexical_bytes / total_bytes,
              "lexical_bytes_per_document": lexical_bytes / len(index.doc_ids), "postings_build_seconds": build_s,
              "what_is_timed": "one query at a time, query encoding included (hybrid: PLAID's and BM25's top 100 "
                               "fused), best of nothing: every query once after 3 warm-up calls"}
    table += ["", f"lexical postings: {lexical_bytes / 1e6:.2f} MB of {total_bytes / 1e6:.1f} MB "
                  f"({100 * lexical_bytes / total_bytes:.1f}% of the index folder, "
                  f"{lexical_bytes / len(index.doc_ids):.0f} bytes a document); written in {build_s:.1f} s "
                  f"for {len(index.doc_ids)} documents ({index.num_embeddings:,} vectors); CPU {cpu_model()} "
                  f"[{'+'.join(cpu_features())}]"]
    write_results(Path(args.out), result, "\n".join(table))
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
