"""PLAID benchmark: medcolbert vs exact MaxSim vs colbert-ai 0.2.22 on one collection, in one run.

Measures, with the same checkpoint, passages and queries on this machine: index build time, index size
(bytes per token vector, all files included) at nbits 1/2/4, per-query latency p50/p95 at k=10 with query
encoding included, and nDCG@10 / Recall@100 of PLAID, of exact MaxSim and of colbert-ai. Raw output goes to
OUT/results.json, a table to OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medcolbert import ColBERT, evaluate, load_beir
from medcolbert.bench import percentiles, time_each, write_results
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
from medcolbert.vector_cache import CachedEncoder, VectorCache


def subset(data, max_docs: int | None, max_queries: int | None, seed: int = 0):
    """Queries (up to max_queries) and a corpus of max_docs that holds all their relevant documents."""
    rng = random.Random(seed)
    qids = sorted(data.queries)
    if max_queries and len(qids) > max_queries:
        qids = sorted(rng.sample(qids, max_queries))
    if max_docs and max_docs < len(data.corpus):
        relevant = [d for q in qids for d in data.qrels[q]]
        rest = [d for d in data.corpus if d not in set(relevant)]
        keep = list(dict.fromkeys(relevant))[:max_docs]
        keep += rng.sample(rest, max_docs - len(keep))
        keep_set = set(keep)
        qids = [q for q in qids if any(d in keep_set for d in data.qrels[q])]
        docs = [d for d in data.corpus if d in keep_set]
    else:
        docs = list(data.corpus)
    return qids, docs


def colbert_ai_job(work: Path, checkpoint: Path, corpus: dict[str, str], queries: dict[str, str],
                   doc_maxlen: int, k: int) -> dict:
    """Write the collection and queries TSVs colbert-ai reads (passage i = i-th corpus entry), and return
    the job description scripts/colbert_ai_side.py takes (without its "out" and "mode")."""
    with open(work / "collection.tsv", "w") as f:
        for i, text in enumerate(corpus.values()):
            f.write(f"{i}\t{' '.join(text.split())}\n")
    with open(work / "queries.tsv", "w") as f:
        for q, text in queries.items():
            f.write(f"{q}\t{' '.join(text.split())}\n")
    return {"checkpoint": str(checkpoint.resolve()), "collection": str((work / "collection.tsv").resolve()),
            "queries": str((work / "queries.tsv").resolve()), "root": str((work / "colbert-ai").resolve()),
            "name": "bench", "nbits": 2, "doc_maxlen": doc_maxlen, "k": k, "latency_queries": len(queries)}


def latency(fn, queries: list[str], warmup: int = 5) -> list[float]:
    """Seconds per call of fn(query), one query at a time, after a warm-up (medcolbert.bench's loop)."""
    return [ms / 1000 for ms in time_each(fn, queries, warmup)]


def write_log(path: Path, proc: subprocess.CompletedProcess) -> None:
    """A child's output tails as a log, with this checkout's absolute path made relative (plain and
    JSON-escaped), so a committed log names no folder of the machine that ran it."""
    root = str(Path.cwd().resolve()) + "/"
    text = proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:]
    path.write_text(text.replace(root, "").replace(root.replace("/", "\\/"), ""))


