"""Does weighting a query's tokens change MaxSim's reranking of consumer questions? (issue 12, exploratory)

MaxSim sums every query vector's best match with the same weight, so a long consumer question's filler words and
its [MASK] padding count as much as its medical terms. Scaling query vector i by w_i >= 0 gives
sum_i w_i max_j q_i . d_j, so each weighting is tried by scaling rows, with no new index. Prints nDCG@10 of a
run's top 100 reranked by: plain MaxSim, without [MASK] rows, with word-piece IDF weights (from the dataset's
corpus) at several powers, and each of those plus the pooled head (w = 1 rule) for a pooled-head model.
Usage: python experiments/releases/recipe-studies/query_weight_sweep.py BEIR_FOLDER SPLIT RUN.trec VECTOR_CACHE MODEL
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from medcolbert import ColBERT
from medcolbert.evaluation.metrics import evaluate
from medcolbert.modeling.encoder import has_pooled_head
from medcolbert.scoring import maxsim_one
from medcolbert.vector_cache import VectorCache

from fusion_sweep import sweep_inputs


def word_piece_idf(model: ColBERT, texts: list[str]) -> dict[int, float]:
    """log(N / df) of each word piece over the texts (pieces never seen get the largest value)."""
    df: Counter[int] = Counter()
    for start in range(0, len(texts), 2048):
        for ids in model.tokenizer.tokenizer(texts[start:start + 2048], add_special_tokens=False,
                                             return_attention_mask=False)["input_ids"]:
            df.update(set(ids))
    n = len(texts)
    return {t: math.log(n / c) for t, c in df.items()} | {-1: math.log(n)}


def main() -> None:
    """Print the sweep for one dataset, run and model."""
    args, ds, model, candidates = sweep_inputs(__doc__.splitlines()[0])
    docs = sorted({d for c in candidates.values() for d in c})
    cache = VectorCache(model, args.vector_cache)
    vectors = cache.get_or_encode(docs, [ds.corpus[d].full_text for d in docs], show_progress=True)
    pooled_head = has_pooled_head(model)
    if pooled_head:
        pooled = dict(zip(docs, torch.nn.functional.normalize(cache.pooled_vectors(docs), dim=-1)))
    idf = word_piece_idf(model, [ds.corpus[d].full_text for d in ds.corpus])
    qids = list(candidates)
    Q, Q_pooled = model.encode_queries([ds.queries[q] for q in qids], pooled=True) if pooled_head else \
        (model.encode_queries([ds.queries[q] for q in qids]), None)
    seqs = model.tokenizer.query_token_ids([ds.queries[q] for q in qids])
    special = {model.tokenizer.tokenizer.cls_token_id, model.tokenizer.tokenizer.sep_token_id}
    ways = ["plain", "no-mask", "idf^0.5", "idf^1", "idf^2", "idf^1 no-mask"]
    runs: dict[str, dict[str, dict[str, float]]] = {w: {} for w in ways}
    runs |= {f"{w} + pooled": {} for w in ways} if pooled_head else {}
    mean_idf = sum(idf.values()) / len(idf)
    for i, q in enumerate(qids):
        n = int((Q[i].abs().sum(-1) > 0).sum())
        seq = seqs[i]
        # Position 1 is the [Q] marker, positions past the text are [MASK]; both get the mean IDF.
        piece_idf = torch.tensor([idf.get(t, idf[-1]) if p != 1 and t not in special else mean_idf
                                  for p, t in enumerate(seq)] + [mean_idf] * (n - len(seq)))
        is_text = torch.tensor([1.0] * len(seq) + [0.0] * (n - len(seq)))
        weights = {"plain": torch.ones(n), "no-mask": is_text, "idf^0.5": piece_idf.sqrt(), "idf^1": piece_idf,
                   "idf^2": piece_idf ** 2, "idf^1 no-mask": piece_idf * is_text}
        cosine = torch.stack([pooled[d] for d in candidates[q]]) @ Q_pooled[i] if pooled_head else None
        for name, w in weights.items():
            w = w * n / w.sum()  # same total weight as plain MaxSim, so the pooled term's scale is unchanged
            s = maxsim_one(Q[i, :n] * w[:, None], [vectors[d] for d in candidates[q]])
            runs[name][q] = dict(zip(candidates[q], s.tolist()))
            if cosine is not None:
                runs[f"{name} + pooled"][q] = dict(zip(candidates[q], (s + n * cosine).tolist()))
    print("queries", len(qids), "documents", len(docs), flush=True)
    for name, r in runs.items():
        print(f"{name:>22} {evaluate(r, ds.qrels, ['ndcg@10'])['ndcg@10']:.4f}", flush=True)


if __name__ == "__main__":
    main()
