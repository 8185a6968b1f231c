"""Search latency of medcolbert vs colbert-ai 0.2.22, side by side in alternating rounds (A B A B ...).

Uses the medcolbert index that scripts/bench_search.py left in WORK (same checkpoint, passages and queries)
and builds colbert-ai's index there once if it is missing. Each round times every query one at a time at
k=10, query encoding included, first in medcolbert (this process) and then in colbert-ai (its own venv).
Alternating rounds spread the machine's drift over both systems; the ratio is reported per round.
Raw latencies go to OUT/latency.json, a table to OUT/latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_search import colbert_ai_job, latency, pct, subset
from medcolbert import ColBERT, load_beir
from medcolbert.indexing.index import Index
from medcolbert.modeling.checkpoint import BASE_MODEL_ID
from medcolbert.search.plaid import Searcher


def main() -> None:
    """Run the rounds and write the results."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--work", default=".cache/bench/plaid-scifact", help="bench_search.py's work folder")
    ap.add_argument("--max-docs", type=int, default=None, help="as given to bench_search.py")
    ap.add_argument("--max-queries", type=int, default=None, help="as given to bench_search.py")
    ap.add_argument("--doc-maxlen", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds (0: only build what is missing)")
    ap.add_argument("--colbert-ai-python", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (work / "medcolbert-nbits2" / "manifest.json").is_file():
        raise SystemExit(f"{work}/medcolbert-nbits2 is missing: run scripts/bench_search.py first")
    data = load_beir(args.data, args.split)
    qids, doc_ids = subset(data, args.max_docs, args.max_queries)
    queries = [data.queries[q] for q in qids]
    index = Index.open(work / "medcolbert-nbits2")
    # Indexes built before the release named the packaged base None.
    source = index.manifest.get("model", {}).get("source") or BASE_MODEL_ID
    model = ColBERT.from_pretrained(source, device="cpu",
                                    doc_maxlen=args.doc_maxlen)
    searcher = Searcher(index, model)

    python = args.colbert_ai_python or subprocess.run(
        ["bash", "scripts/colbert_ai_venv.sh"], check=True, capture_output=True, text=True).stdout.split()[-1]
    ckpt = work / "checkpoint"
    if not (ckpt / "artifact.metadata").is_file():
        model.save_pretrained(ckpt)
    corpus = {d: data.corpus[d].full_text for d in doc_ids}
    side = colbert_ai_job(work, ckpt, corpus, {q: data.queries[q] for q in qids}, args.doc_maxlen, k=10)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(Path(".cache/torch_extensions").resolve())}

    def colbert_ai(mode: str) -> dict:
        result_file = (work / f"colbert_ai_{mode}.json").resolve()
        proc = subprocess.run([python, "scripts/colbert_ai_side.py", json.dumps({**side, "mode": mode,
                                                                                 "out": str(result_file)})],
                              env=env, capture_output=True, text=True)
        (out / f"colbert_ai_{mode}.log").write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:])
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"colbert-ai {mode} failed; see {out}/colbert_ai_{mode}.log")
        return json.loads(result_file.read_text())

    if not list((work / "colbert-ai").rglob("metadata.json")):
        print("building colbert-ai's index (once)", flush=True)
        colbert_ai("build")
    if args.rounds == 0:
        return

    rounds = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        ours = latency(lambda q: searcher.search(q, k=10), queries)
        theirs = colbert_ai("latency")["latencies_s"]
        rounds.append({"round": r + 1, "medcolbert_p50_ms": pct(ours, 50), "medcolbert_p95_ms": pct(ours, 95),
                       "colbert_ai_p50_ms": pct(theirs, 50), "colbert_ai_p95_ms": pct(theirs, 95),
                       "p50_ratio": pct(ours, 50) / pct(theirs, 50), "p95_ratio": pct(ours, 95) / pct(theirs, 95),
                       "medcolbert_latencies_s": ours, "colbert_ai_latencies_s": theirs})
        print(f"round {r + 1}: medcolbert p50 {pct(ours, 50):.1f} ms, colbert-ai p50 {pct(theirs, 50):.1f} ms, "
              f"ratio {rounds[-1]['p50_ratio']:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = {"data": args.data, "split": args.split, "queries": len(qids), "documents": len(doc_ids), "k": 10,
               "rounds": rounds, "median_p50_ratio": float(np.median([r["p50_ratio"] for r in rounds])),
               "median_p95_ratio": float(np.median([r["p95_ratio"] for r in rounds])), "machine_cores": os.cpu_count()}
    (out / "latency.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# Latency at k=10, query encoding included: {len(qids)} queries, {len(doc_ids)} documents", "",
             "| round | medcolbert p50 ms | medcolbert p95 ms | colbert-ai p50 ms | colbert-ai p95 ms | p50 ratio | p95 ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['medcolbert_p50_ms']:.1f} | {r['medcolbert_p95_ms']:.1f} | "
                     f"{r['colbert_ai_p50_ms']:.1f} | {r['colbert_ai_p95_ms']:.1f} | {r['p50_ratio']:.2f} | {r['p95_ratio']:.2f} |")
    lines += ["", f"Median over rounds: p50 ratio {summary['median_p50_ratio']:.2f}, p95 ratio {summary['median_p95_ratio']:.2f} "
              "(medcolbert / colbert-ai; lower is faster)."]
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
