"""Single-vector models side by side on one run's candidates: ColBERT pooled heads and bi-encoders (issue 12).

Each model reranks the same top 100 of RUN by the cosine of its single vectors alone (a ColBERT checkpoint with
a pooled head: its pooled vectors, MaxSim not used at all; a bi-encoder folder: its embeddings), so differences
come from the models, not from candidate sets. Prints nDCG@10 per model with a paired t-test against the run's
own order (for a run of a single-vector model: that model), plus any pairs named with --pair A,B.
Usage: python experiments/releases/recipe-studies/single_vector_compare.py BEIR_FOLDER SPLIT RUN.trec --vector-cache DIR
       [--colbert NAME=PATH ...] [--dense NAME=PATH ...] [--pair A,B ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from medcolbert import ColBERT
from medcolbert.baselines.dense import BiEncoder
from medcolbert.errors import MedColbertError
from medcolbert.evaluation.datasets import load_beir, read_run
from medcolbert.evaluation.metrics import per_query
from medcolbert.experiment import paired_test
from medcolbert.modeling.encoder import has_pooled_head
from medcolbert.vector_cache import VectorCache

from fusion_sweep import score_parts

Run = dict[str, dict[str, float]]


def named(values: list[str], option: str) -> dict[str, str]:
    """NAME=PATH options as a dict, with a one-line error for a malformed one."""
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise MedColbertError(f"{option} {v!r}: expected NAME=PATH")
        out[name] = path
    return out


def pooled_run(path: str, queries: dict[str, str], texts: dict[str, str], candidates: dict[str, list[str]],
               cache_dir: Path) -> Run:
    """A ColBERT checkpoint's pooled-head cosines over each query's candidates (MaxSim's part left unused)."""
    model = ColBERT.from_pretrained(path)
    if not has_pooled_head(model):
        raise MedColbertError(f"{path}: this checkpoint has no pooled head (dense_weight is 0)")
    parts = score_parts(model, queries, texts, candidates, VectorCache(model, cache_dir))
    return {q: dict(zip(candidates[q], parts[q][1].tolist())) for q in candidates}


def dense_run(path: str, queries: dict[str, str], texts: dict[str, str], candidates: dict[str, list[str]]) -> Run:
    """A bi-encoder's cosines over each query's candidates (documents read up to 300 tokens, as in the flagship)."""
    model = BiEncoder.from_pretrained(path, max_length=300)
    docs = sorted({d for c in candidates.values() for d in c})
    vecs = model.encode([texts[d] for d in docs], is_query=False, show_progress=True)
    row = {d: i for i, d in enumerate(docs)}
    qids = list(candidates)
    qv = model.encode([queries[q] for q in qids], is_query=True, show_progress=False)
    return {q: dict(zip(candidates[q], (vecs[[row[d] for d in candidates[q]]] @ qv[i]).tolist()))
            for i, q in enumerate(qids)}


def main() -> int:
    """Score every model, print the table (and write it with --out)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("split")
    ap.add_argument("run")
    ap.add_argument("--vector-cache", required=True, type=Path)
    ap.add_argument("--colbert", action="append", default=[])
    ap.add_argument("--dense", action="append", default=[])
    ap.add_argument("--pair", action="append", default=[])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    try:
        colberts, denses = named(args.colbert, "--colbert"), named(args.dense, "--dense")
        pairs = [tuple(p.split(",")) for p in args.pair]
        if any(len(p) != 2 for p in pairs):
            raise MedColbertError("--pair: expected A,B")
        ds = load_beir(args.data, split=args.split)
        first = read_run(args.run)
        candidates = {q: sorted(first[q], key=first[q].get, reverse=True)[:100] for q in first if q in ds.qrels}
        texts = {d: ds.corpus[d].full_text for c in candidates.values() for d in c}
        runs: dict[str, Run] = {"first stage (the run's own order)": {q: {d: first[q][d] for d in c}
                                                                      for q, c in candidates.items()}}
        for name, path in colberts.items():
            runs[name] = pooled_run(path, ds.queries, texts, candidates, args.vector_cache)
        for name, path in denses.items():
            runs[name] = dense_run(path, ds.queries, texts, candidates)
        unknown = [n for p in pairs for n in p if n not in runs]
        if unknown:
            raise MedColbertError(f"--pair names {unknown[0]!r}, which is not a model given (have {sorted(runs)})")
    except (MedColbertError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    qids = sorted(candidates)
    scores = {n: per_query(r, ds.qrels, ["ndcg@10"])["ndcg@10"] for n, r in runs.items()}
    arrays = {n: np.array([s.get(q, 0.0) for q in qids]) for n, s in scores.items()}
    base = "first stage (the run's own order)"
    lines = [f"# Single vectors on the same candidates: {Path(args.run).name}'s top 100, {len(qids)} judged queries "
             f"({args.split} of {args.data})", "",
             "| model | nDCG@10 | vs the run's own order | p (paired t) |", "|---|---|---|---|"]
    for n, a in arrays.items():
        diff = "" if n == base else f"{a.mean() - arrays[base].mean():+.4f}"
        p = "" if n == base else f"{paired_test(a, arrays[base], 'paired-t'):.4g}"
        lines.append(f"| {n} | {a.mean():.4f} | {diff} | {p} |")
    for a_name, b_name in pairs:
        a, b = arrays[a_name], arrays[b_name]
        lines.append(f"\n{a_name} - {b_name}: {a.mean() - b.mean():+.4f}, paired t p = {paired_test(a, b, 'paired-t'):.4g}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
