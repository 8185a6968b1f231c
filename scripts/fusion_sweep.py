"""Issue 12 exploration: how a pooled-head model's two scores combine when reranking a run's top 100.

Prints nDCG@10 for MaxSim + w x (query vectors) x pooled cosine at several w (w=1 is the release's rule), for
z-scored and rank-fused (RRF) combinations, and the per-query mean by query length (vectors) for w = 0, 1, 100.
Usage: python scripts/fusion_sweep.py BEIR_FOLDER SPLIT RUN.trec VECTOR_CACHE MODEL
(document vectors come from the experiment harness's cache, encoded there if missing)."""
import sys, json
import torch
from medcolbert import ColBERT
from medcolbert.evaluation.datasets import load_beir, read_run
from medcolbert.evaluation.metrics import evaluate
from medcolbert.vector_cache import VectorCache
from medcolbert.scoring import maxsim_one
torch.set_num_threads(1)
data, split, runfile, vroot, model_path = sys.argv[1:6]
ds = load_beir(data, split=split)
run = read_run(runfile)
model = ColBERT.from_pretrained(model_path)
cache = VectorCache(model, vroot)
qids = [q for q in run if q in ds.queries and q in ds.qrels]
cands = {q: sorted(run[q], key=run[q].get, reverse=True)[:100] for q in qids}
docs = sorted({d for q in qids for d in cands[q]})
print("queries", len(qids), "docs", len(docs), "missing", len(cache.missing(docs, ds.texts(docs))), flush=True)
vec = cache.get_or_encode(docs, ds.texts(docs), show_progress=True)
pooled = torch.nn.functional.normalize(cache.pooled_vectors(docs), dim=-1)
pidx = {d: i for i, d in enumerate(docs)}
Q, Qp = model.encode_queries([ds.queries[q] for q in qids], pooled=True)
Qp = torch.nn.functional.normalize(Qp, dim=-1)
parts = {}
for i, q in enumerate(qids):
    L = int((Q[i].abs().sum(-1) > 0).sum())
    ms = maxsim_one(Q[i, :L], [vec[d] for d in cands[q]])
    cos = pooled[[pidx[d] for d in cands[q]]] @ Qp[i]
    parts[q] = (ms, cos.float(), L)
def z(x): return (x - x.mean()) / (x.std() + 1e-6)
def rr(x): return 1.0 / (60 + torch.argsort(torch.argsort(-x)).float() + 1)
res = {}
def ev(name, f):
    out = {q: {d: float(s) for d, s in zip(cands[q], f(*parts[q]))} for q in qids}
    res[name] = evaluate(out, ds.qrels, ["ndcg@10"])["ndcg@10"]
    print(f"{name:>14} {res[name]:.4f}", flush=True)
for w in [0, 0.5, 1, 2, 4, 8, 100]:
    ev(f"raw w={w}", lambda ms, cos, L, w=w: ms + w * L * cos)
for a in [0.5, 1.0, 2.0]:
    ev(f"z a={a}", lambda ms, cos, L, a=a: a * z(ms) + z(cos))
ev("rrf", lambda ms, cos, L: rr(ms) + rr(cos))
from medcolbert.evaluation.metrics import per_query
pq = {}
for w in [0, 1, 100]:
    out = {q: {d: float(s) for d, s in zip(cands[q], parts[q][0] + w * parts[q][2] * parts[q][1])} for q in qids}
    pq[w] = per_query(out, ds.qrels, ["ndcg@10"])
lens = {q: parts[q][2] for q in qids}
import statistics
for lo, hi in [(0, 32), (33, 48), (49, 80), (81, 1000)]:
    sel = [q for q in qids if lo <= lens[q] <= hi]
    if not sel: continue
    def m(w): return statistics.mean(pq[w]["ndcg@10"][q] for q in sel)
    print(f"len {lo}-{hi}: n={len(sel)} maxsim {m(0):.4f} w1 {m(1):.4f} pooled {m(100):.4f}")
