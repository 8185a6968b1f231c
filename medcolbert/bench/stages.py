"""Where a search's time goes, per stage, under each instruction-set configuration this CPU can run.

Reads the index and checkpoint medcolbert/bench/search.py left in WORK (MedQuAD-1k by default). Each configuration runs
in its own process (torch's kernel level is fixed at import), in rotating order over the rounds:
  native    the PLAID kernel's widest loops, torch as it starts on this CPU;
  avx2      what an AVX2-only CPU runs: the kernel's AVX2 loops, ATEN_CPU_CAPABILITY=avx2, oneDNN and MKL capped at
            AVX2 (the same software path as on a Zen 3 EPYC; the hardware's speed is this machine's);
  portable  the kernel's portable C loops (what another architecture compiles), torch native.
With --query-encoder DIR each configuration runs again with that distilled query encoder (NAME+distilled).
Per query (k=10, one at a time, after a warm-up): query encoding, PLAID's stages (centroid scores, candidate stages,
exact stage), everything else; medians over the queries, per round. Raw numbers to OUT/stages.json, a table to
OUT/stages.md.

    .venv/bin/medcolbert bench stages --out experiments/engine/cpu-<model>-<class>/stages-medquad-1k
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "native": {},
    "avx2": {"MEDCOLBERT_PLAID_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "portable": {"MEDCOLBERT_PLAID_ISA": "portable"},
}
STATS = ("centroid_scores_ms", "candidates_ms", "exact_ms")


def child(work: Path, max_queries: int, query_encoder: str | None = None) -> dict:
    """One configuration's per-stage times (this process's environment decides the configuration)."""
    import numpy as np
    import torch

    from medcolbert.indexing.index import Index
    from medcolbert.machine import torch_capability
    from medcolbert.modeling.encoder import ColBERT, encode_queries_pooled
    from medcolbert.search.plaid import Searcher

    index = Index.open(work / "medcolbert-nbits2")
    model = ColBERT.from_pretrained(work / "checkpoint", device="cpu", query_encoder=query_encoder)
    searcher = Searcher(index, model)
    texts = [line.split("\t", 1)[1].strip() for line in (work / "queries.tsv").read_text().splitlines()][:max_queries]
    engine = searcher.engine
    record: dict[str, list[float]] = {k: [] for k in ("encode_ms", "plaid_ms", *STATS, "total_ms")}
    search = engine.search

    def timed_search(*args, **kwargs):  # type: ignore[no-untyped-def]
        stats: dict = {}
        t0 = time.perf_counter()
        out = search(*args, stats=stats, **kwargs)
        record["plaid_ms"].append((time.perf_counter() - t0) * 1000)
        for key in STATS:
            record[key].append(float(stats.get(key, 0.0)))
        return out

    engine.search = timed_search
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        q, qp = encode_queries_pooled(model, [text], show_progress=False)
        t1 = time.perf_counter()
        searcher.search_encoded(q[0], 10, q_pooled=None if qp is None else qp[0])
        record["encode_ms"].append((t1 - t0) * 1000)
        record["total_ms"].append((time.perf_counter() - t0) * 1000)
        if i == 9:   # warm-up done
            for values in record.values():
                values.clear()
    kernel = engine.kernel
    return {"median_ms": {k: round(float(np.median(v)), 3) for k, v in record.items() if v},
            "queries": len(record["total_ms"]), "kernel_isa": kernel.isa if kernel else "torch engine",
            "torch_capability": torch_capability(), "exact_stage": engine.exact_stage,
            "query_precision": searcher.query_precision.get("chosen"), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    """Run every configuration in turn over the rounds and write the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=".cache/bench/medquad-1k", help="bench_search.py's work folder")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {', '.join(CONFIGS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-queries", type=int, default=200)
    ap.add_argument("--query-encoder", default=None, metavar="DIR",
                    help="also run every configuration with this distilled query encoder (a query_encoder/ folder, "
                         "e.g. checkpoints/medcolbert-minilm-v5/query_encoder)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.child:
        print(json.dumps(child(work, args.max_queries, args.query_encoder)))
        return
    if not (work / "medcolbert-nbits2" / "manifest.json").is_file() or not (work / "checkpoint").is_dir():
        raise SystemExit(f"{work} lacks medcolbert-nbits2/ or checkpoint/: run medcolbert/bench/search.py first")
    if args.out is None:
        raise SystemExit("--out is required")
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    from medcolbert.search import cpu_kernel

    kernel = cpu_kernel.load()
    runs = kernel.isas() if kernel is not None else ()
    # A configuration whose loops this CPU cannot run (avx2 on ARM) is left out, and said so.
    for name in [n for n in names if CONFIGS[n].get("MEDCOLBERT_PLAID_ISA", "portable") not in runs]:
        print(f"skipping {name}: this CPU's kernel runs {', '.join(runs) or 'no compiled loops'}", flush=True)
        names.remove(name)
    from medcolbert.bench import write_results
    from medcolbert.machine import cpu_features, cpu_model

    # Each configuration with the full query encoder, and with the distilled one where asked ("NAME+distilled").
    runs_of = {name: (name, None) for name in names}
    if args.query_encoder:
        runs_of.update({f"{name}+distilled": (name, args.query_encoder) for name in names})
    names = list(runs_of)

    rounds = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        row = {}
        for name in order:
            config, encoder = runs_of[name]
            env = {**os.environ, **CONFIGS[config]}
            done = subprocess.run([sys.executable, "-m", "medcolbert.bench.stages", "--child", "--work", str(work), "--max-queries",
                                   str(args.max_queries), *(["--query-encoder", encoder] if encoder else [])],
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"configuration {name} failed:\n{done.stderr[-3000:]}")
            row[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"round {r + 1} {name}: {row[name]['median_ms']}", flush=True)
        rounds.append({"round": r + 1, "order": order, "configs": row})
    cpu = f"{cpu_model()} [{'+'.join(cpu_features())}]"
    lines = [f"# Per-stage medians (ms) at k=10, one query at a time, {work.name}", "",
             f"CPU: {cpu}. Each configuration in its own process, rotating order over {args.rounds} rounds.", "",
             "| round | configuration | kernel loops | torch | precision | exact stage | encode | centroid scores "
             "| candidates | exact | PLAID all | total |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rounds:
        for name in names:
            c = row["configs"][name]
            m = c["median_ms"]
            lines.append(f"| {row['round']} | {name} | {c['kernel_isa']} | {c['torch_capability']} | "
                         f"{c['query_precision']} | {c['exact_stage']} | {m['encode_ms']} | "
                         f"{m['centroid_scores_ms']} | {m['candidates_ms']} | {m['exact_ms']} | {m['plaid_ms']} | "
                         f"{m['total_ms']} |")
    write_results(Path(args.out) / "stages.json", {"cpu": cpu, "work": str(work), "query_encoder": args.query_encoder,
                                                    "rounds": rounds}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
