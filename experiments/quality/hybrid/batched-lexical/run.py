"""Batched BM25 (Index.lexical_search_many: one sparse product) against one query at a time, SciFact test (300
claims, 5,183 abstracts, k=100), on the index `make bench-hybrid` leaves in .cache/bench/hybrid-scifact; two rounds.

    .venv/bin/python experiments/quality/hybrid/batched-lexical/run.py > experiments/quality/hybrid/batched-lexical/result.txt
"""
import time

from medcolbert import load_beir
from medcolbert.machine import cpu_id
from medcolbert.indexing.index import Index
idx = Index.open(".cache/bench/hybrid-scifact/index")
data = load_beir("../shared/data/scifact", "test")
qs = list(data.queries.values())
for rep in range(2):
    t0 = time.perf_counter(); one = [idx.lexical_search(q, 100) for q in qs]; t1 = time.perf_counter()
    many = idx.lexical_search_many(qs, 100); t2 = time.perf_counter()
    print(f"{len(qs)} queries, k=100: one at a time {t1-t0:.3f} s, batched {t2-t1:.3f} s, ratio {(t2-t1)/(t1-t0):.2f}")
assert all([p for p, _ in a][:10] == [p for p, _ in b][:10] for a, b in zip(one, many))
print(f"CPU: {cpu_id()}")