def main(argv: list[str] | None = None) -> None:
    """Run every measurement and write the results."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default=None)
    ap.add_argument("--doc-maxlen", type=int, default=300)
    ap.add_argument("--max-docs", type=int, default=None, help="index a subset of this many documents")
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--nbits-sizes", default="1,2,4", help="nbits whose index size (and quality) to report")
    ap.add_argument("--colbert-ai", action="store_true", help="also run colbert-ai in its own venv")
    ap.add_argument("--colbert-ai-python", default=None)
    ap.add_argument("--work", default=".cache/bench")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) / out.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = load_beir(args.data, args.split)
    qids, doc_ids = subset(data, args.max_docs, args.max_queries)
    queries = {q: data.queries[q] for q in qids}
    qrels = {q: data.qrels[q] for q in qids}
    corpus = {d: data.corpus[d].full_text for d in doc_ids}
    model = ColBERT.from_pretrained(args.model, device="cpu", doc_maxlen=args.doc_maxlen)
    result: dict = {"data": args.data, "split": args.split, "documents": len(corpus), "queries": len(queries),
                    "model": model.name, "doc_maxlen": args.doc_maxlen, "machine_cores": os.cpu_count()}
    print(f"{len(corpus)} documents, {len(queries)} queries", flush=True)

    # 1. medcolbert at nbits 2: a timed build from raw text, like colbert-ai's below.
    t0 = time.perf_counter()
    index = Index.build(work / "medcolbert-nbits2", model, corpus, nbits=2)
    result["medcolbert_build_seconds"] = time.perf_counter() - t0
    result["medcolbert_build_detail"] = index.manifest["build"]
    searcher = Searcher(index, model)
    texts = list(queries.values())
    lat = latency(lambda q: searcher.search(q, k=10), texts)
    systems = {}
    run10 = searcher.search_all(queries, k=10, show_progress=False)
    run100 = searcher.search_all(queries, k=100, show_progress=False)
    exact100 = searcher.search_all(queries, k=100, exact=True, show_progress=False)
    systems["medcolbert PLAID (nbits 2)"] = {
        "ndcg@10": evaluate(run10, qrels, ["ndcg@10"])["ndcg@10"],
        "recall@100": evaluate(run100, qrels, ["recall@100"])["recall@100"],
        "ndcg@10 at k=100": evaluate(run100, qrels, ["ndcg@10"])["ndcg@10"],
        **percentiles(np.array(lat) * 1000, (50, 95)), **index.stats()}
    systems["medcolbert exact MaxSim (nbits 2)"] = {
        "ndcg@10": evaluate(exact100, qrels, ["ndcg@10"])["ndcg@10"],
        "recall@100": evaluate(exact100, qrels, ["recall@100"])["recall@100"]}
    print(json.dumps({k: {m: v for m, v in s.items() if not isinstance(v, dict)} for k, s in systems.items()},
                     indent=1), flush=True)

    # 2. Index size (and PLAID quality) at other nbits, from vectors encoded once.
    other = [int(b) for b in args.nbits_sizes.split(",") if int(b) != 2]
    if other:
        cached = CachedEncoder(model, VectorCache(model, work / "vectors"), corpus)
        for nbits in other:
            idx = Index.build(work / f"medcolbert-nbits{nbits}", cached, corpus, nbits=nbits)
            s = Searcher(idx, model)
            r10 = s.search_all(queries, k=10, show_progress=False)
            r100 = s.search_all(queries, k=100, show_progress=False)
            systems[f"medcolbert PLAID (nbits {nbits})"] = {
                "ndcg@10": evaluate(r10, qrels, ["ndcg@10"])["ndcg@10"],
                "recall@100": evaluate(r100, qrels, ["recall@100"])["recall@100"], **idx.stats()}

    # 3. colbert-ai on the same checkpoint, passages and queries.
    if args.colbert_ai:
        python = args.colbert_ai_python or subprocess.run(
            ["bash", "scripts/colbert_ai_venv.sh"], check=True, capture_output=True, text=True).stdout.split()[-1]
        ckpt = model.save_pretrained(work / "checkpoint")
        pids = list(corpus)
        side = {**colbert_ai_job(work, ckpt, corpus, queries, args.doc_maxlen, k=100),
                "out": str((work / "colbert_ai.json").resolve())}
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(Path(".cache/torch_extensions").resolve())}
        t0 = time.perf_counter()
        proc = subprocess.run([python, "scripts/colbert_ai_side.py", json.dumps(side)], env=env,
                              capture_output=True, text=True)
        write_log(out / "colbert_ai.log", proc)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit("colbert-ai failed; see colbert_ai.log")
        ca = json.loads((work / "colbert_ai.json").read_text())
        run = {q: {pids[int(p)]: s for p, s in hits.items()} for q, hits in ca["run"].items()}
        run10 = {q: dict(sorted(h.items(), key=lambda kv: -kv[1])[:10]) for q, h in run.items()}
        result["colbert_ai_wall_seconds"] = time.perf_counter() - t0
        systems["colbert-ai 0.2.22 (nbits 2)"] = {
            "ndcg@10": evaluate(run10, qrels, ["ndcg@10"])["ndcg@10"],
            "recall@100": evaluate(run, qrels, ["recall@100"])["recall@100"],
            **percentiles(np.array(ca["latencies_s"]) * 1000, (50, 95)),
            "build_seconds": ca["build_seconds"], "bytes_total": ca["index_bytes"],
            "bytes_per_embedding": ca["index_bytes"] / max(1, systems["medcolbert PLAID (nbits 2)"]["embeddings"])}
        ours = systems["medcolbert PLAID (nbits 2)"]
        theirs = systems["colbert-ai 0.2.22 (nbits 2)"]
        result["ratios"] = {"p50_medcolbert_over_colbert_ai": ours["p50_ms"] / theirs["p50_ms"],
                            "p95_medcolbert_over_colbert_ai": ours["p95_ms"] / theirs["p95_ms"],
                            "build_colbert_ai_over_medcolbert": theirs["build_seconds"] / result["medcolbert_build_seconds"]}
    result["systems"] = systems
    lines = [f"# {Path(args.data).name} ({args.split}): {len(corpus)} documents, {len(queries)} queries", "",
             "| system | nDCG@10 | Recall@100 | p50 ms | p95 ms | bytes/vector | build s |", "|---|---|---|---|---|---|---|"]
    for name, s in systems.items():
        build = s.get("build_seconds", result["medcolbert_build_seconds"] if name.endswith("(nbits 2)") and "medcolbert PLAID" in name else None)
        cells = [f"{s['ndcg@10']:.4f}", f"{s['recall@100']:.4f}"]
        cells += [f"{s[k]:.1f}" if k in s else "" for k in ("p50_ms", "p95_ms")]
        cells += [f"{s['bytes_per_embedding']:.2f}" if "bytes_per_embedding" in s else "", f"{build:.0f}" if build else ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "ratios" in result:
        lines += ["", "Ratios measured in this run: " + ", ".join(f"{k} = {v:.2f}" for k, v in result["ratios"].items())]
    write_results(out / "results.json", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
