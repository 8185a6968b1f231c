"""One-query search latency (v5, MedQuAD 1k subset of medcolbert/bench/search.py, 200 dev questions, k=10, query
encoding included) with the thread choice of the encoder and the search stages on (the default), off (torch's own
thread count always) and at one thread throughout; run quiet and beside one busy process by run.sh.

    .venv/bin/python experiments/engine/threads-under-load/search.py on|off|one
"""
import sys
import warnings

import torch

from medcolbert import ColBERT
from medcolbert.bench import cpu_model, percentiles, time_each
from medcolbert.indexing.index import Index
from medcolbert.machine import THREADS
from medcolbert.search.plaid import Searcher

warnings.simplefilter("ignore")
mode = sys.argv[1]
work = ".cache/bench/medquad-1k"
model = ColBERT.from_pretrained(None, device="cpu")
searcher = Searcher(Index.open(f"{work}/medcolbert-nbits2"), model, compiled=True)
if mode == "one":
    torch.set_num_threads(1)
THREADS.enabled = mode == "on"
queries = [line.split("\t")[1] for line in open(f"{work}/queries.tsv").read().splitlines()][:200]
p = percentiles(time_each(lambda q: searcher.search(q, k=10), queries, 5), (50, 95, 99))
print(f"{cpu_model()} | thread choice {mode:3s} | p50 {p['p50_ms']:.2f} ms | p95 {p['p95_ms']:.2f} ms | "
      f"p99 {p['p99_ms']:.2f} ms")
