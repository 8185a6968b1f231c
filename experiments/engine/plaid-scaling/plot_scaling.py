"""Latency against collection size: a table and a plot from the results of each size.

Where OUT/SIZE/latency/latency.json exists (medcolbert/bench/latency.py: medcolbert and colbert-ai side by side
in alternating rounds), its per-system medians over rounds are used; otherwise bench_search.py's
OUT/SIZE/results.json (medcolbert alone).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    """Read OUT/*/latency/latency.json or OUT/*/results.json, write OUT/scaling.md and OUT/scaling.png."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="experiments/engine/plaid-scaling")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        side_by_side = folder / "latency" / "latency.json"
        if side_by_side.is_file():
            r = json.loads(side_by_side.read_text())
            for name in r["rounds"][0]["systems"]:
                per_round = [x["systems"][name] for x in r["rounds"]]
                ratio = float(np.median([x["p50_ratio"] for x in per_round])) if "p50_ratio" in per_round[0] else None
                rows.append((r["documents"], name, float(np.median([x["p50_ms"] for x in per_round])),
                             float(np.median([x["p95_ms"] for x in per_round])), per_round[0]["ndcg@10"], r["queries"],
                             ratio))
        elif (folder / "results.json").is_file():
            r = json.loads((folder / "results.json").read_text())
            for name, s in r["systems"].items():
                if "p50_ms" in s:
                    rows.append((r["documents"], name, s["p50_ms"], s["p95_ms"], s["ndcg@10"], r.get("queries"), None))
    rows.sort(key=lambda r: r[:2])
    lines = ["| documents | system | p50 ms | p95 ms | p50 / colbert-ai | nDCG@10 | queries |",
             "|---|---|---|---|---|---|---|"]
    # p50/p95: medians over the alternating rounds where colbert-ai ran side by side; the ratio is the median
    # of the per-round ratios (each measured within one round).
    lines += [f"| {d} | {n} | {p50:.1f} | {p95:.1f} | {'' if ratio is None else f'{ratio:.2f}'} | {nd:.4f} | {q} |"
              for d, n, p50, p95, nd, q, ratio in rows]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({r[1] for r in rows}):
        pts = [(d, p50, p95) for d, n, p50, p95, *_ in rows if n == name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{name} p50")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="x", linestyle="--", label=f"{name} p95")
    ax.set_xlabel("documents in the index (MedQuAD dev corpus and subsets)")
    ax.set_ylabel("ms per query, k=10, query encoding included")
    ax.set_title("Search latency against collection size (2 CPU cores)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)


if __name__ == "__main__":
    main()
