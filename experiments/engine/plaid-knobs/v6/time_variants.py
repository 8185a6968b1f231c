"""Search-only latency of the plaid-knobs-v6 variants on SciFact's v5 index (the engines benchmark's, built by
`make bench-engines`), queries encoded beforehand, k=10, three rounds in rotating order, p50/p95 ms per round.

    .venv/bin/python experiments/engine/plaid-knobs/v6/time_variants.py > experiments/engine/plaid-knobs/v6/latency-scifact.txt
"""
import json, sys, numpy as np, torch
from pathlib import Path
from medcolbert.indexing.index import Index
from medcolbert.modeling.encoder import ColBERT
from medcolbert.search.plaid import Searcher
from medcolbert.bench import percentiles, time_each, cpu_model
work = Path(".cache/engines/scifact")
meta = json.loads((work / "meta.json").read_text())
model = ColBERT.from_pretrained(meta.get("model_source"), device="cpu", doc_maxlen=meta["doc_maxlen"])
s = Searcher(Index.open(work / "index-medcolbert"), model)
Q = torch.from_numpy(np.load(work / "queries.npy")); P = torch.from_numpy(np.load(work / "queries_pooled.npy"))
variants = {"v5 default (depth 100, exact 256)": {"hybrid_depth": 100}, "depth 100, exact 64": {"hybrid_depth": 100, "exact_docs": 64}, "depth 50, exact 64": {"hybrid_depth": 50, "exact_docs": 64},
            "depth 32, exact 64": {"hybrid_depth": 32, "exact_docs": 64},
            "depth 32, exact 64, ncells 1, ndocs 256": {"hybrid_depth": 32, "exact_docs": 64, "ncells": 1, "ndocs": 256}}
print(cpu_model())
idx = list(range(300))
res = {v: [] for v in variants}
for rnd in range(3):
    names = list(variants)[rnd % len(variants):] + list(variants)[:rnd % len(variants)]
    for v in names:
        ms = time_each(lambda i: s.search_encoded(Q[i], 10, q_pooled=P[i], **variants[v]), idx)
        res[v].append(percentiles(ms, (50, 95)))
for v, r in res.items():
    print(f"{v:42s}", " | ".join(f"{x['p50_ms']:.2f}/{x['p95_ms']:.2f}" for x in r))
