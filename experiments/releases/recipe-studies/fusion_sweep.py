"""How a pooled-head model's two scores combine when reranking a run's top 100 (issue 12, exploratory).

Prints nDCG@10 for MaxSim + w x (query vectors) x pooled cosine at several w (w = 1 is the release's rule), for
z-scored and rank-fused (RRF) combinations, and the per-query mean by query length (in vectors) for w = 0, 1, 100.
Usage: python experiments/releases/recipe-studies/fusion_sweep.py BEIR_FOLDER SPLIT RUN.trec VECTOR_CACHE MODEL [--int8-pooled]
(document vectors come from the experiment harness's cache folder, encoded into it when missing; --int8-pooled
rounds the documents' pooled vectors as an index stores them).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from medcolbert import ColBERT
from medcolbert.evaluation.datasets import BeirDataset, load_beir, read_run
from medcolbert.evaluation.metrics import evaluate, per_query
from medcolbert.indexing.storage import quantize_pooled
from medcolbert.scoring import maxsim_one
from medcolbert.vector_cache import VectorCache

Parts = dict[str, tuple[torch.Tensor, torch.Tensor, int]]  # query id -> (MaxSim, pooled cosine, query vectors)


def score_parts(model: ColBERT, queries: dict[str, str], texts: dict[str, str], candidates: dict[str, list[str]],
                cache: VectorCache, int8_pooled: bool = False) -> Parts:
    """Each query's MaxSim and pooled cosine over its candidates, and its vector count."""
    docs = sorted({d for c in candidates.values() for d in c})
    vectors = cache.get_or_encode(docs, [texts[d] for d in docs], show_progress=True)
    pooled = torch.nn.functional.normalize(cache.pooled_vectors(docs), dim=-1)
    if int8_pooled:
        q8, scale = quantize_pooled(pooled.numpy())
        pooled = torch.from_numpy(q8.astype("float32") * scale[:, None])
    row = {d: i for i, d in enumerate(docs)}
    qids = list(candidates)
    Q, Q_pooled = model.encode_queries([queries[q] for q in qids], pooled=True)
    Q_pooled = torch.nn.functional.normalize(Q_pooled, dim=-1)
    parts: Parts = {}
    for i, q in enumerate(qids):
        n = int((Q[i].abs().sum(-1) > 0).sum())  # [PAD] rows are zero
        maxsim = maxsim_one(Q[i, :n], [vectors[d] for d in candidates[q]])
        cosine = pooled[[row[d] for d in candidates[q]]] @ Q_pooled[i]
        parts[q] = (maxsim, cosine.float(), n)
    return parts


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Scores centred and scaled over one query's candidates."""
    return (x - x.mean()) / (x.std() + 1e-6)


def rrf(x: torch.Tensor, k: int = 60) -> torch.Tensor:
    """Reciprocal-rank scores of one query's candidates."""
    return 1.0 / (k + torch.argsort(torch.argsort(-x)).float() + 1)


def combined_run(parts: Parts, candidates: dict[str, list[str]],
                 combine: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> dict[str, dict[str, float]]:
    """The run of one way of combining the two scores."""
    return {q: {d: float(s) for d, s in zip(candidates[q], combine(*parts[q]))} for q in candidates}


def sweep_inputs(description: str, flags: tuple[str, ...] = ()
                 ) -> tuple[argparse.Namespace, BeirDataset, ColBERT, dict[str, list[str]]]:
    """The positional arguments DATA SPLIT RUN VECTOR_CACHE MODEL (and on/off flags), parsed and loaded: the data
    set, the model and each judged query's top 100 of the run."""
    ap = argparse.ArgumentParser(description=description)
    for name in ("data", "split", "run", "vector_cache", "model"):
        ap.add_argument(name)
    for flag in flags:
        ap.add_argument(flag, action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_beir(args.data, split=args.split)
    run = read_run(args.run)
    model = ColBERT.from_pretrained(args.model)
    candidates = {q: sorted(run[q], key=run[q].get, reverse=True)[:100] for q in run if q in ds.qrels}
    return args, ds, model, candidates


def main() -> None:
    """Print the sweep for one dataset, run and model."""
    args, ds, model, candidates = sweep_inputs(__doc__.splitlines()[0], ("--int8-pooled",))
    texts = {d: ds.corpus[d].full_text for c in candidates.values() for d in c}
    parts = score_parts(model, ds.queries, texts, candidates, VectorCache(model, args.vector_cache),
                        args.int8_pooled)
    print("queries", len(candidates), "documents", len(texts), flush=True)
    ways: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {}
    for w in (0, 0.5, 1, 2, 4, 8, 100):
        ways[f"raw w={w}"] = lambda m, c, n, w=w: m + w * n * c
    for a in (0.5, 1.0, 2.0):
        ways[f"z a={a}"] = lambda m, c, n, a=a: a * zscore(m) + zscore(c)
    ways["rrf"] = lambda m, c, n: rrf(m) + rrf(c)
    for name, way in ways.items():
        print(f"{name:>14} {evaluate(combined_run(parts, candidates, way), ds.qrels, ['ndcg@10'])['ndcg@10']:.4f}",
              flush=True)
    by_weight = {w: per_query(combined_run(parts, candidates, ways[f"raw w={w}"]), ds.qrels, ["ndcg@10"])["ndcg@10"]
                 for w in (0, 1, 100)}
    for lo, hi in ((0, 32), (33, 48), (49, 80), (81, 10**6)):
        sel = [q for q in candidates if lo <= parts[q][2] <= hi]
        if sel:
            means = [statistics.mean(by_weight[w][q] for q in sel) for w in (0, 1, 100)]
            print(f"len {lo}-{hi}: n={len(sel)} maxsim {means[0]:.4f} w1 {means[1]:.4f} pooled {means[2]:.4f}")


if __name__ == "__main__":
    main()
