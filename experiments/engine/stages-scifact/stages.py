"""Where a default search's time goes on SciFact (v5, pooled head, k=10): query encoding, the pooled side's
cosines and nearest entries, PLAID's stages (centroid scores, candidate stages, exact stage over its survivors and
the pooled side's entries), and the rest (joining, ids). Medians over the 300 test queries, one query at a time,
after a warm-up; reads the engines benchmark's index (`make bench-engines`).

    .venv/bin/python experiments/engine/stages-scifact/stages.py > experiments/engine/stages-scifact/stages.txt
"""
import json
import time
from pathlib import Path

import numpy as np
import torch

from medcolbert.bench import cpu_model, percentiles
from medcolbert.indexing.index import Index
from medcolbert.modeling.encoder import ColBERT, encode_queries_pooled
from medcolbert.search.plaid import Searcher

work = Path(".cache/engines/scifact")
meta = json.loads((work / "meta.json").read_text())
model = ColBERT.from_pretrained(meta.get("model_source"), device="cpu", doc_maxlen=meta["doc_maxlen"])
searcher = Searcher(Index.open(work / "index-medcolbert"), model)
texts = meta["query_texts"]
engine = searcher._fresh_engine()
record: dict[str, list[float]] = {}


def timed(name, fn):  # type: ignore[no-untyped-def]
    """fn, its time added to record[name] (ms)."""
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        record.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
        return out
    return wrapper


search_engine = engine.search


def engine_search(*args, **kwargs):  # type: ignore[no-untyped-def]
    stats: dict = {}
    t0 = time.perf_counter()
    out = search_engine(*args, stats=stats, **kwargs)
    record.setdefault("PLAID engine, all stages", []).append((time.perf_counter() - t0) * 1000)
    for key in ("centroid_scores_ms", "candidates_ms", "exact_ms", "exact_scored", "vectors_decompressed"):
        record.setdefault(key, []).append(stats.get(key, 0.0))
    return out


engine.search = engine_search
searcher._pooled_nearest = timed("pooled cosines + nearest", searcher._pooled_nearest)
encode = timed("query encoding", lambda t: encode_queries_pooled(model, [t], show_progress=False))
total: list[float] = []
for i, text in enumerate(texts):
    t0 = time.perf_counter()
    q, qp = encode(text)
    searcher.search_encoded(q[0], 10, q_pooled=qp[0])
    total.append((time.perf_counter() - t0) * 1000)
    if i == 4:   # warm-up done
        record.clear()
        total.clear()
print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; {len(total)} SciFact test queries, k=10, default knobs "
      f"{searcher.resolved_config(10)}, exact stage {engine.exact_stage}")
print(f"search with encoding: {percentiles(total, (50, 95))}")
for key, values in record.items():
    print(f"{key:28s} median {np.median(values):9.2f}")
