"""Hybrid search with PLAID's side at depth 100 (the default) and at k (plaid_depth=10), against PLAID alone: SciFact test,
300 claims, k=10, one query at a time with query encoding, 3 rounds, medians; on the index `make bench-hybrid` leaves
in .cache/bench/hybrid-scifact.

    .venv/bin/python experiments/quality/hybrid/plaid-depth-cost/run.py > experiments/quality/hybrid/plaid-depth-cost/result.txt
"""
import time, numpy as np
from medcolbert import ColBERT, load_beir
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
from medcolbert.bench import time_each
m = ColBERT.from_pretrained("checkpoints/medcolbert-minilm-v5", device="cpu")
idx = Index.open(".cache/bench/hybrid-scifact/index")
s = Searcher(idx, m)
qs = [q for q in load_beir("../shared/data/scifact","test").queries.values()][:300]
for r in range(3):
    res = {}
    for name, fn in [("plaid", lambda q: s.search(q, k=10)), ("hybrid d100", lambda q: s.search(q, k=10, mode="hybrid")),
                     ("hybrid plaid10", lambda q: s.search(q, k=10, mode="hybrid", plaid_depth=10))]:
        res[name] = np.median(time_each(fn, qs))
    print({k: round(v, 2) for k, v in res.items()}, "ratios", round(res["hybrid d100"]/res["plaid"], 2), round(res["hybrid plaid10"]/res["plaid"], 2))
from medcolbert.machine import cpu_id
print(f"CPU: {cpu_id()}")
