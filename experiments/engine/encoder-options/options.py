"""Query encoder options on this CPU (v5, one MedQuAD dev query at a time, 200 queries, 2 threads): the traced
graph in float32 (oneDNN-optimized) and bfloat16 (frozen: what the precision choice picks here), bfloat16 through
optimize_for_inference, and int8 dynamic quantization of the backbone's Linear layers (eager); p50/p95 ms and the
lowest cosine of any query vector with float32 eager encoding.

    .venv/bin/python experiments/engine/encoder-options/options.py > experiments/engine/encoder-options/options.txt
"""
import copy
import warnings

import torch

from medcolbert import load_beir
from medcolbert.bench import cpu_model, percentiles, time_each
from medcolbert.modeling.encoder import ColBERT, encode_queries_pooled

warnings.simplefilter("ignore")
model = ColBERT.from_pretrained(None, device="cpu")
texts = list(load_beir("../shared/data/medquad/dev-retrieval", "dev").queries.values())[:200]
reference = encode_queries_pooled(model, texts[:50], show_progress=False)[0]
keep = reference.abs().sum(-1) > 0


def report(name: str, m: ColBERT) -> None:
    """Time one query at a time and compare with float32 eager."""
    ms = time_each(lambda t: encode_queries_pooled(m, [t], show_progress=False), texts)
    got = encode_queries_pooled(m, texts[:50], show_progress=False)[0]
    cosine = torch.nn.functional.cosine_similarity(reference[keep], got[keep], dim=-1).min()
    p = percentiles(ms, (50, 95))
    print(f"{name:42s} p50 {p['p50_ms']:.2f}  p95 {p['p95_ms']:.2f}  min cosine {float(cosine):.6f}")


print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
traced = copy.deepcopy(model)
traced.trace_queries = True
for round_ in range(2):
    traced._query_graphs, traced.query_dtype = {}, None
    report("float32, traced + optimize_for_inference", traced)
    traced._query_graphs, traced.query_dtype = {}, torch.bfloat16
    report("bfloat16, traced + frozen (chosen here)", traced)
    freeze = torch.jit.freeze
    torch.jit.freeze = lambda m, *a, **k: torch.jit.optimize_for_inference(m)   # the bf16 graph's other path
    traced._query_graphs = {}
    report("bfloat16, traced + optimize_for_inference", traced)
    torch.jit.freeze = freeze
int8 = copy.deepcopy(model)
int8.backbone = torch.ao.quantization.quantize_dynamic(int8.backbone, {torch.nn.Linear}, dtype=torch.qint8)
report("int8 dynamic (backbone Linear), eager", int8)
