"""One-query encoding (v5, bf16 traced graph, 100 MedQuAD dev questions) at 2 and 1 torch threads, on a quiet
machine and beside one busy process, with OpenMP's default and passive wait policies.

    bash experiments/engine/threads-under-load/run.sh > experiments/engine/threads-under-load/threads.txt
"""
import os
import sys
import warnings

import torch

from medcolbert import load_beir
from medcolbert.bench import cpu_model, percentiles, time_each
from medcolbert.modeling.encoder import ColBERT, encode_queries_pooled

warnings.simplefilter("ignore")
model = ColBERT.from_pretrained(None, device="cpu")
model.trace_queries, model.query_dtype = True, torch.bfloat16
texts = list(load_beir("../shared/data/medquad/dev-retrieval", "dev").queries.values())[:100]
threads = int(sys.argv[1])
torch.set_num_threads(threads)
p = percentiles(time_each(lambda q: encode_queries_pooled(model, [q], show_progress=False), texts), (50, 95))
print(f"{cpu_model()} | OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'default')} | {threads} threads | "
      f"p50 {p['p50_ms']:.2f} ms | p95 {p['p95_ms']:.2f} ms")
