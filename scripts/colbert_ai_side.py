"""The colbert-ai half of medcolbert/bench/search.py; runs inside colbert-ai's own virtual environment.

Indexes a collection with colbert-ai's Indexer, then times its Searcher one query at a time (query encoding
included, keeping those k=10 results) and runs every query at k=100. Writes one JSON file; imports nothing from medcolbert.
mode "build" only indexes; mode "latency" only times the Searcher on an index built before.
"""

import json
import os
import sys
import time

from colbert import Indexer, Searcher
from colbert.infra import ColBERTConfig, Run, RunConfig


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main():
    args = json.loads(sys.argv[1])
    queries = dict(line.rstrip("\n").split("\t", 1) for line in open(args["queries"]))
    with Run().context(RunConfig(nranks=1, experiment="bench", root=args["root"])):
        config = ColBERTConfig(nbits=args["nbits"], doc_maxlen=args["doc_maxlen"], query_maxlen=32,
                               checkpoint=args["checkpoint"], gpus=0, kmeans_niters=4)
        mode = args.get("mode", "all")
        build_s, index_path = None, None
        if mode in ("all", "build"):
            t0 = time.perf_counter()
            indexer = Indexer(checkpoint=args["checkpoint"], config=config)
            index_path = indexer.index(name=args["name"], collection=args["collection"], overwrite=True)
            build_s = time.perf_counter() - t0
        if mode == "build":
            with open(args["out"], "w") as f:
                json.dump({"build_seconds": build_s, "index_bytes": dir_bytes(index_path), "index_path": index_path}, f)
            return
        searcher = Searcher(index=args["name"], config=config, collection=args["collection"])
        index_path = index_path or searcher.index
        qids = list(queries)
        for qid in qids[:5]:  # warm-up
            searcher.search(queries[qid], k=10)
        latencies, run10 = [], {}
        for qid in qids[: args["latency_queries"]]:
            t = time.perf_counter()
            pids, _, scores = searcher.search(queries[qid], k=10)
            latencies.append(time.perf_counter() - t)
            run10[qid] = {str(p): float(s) for p, s in zip(pids, scores)}
        run = {}
        for qid in (qids if mode == "all" else []):
            pids, _, scores = searcher.search(queries[qid], k=args["k"])
            run[qid] = {str(p): float(s) for p, s in zip(pids, scores)}
    out = {"build_seconds": build_s, "index_bytes": dir_bytes(index_path), "index_path": index_path,
           "num_embeddings": int(searcher.ranker.num_embeddings) if hasattr(searcher.ranker, "num_embeddings") else None,
           "latencies_s": latencies, "run10": run10, "run": run}
    with open(args["out"], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
