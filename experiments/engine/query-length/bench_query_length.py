"""Short- and long-query search latency before and after long-query support, side by side in one run.

"Before" is the code of a given git revision (checked out into a worktree under WORK), "after" is this tree;
both search the same index (2,000 MedQuAD dev answers, built once with the model) one query at a time at
k=10, query encoding included, in alternating rounds (B A B A ...), each in its own process with the same
thread count. Short queries: MedQuAD dev questions (median 15 word pieces); long: consumer-health dev
questions (median 47). "After" runs the model as its checkpoint says (v1: every query padded or cut to 32,
the old rule), with query_maxlen 128 / augmentation 32 (the new rule: short queries padded to 32, long ones
keep their tokens), and with every query padded with [MASK] to 128 (colbert-ai's rule at 128). Raw times go to OUT/latency.json, a table
to OUT/latency.md; the CPU model is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKER = r'''
import json, sys, time, warnings
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[6]))
from medcolbert import ColBERT
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
overrides = json.loads(sys.argv[4])
model = ColBERT.from_pretrained(sys.argv[3], device="cpu", **overrides)
searcher = Searcher(Index.open(sys.argv[2]), model)
queries = json.loads(open(sys.argv[5]).read())
warnings.simplefilter("ignore")
for q in queries[:5]:
    searcher.search(q, k=10)
times = []
for q in queries:
    t0 = time.perf_counter()
    searcher.search(q, k=10)
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
'''


def cpu_model() -> str:
    """lscpu's model name (the timings depend on it)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001 - any failure just means unknown
        return platform.processor() or "unknown"


def main() -> None:
    """Build what is missing, run the rounds, write the results."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before", default="dbe3e2b", help="git revision of the 'before' code")
    ap.add_argument("--model", default="checkpoints/medcolbert-minilm-v1")
    ap.add_argument("--medquad", default="../shared/data/medquad/dev-retrieval")
    ap.add_argument("--consumer", default="../shared/data/consumer-health/dev-retrieval")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=".cache/bench/query-length")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from medcolbert import ColBERT, load_beir
    from medcolbert.indexing.index import Index

    work, out = Path(args.work).resolve(), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    before = work / f"src-{args.before}"
    if not before.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], check=True)
    built = next(Path("medcolbert/search").glob("_plaid_cpu*.so"), None)
    if built is not None:  # the C file is the same in both; the worktree has no build of its own
        shutil.copy(built, before / "medcolbert" / "search" / built.name)
    short_data = load_beir(args.medquad, "dev")
    long_data = load_beir(args.consumer, "dev")
    short = [short_data.queries[q] for q in sorted(short_data.queries)[: args.queries]]
    long = [long_data.queries[q] for q in sorted(long_data.queries)[: args.queries]]
    index_path = work / "index"
    if not (index_path / "manifest.json").is_file():
        ids = sorted(short_data.corpus)[: args.docs]
        Index.build(index_path, ColBERT.from_pretrained(args.model, device="cpu"),
                    {d: short_data.corpus[d].full_text for d in ids})
    for name, qs in (("short", short), ("long", long)):
        (work / f"{name}.json").write_text(json.dumps(qs))
    (work / "worker.py").write_text(WORKER)
    long_cfg = json.dumps({"query_maxlen": 128, "query_augment_len": 32})
    pad_all = json.dumps({"query_maxlen": 128, "query_augment_len": None})
    variants = [("before", before, "{}", "short"), ("after", Path.cwd(), "{}", "short"),
                ("after, query_maxlen 128", Path.cwd(), long_cfg, "short"),
                ("after, [MASK] to 128", Path.cwd(), pad_all, "short"),
                ("before", before, "{}", "long"), ("after", Path.cwd(), "{}", "long"),
                ("after, query_maxlen 128", Path.cwd(), long_cfg, "long"),
                ("after, [MASK] to 128", Path.cwd(), pad_all, "long")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    raw: dict[str, list[list[float]]] = {}
    for r in range(args.rounds):
        for label, src, overrides, qset in variants:
            proc = subprocess.run([sys.executable, str(work / "worker.py"), str(src.resolve()), str(index_path.resolve()),
                                   str(Path(args.model).resolve()), overrides, str(work / f"{qset}.json"),
                                   str(args.threads)], capture_output=True, text=True, env=env, cwd="/")
            if proc.returncode != 0:
                raise SystemExit(f"{label} / {qset} failed:\n{proc.stderr[-2000:]}")
            raw.setdefault(f"{label} | {qset}", []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {label} / {qset}: p50 {1000 * np.median(raw[f'{label} | {qset}'][-1]):.2f} ms", flush=True)
    rows = []
    for key, rounds in raw.items():
        label, qset = key.split(" | ")
        p50 = [1000 * float(np.median(x)) for x in rounds]
        p95 = [1000 * float(np.percentile(x, 95)) for x in rounds]
        rows.append({"code": label, "queries": qset, "p50_ms": p50, "p95_ms": p95})
    # Per round, each "after" variant's p50 over "before"'s on the same queries (the rounds alternate, so
    # the machine's drift falls on both sides of each ratio).
    ratios = {}
    for qset in ("short", "long"):
        base = next(r["p50_ms"] for r in rows if r["code"] == "before" and r["queries"] == qset)
        for r in rows:
            if r["queries"] == qset and r["code"] != "before":
                ratios[f"{r['code']} / {qset}"] = [a / b for a, b in zip(r["p50_ms"], base)]
    result = {"cpu": cpu_model(), "threads": args.threads, "k": 10, "model": args.model, "before": args.before,
              "documents": args.docs, "queries_per_set": args.queries, "rows": rows, "p50_ratio_after_over_before": ratios,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "raw_seconds": raw}
    (out / "latency.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Query length and latency ({result['cpu']}, {args.threads} threads, k=10, query encoding included)", "",
             "| code | queries | p50 ms per round | p95 ms per round |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['code']} | {row['queries']} | " + " / ".join(f"{x:.1f}" for x in row["p50_ms"]) + " | "
                     + " / ".join(f"{x:.1f}" for x in row["p95_ms"]) + " |")
    lines += ["", "p50 ratio after / before, per round: " + "; ".join(
        f"{q}: " + " / ".join(f"{x:.3f}" for x in v) for q, v in ratios.items())]
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
