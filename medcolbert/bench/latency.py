"""Search latency of medcolbert vs colbert-ai 0.2.22, side by side in alternating rounds (A B C A B C ...).

Uses the medcolbert index that medcolbert/bench/search.py left in WORK (same checkpoint, passages and queries)
and builds colbert-ai's index there once if it is missing. Each round times every query one at a time at
k=10, query encoding included: medcolbert with its compiled CPU stages, medcolbert with its torch engine
(where the compiled stages are built), and colbert-ai (its own venv). Alternating rounds spread the
machine's drift over the systems, and each round starts one system later (A B C D, B C D A, ...), so that no
system holds the same place, e.g. right after colbert-ai's process, in every round. Ratios are reported per round, and nDCG@10 of the very results timed.
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

from medcolbert.bench.search import colbert_ai_job, latency, subset, write_log
from medcolbert.bench import cpu_model, percentiles, write_results
from medcolbert import ColBERT, evaluate, load_beir
from medcolbert.indexing.index import Index
from medcolbert.machine import cpu_features, torch_capability
from medcolbert.modeling.checkpoint import BASE_MODEL_ID
from medcolbert.search import cpu_kernel
from medcolbert.search.plaid import SearchConfig, Searcher

THEIRS = "colbert-ai 0.2.22"


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and write the results."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--work", default=".cache/bench/plaid-scifact", help="bench_search.py's work folder")
    ap.add_argument("--max-docs", type=int, default=None, help="as given to bench_search.py")
    ap.add_argument("--max-queries", type=int, default=None, help="as given to bench_search.py")
    ap.add_argument("--doc-maxlen", type=int, default=300)
    ap.add_argument("--model", default=None,
                    help="checkpoint both systems use (default: WORK/checkpoint if present, else the index's model)")
    ap.add_argument("--rounds", type=int, default=4,
                    help="rounds; 4 gives every system every turn once (0: only build what is missing)")
    ap.add_argument("--query-encoder", default=None, metavar="distilled|DIR",
                    help="also time medcolbert with this query encoder (the model's distilled one, or a folder)")
    ap.add_argument("--colbert-ai-python", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (work / "medcolbert-nbits2" / "manifest.json").is_file():
        raise SystemExit(f"{work}/medcolbert-nbits2 is missing: run medcolbert/bench/search.py first")
    data = load_beir(args.data, args.split)
    qids, doc_ids = subset(data, args.max_docs, args.max_queries)
    queries = [data.queries[q] for q in qids]
    index = Index.open(work / "medcolbert-nbits2")
    ckpt = work / "checkpoint"
    # Indexes built before the release named the packaged base None.
    source = args.model or (ckpt if (ckpt / "artifact.metadata").is_file() else None) \
        or index.manifest.get("model", {}).get("source") or BASE_MODEL_ID
    model = ColBERT.from_pretrained(source, device="cpu", doc_maxlen=args.doc_maxlen)

    def built_with(m: ColBERT) -> bool:
        return m.fingerprint(weights_only=True) == index.manifest["model"].get("fingerprint")

    # Same checkpoint on both sides, bit for bit, or the comparison means nothing.
    if not built_with(model):
        raise SystemExit(f"{source} is not the model {work}/medcolbert-nbits2 was built with: pass that one "
                         "with --model (or rebuild the index with medcolbert/bench/search.py)")
    searchers = {"medcolbert": Searcher(index, model)}
    if cpu_kernel.load() is not None:
        # The default preset ("quality") and colbert-ai's own knobs, so the ratio is shown both ways.
        searchers = {"medcolbert": Searcher(index, model, compiled=True),
                     "medcolbert (colbert-ai's knobs)": Searcher(index, model, SearchConfig(preset="colbert-ai"),
                                                                  compiled=True),
                     "medcolbert (torch engine)": Searcher(index, model, compiled=False)}
    else:
        print("the compiled stages are not built: timing the torch engine only", flush=True)
    if args.query_encoder:
        fast = ColBERT.from_pretrained(source, device="cpu", doc_maxlen=args.doc_maxlen, query_encoder=args.query_encoder)
        searchers[f"medcolbert ({args.query_encoder} query encoder)"] = Searcher(index, fast)

    python = args.colbert_ai_python or subprocess.run(
        ["bash", "scripts/colbert_ai_venv.sh"], check=True, capture_output=True, text=True).stdout.split()[-1]
    if not (ckpt / "artifact.metadata").is_file():
        model.save_pretrained(ckpt)
    elif Path(source) != ckpt and not built_with(ColBERT.from_pretrained(ckpt, device="cpu")):
        raise SystemExit(f"{ckpt} (colbert-ai's checkpoint) is not the model the index was built with: remove it "
                         f"and {work}/colbert-ai, then run again")
    corpus = {d: data.corpus[d].full_text for d in doc_ids}
    side = colbert_ai_job(work, ckpt, corpus, {q: data.queries[q] for q in qids}, args.doc_maxlen, k=10)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(Path(".cache/torch_extensions").resolve())}

    def colbert_ai(mode: str) -> dict:
        result_file = (work / f"colbert_ai_{mode}.json").resolve()
        proc = subprocess.run([python, "scripts/colbert_ai_side.py", json.dumps({**side, "mode": mode,
                                                                                 "out": str(result_file)})],
                              env=env, capture_output=True, text=True)
        write_log(out / f"colbert_ai_{mode}.log", proc)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"colbert-ai {mode} failed; see {out}/colbert_ai_{mode}.log")
        return json.loads(result_file.read_text())

    if not list((work / "colbert-ai").rglob("metadata.json")):
        print("building colbert-ai's index (once)", flush=True)
        colbert_ai("build")
    if args.rounds == 0:
        return

    qrels = {q: data.qrels[q] for q in qids}

    def timed(searcher: Searcher) -> tuple[list[float], dict]:
        hits: list = []
        times = latency(lambda q: hits.append(searcher.search(q, k=10)), queries)
        # The warm-up calls come first; the last len(queries) results are the timed ones.
        return times, {qid: dict(h) for qid, h in zip(qids, hits[-len(queries):])}

    rounds = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        row: dict = {"round": r + 1, "systems": {}}
        order = [*searchers, THEIRS]
        order = order[r % len(order):] + order[:r % len(order)]
        row["order"] = order
        for name in order:
            if name == THEIRS:
                theirs = colbert_ai("latency")
                their_run = {q: {doc_ids[int(p)]: x for p, x in h.items()} for q, h in theirs["run10"].items()}
                row["systems"][name] = {"latencies_s": theirs["latencies_s"],
                                        "ndcg@10": evaluate(their_run, qrels, ["ndcg@10"])["ndcg@10"]}
                continue
            times, run = timed(searchers[name])
            row["systems"][name] = {"latencies_s": times, "ndcg@10": evaluate(run, qrels, ["ndcg@10"])["ndcg@10"]}
        row["systems"] = {n: row["systems"][n] for n in [*searchers, THEIRS]}   # table rows in a fixed order
        for s in row["systems"].values():
            s.update(percentiles(np.array(s["latencies_s"]) * 1000, (50, 95)))
        base = row["systems"][THEIRS]
        for name in searchers:
            s = row["systems"][name]
            s["p50_ratio"], s["p95_ratio"] = s["p50_ms"] / base["p50_ms"], s["p95_ms"] / base["p95_ms"]
        rounds.append(row)
        print(f"round {r + 1} ({time.perf_counter() - t0:.0f} s): " + ", ".join(
            f"{n} p50 {s['p50_ms']:.1f} ms nDCG@10 {s['ndcg@10']:.4f}" for n, s in row["systems"].items()), flush=True)
    names = list(rounds[0]["systems"])
    summary = {"data": args.data, "split": args.split, "queries": len(qids), "documents": len(doc_ids), "k": 10,
               "rounds": rounds, "machine_cores": os.cpu_count(), "cpu": cpu_model(), "cpu_features": cpu_features(),
               "median_ratios": {n: {"p50": float(np.median([r["systems"][n]["p50_ratio"] for r in rounds])),
                                     "p95": float(np.median([r["systems"][n]["p95_ratio"] for r in rounds]))}
                                 for n in searchers}}
    lines = [f"# Latency at k=10, query encoding included: {len(qids)} queries, {len(doc_ids)} documents", "",
             f"CPU: {cpu_model()} [{'+'.join(cpu_features())}], {os.cpu_count()} cores; torch CPU capability "
             f"{torch_capability()}; PLAID loops: {getattr(cpu_kernel.load(), 'isa', 'torch engine')}. Turn: the system's place in its round's order.", "",
             "| round | system | turn | p50 ms | p95 ms | p50 / colbert-ai | p95 / colbert-ai | nDCG@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        for n in names:
            s = r["systems"][n]
            ratios = f"{s['p50_ratio']:.2f} | {s['p95_ratio']:.2f}" if "p50_ratio" in s else " | "
            lines.append(f"| {r['round']} | {n} | {r['order'].index(n) + 1} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {ratios} | {s['ndcg@10']:.4f} |")
    lines += [""] + [f"Median over rounds, {n} / colbert-ai: p50 ratio {m['p50']:.2f}, p95 ratio {m['p95']:.2f} "
                     "(lower is faster)." for n, m in summary["median_ratios"].items()]
    write_results(out / "latency.json", summary, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
