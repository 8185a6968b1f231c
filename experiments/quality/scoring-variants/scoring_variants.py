"""Inference-only changes to MaxSim scoring, measured on consumer-health dev (issue 12): no retraining.

Reranks the untuned single-vector model's top `depth` (the flagship's run file) with the default model's
full-precision document vectors (the flagship's vector cache) and scores each variant against plain MaxSim
(paired t-test over the 175 queries):
- query-token weights: each query token's MaxSim term multiplied by its IDF over the corpus (normalised to
  mean 1 per query), by sqrt(IDF), or 0 for tokens in more than 10% / 30% of documents ("stop" words);
  [CLS], [Q], [SEP] and [MASK] positions keep weight 1; "no [MASK]" drops the augmentation positions;
- global + local: MaxSim per query token plus lambda x the cosine of the mean-pooled query and document token
  vectors (one more vector per document); lambda = 1000 is the pooled cosine alone;
- question by question: the message split into sentences (at . ? ! and line breaks; parts of 3+ words),
  each encoded as its own query; a document scores the best or the mean of the sentences' MaxSim per query
  token, alone or added to the whole message's.
Records experiments/quality/scoring-variants/.

  .venv/bin/python experiments/quality/scoring-variants/scoring_variants.py --depth 100
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from medcolbert.bench import cpu_model as cpu_name

from medcolbert import ColBERT
from medcolbert.evaluation.datasets import load_beir, read_run
from medcolbert.evaluation.metrics import per_query
from medcolbert.vector_cache import VectorCache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/consumer-health/dev-retrieval")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--first-stage", default="experiments/quality/flagship/runs/consumer-health.MiniLM-single-vector-base.trec")
    ap.add_argument("--vectors", default=".cache/experiments/flagship/vectors", help="the flagship's vector cache")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--out", default="experiments/quality/scoring-variants")
    args = ap.parse_args()

    model = ColBERT.from_pretrained()
    ds = load_beir(args.data, args.split)
    qids = sorted(ds.qrels)
    first = read_run(args.first_stage)
    cands = {q: sorted(first.get(q, {}), key=lambda d: -first[q][d])[:args.depth] for q in qids}
    need = sorted({d for q in qids for d in cands[q]})
    vecs = VectorCache(model, args.vectors).get_or_encode(need, ds.texts(need))
    hf = model.tokenizer.tokenizer
    texts = [d.full_text for d in ds.corpus.values()]
    df: Counter = Counter()
    for i in range(0, len(texts), 1000):
        for ids in hf(texts[i:i + 1000], add_special_tokens=False, truncation=True, max_length=300)["input_ids"]:
            df.update(set(ids))
    n_docs = len(texts)
    seqs = model.tokenizer.query_token_ids([ds.queries[q] for q in qids])
    Q = model.encode_queries([ds.queries[q] for q in qids], show_progress=False)
    special = {hf.cls_token_id, hf.sep_token_id, hf.mask_token_id, model.tokenizer.query_marker_id}

    def weights(seq: list[int], length: int, mode: str) -> torch.Tensor:
        w = np.ones(length, dtype=np.float32)
        words = [p for p, t in enumerate(seq) if t not in special and p != 1]
        for p in words:
            idf = math.log((n_docs + 1) / (df.get(seq[p], 0) + 0.5))
            if mode == "idf":
                w[p] = idf
            elif mode == "sqrt-idf":
                w[p] = math.sqrt(max(idf, 0.0))
            elif mode.startswith("stop"):
                w[p] = 0.0 if df.get(seq[p], 0) / n_docs > float(mode.split("-")[1]) else 1.0
        if mode in ("idf", "sqrt-idf") and words:
            w[words] /= w[words].mean()
        if mode == "no-mask":
            w[len(seq):] = 0.0
        return torch.from_numpy(w)

    doc_mean = {d: torch.nn.functional.normalize(v.float().mean(0), dim=0) for d, v in vecs.items()}
    terms: dict[tuple[str, str], torch.Tensor] = {}
    pooled: dict[tuple[str, str], float] = {}
    lengths = {}
    for i, q in enumerate(qids):
        length = max(len(seqs[i]), model.config.augment_len)
        lengths[q] = length
        qv = Q[i, :length]
        q_mean = torch.nn.functional.normalize(qv.mean(0), dim=0)
        for d in cands[q]:
            terms[q, d] = (qv @ vecs[d].float().T).max(dim=1).values
            pooled[q, d] = float(q_mean @ doc_mean[d])

    def evaluate(score) -> np.ndarray:  # type: ignore[no-untyped-def]
        run = {q: {d: score(i, q, d) for d in cands[q]} for i, q in enumerate(qids)}
        values = per_query(run, ds.qrels, ["ndcg@10"])["ndcg@10"]
        return np.array([values[q] for q in qids])

    whole = lambda q, d: float(terms[q, d].sum()) / lengths[q]   # noqa: E731  (MaxSim per query token)
    variants: dict[str, np.ndarray] = {"MaxSim": evaluate(lambda i, q, d: float(terms[q, d].sum()))}
    for mode in ("idf", "sqrt-idf", "stop-0.3", "stop-0.1", "no-mask"):
        w = {q: weights(seqs[i], lengths[q], mode) for i, q in enumerate(qids)}
        variants[f"query-token weights: {mode}"] = evaluate(lambda i, q, d: float((terms[q, d] * w[q]).sum()))
    for lam in (0.25, 0.5, 1.0, 2.0, 4.0, 1000.0):
        variants[f"MaxSim / query length + {lam} x pooled cosine"] = evaluate(
            lambda i, q, d: whole(q, d) + lam * pooled[q, d])
    # Question by question: consumer messages often ask several things (3.3 sentences on average here).
    parts = {q: [t.strip() for t in re.split(r"(?<=[.?!])\s+|\n+", ds.queries[q]) if len(t.split()) >= 3]
             or [ds.queries[q]] for q in qids}
    flat = [t for q in qids for t in parts[q]]
    encoded = model.encode_queries(flat, show_progress=False)
    per_sentence: dict[tuple[str, str], list[float]] = {}
    row = 0
    for q in qids:
        for j in range(len(parts[q])):
            sv = encoded[row + j]
            sv = sv[sv.abs().sum(-1) > 0]
            for d in cands[q]:
                per_sentence.setdefault((q, d), []).append(
                    float((sv @ vecs[d].float().T).max(dim=1).values.sum()) / sv.shape[0])
        row += len(parts[q])
    variants["best sentence"] = evaluate(lambda i, q, d: max(per_sentence[q, d]))
    variants["mean of sentences"] = evaluate(lambda i, q, d: float(np.mean(per_sentence[q, d])))
    variants["whole message + best sentence"] = evaluate(lambda i, q, d: whole(q, d) + max(per_sentence[q, d]))
    variants["whole message + mean of sentences"] = evaluate(
        lambda i, q, d: whole(q, d) + float(np.mean(per_sentence[q, d])))
    base = variants["MaxSim"]
    rows = []
    for name, values in variants.items():
        p = None if name == "MaxSim" else float(stats.ttest_rel(values, base).pvalue)
        rows.append({"variant": name, "ndcg@10": round(float(values.mean()), 4),
                     "minus_maxsim": round(float((values - base).mean()), 4), "p_paired_t": p})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu_name(), "model": model.name, "data": args.data, "first_stage": args.first_stage,
            "depth": args.depth, "queries": len(qids), "command": " ".join(["experiments/quality/scoring-variants/scoring_variants.py", *sys.argv[1:]])}
    (out / f"results-depth{args.depth}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"consumer-health dev ({len(qids)} queries), {model.name} reranking the untuned single-vector model's "
             f"top {args.depth} with full-precision document vectors; p: paired t-test against plain MaxSim "
             "(uncorrected).", "", "| scoring | nDCG@10 | minus MaxSim | p |", "|---|---|---|---|"]
    for r in rows:
        p_text = "" if r["p_paired_t"] is None else f"{r['p_paired_t']:.3f}"
        lines.append(f"| {r['variant']} | {r['ndcg@10']} | {r['minus_maxsim']:+.4f} | {p_text} |")
    (out / f"results-depth{args.depth}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
