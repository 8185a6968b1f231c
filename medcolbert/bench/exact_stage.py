"""PLAID's search stages before and after scoring from the residual codes, in alternating rounds, per stage.

On one index with encoded queries (search only, one query at a time, the quality preset's knobs for the
index's size, as medcolbert/bench/scale.py searches), each round times:
  before            the exact stage as it was: decompress then multiply (torch), a fixed ndocs / 4 documents
  <stage>           each exact stage of EXACT_STAGES, with the exact stage's size following the candidates
and records where each search's time goes (centroid scores, candidate stages 1-3, exact stage) and how many
documents the exact stage scored. Ratios are per round (same run); the CPU's model name and what
`choose_exact_stage` picks on this machine go with them. Raw results to OUT/results.json, a table to OUT/results.md.

  .venv/bin/medcolbert bench exact-stage --index .cache/scale-v5/index-1000000 \\
      --queries-npy .cache/scale-v5/queries.npy --out experiments/engine/exact-stage/1000000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from medcolbert.bench import cpu_model, percentiles, write_results
from medcolbert.indexing.index import Index
from medcolbert.search.engine import EXACT_STAGES, PlaidEngine, choose_exact_stage
from medcolbert.search.plaid import SearchConfig


def main(argv: list[str] | None = None) -> None:
    """Alternate the variants over rounds and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries-npy", required=True)
    ap.add_argument("--num-queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    index = Index.open(args.index)
    Q = torch.from_numpy(np.load(args.queries_npy)[: args.num_queries])
    queries = [q[q.abs().sum(-1) > 0] for q in Q]
    engines = {name: PlaidEngine(index, "cpu", exact_stage=name) for name in EXACT_STAGES}
    chosen = choose_exact_stage(engines["lut"], remeasure=True)
    variants = ["before", *EXACT_STAGES]
    result: dict = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "index": Path(args.index).name,
                    "documents": len(index), "vectors": int(index.doclens.sum()), "queries": len(queries),
                    "chosen": {k: v for k, v in chosen.items()}, "rounds": []}
    for r in range(args.rounds):
        row: dict = {}
        for name in variants[r % len(variants):] + variants[:r % len(variants)]:
            engine = engines["decompress+torch" if name == "before" else name]
            for k in args.ks:
                cfg = SearchConfig().resolved(k, len(index))
                # "before": the exact stage's size fixed at ndocs / 4, as it was.
                exact_docs = max(k, cfg.ndocs // 4) if name == "before" else None  # type: ignore[operator]
                times, stats = [], []
                for i, q in enumerate(queries):
                    st: dict = {}
                    t0 = time.perf_counter()
                    engine.search(q, k, cfg.ncells, cfg.centroid_score_threshold, cfg.ndocs, stats=st,  # type: ignore[arg-type]
                                  exact_docs=exact_docs)
                    if i >= 3:   # the first calls allocate scratch buffers
                        times.append((time.perf_counter() - t0) * 1000)
                        stats.append(st)
                row[f"{name} k{k}"] = {**percentiles(times, (50, 95)),
                                       **{f"median_{key}": float(np.median([s[key] for s in stats])) for key in stats[0]}}
        result["rounds"].append(row)
        print(f"round {r + 1}: " + ", ".join(f"{key} {v['p50_ms']:.2f}" for key, v in row.items()), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out / "results.json", result, report(result, args.ks))
    print(report(result, args.ks))


def report(result: dict, ks: list[int]) -> str:
    """Medians over rounds, the per-stage split, and per-round ratios to "before"."""
    keys = list(result["rounds"][0])
    lines = [f"# {result['index']}: {result['documents']:,} documents, {result['vectors']:,} vectors, "
             f"{result['queries']} queries, search only, quality preset", "",
             f"CPU: {result['cpu']} ({result['threads']} threads). choose_exact_stage on this machine: "
             f"{result['chosen']['chosen']} (probe p50 ms: {result['chosen'].get('p50_ms')}).", "",
             "| variant | p50 / p95 ms | centroid scores ms | candidate stages ms | exact stage ms | documents scored exactly | "
             "p50 ratio to before, per round |", "|---|---|---|---|---|---|---|"]
    for key in keys:
        def med(stat: str) -> float:
            return float(np.median([r[key][stat] for r in result["rounds"]]))

        k = key.split()[-1]
        ratios = [r[key]["p50_ms"] / r[f"before {k}"]["p50_ms"] for r in result["rounds"]]
        lines.append(f"| {key} | {med('p50_ms'):.2f} / {med('p95_ms'):.2f} | {med('median_centroid_scores_ms'):.2f} | "
                     f"{med('median_candidates_ms'):.2f} | {med('median_exact_ms'):.2f} | {med('median_exact_scored'):.0f} | "
                     + " / ".join(f"{x:.2f}" for x in ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
