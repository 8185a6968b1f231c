"""medcolbert's stages in a real `pt.Experiment`: BM25, the single-vector model, PLAID, and BM25 / single-vector
first stages reranked by exact MaxSim with an index's stored vectors, on a BEIR data set.

Records the experiment table PyTerrier prints (nDCG@10, R@100, paired t-test against the first row, Holm
correction) as Markdown and CSV, with the CPU model:

  .venv/bin/python scripts/pyterrier_experiment.py --data ../shared/data/consumer-health/dev-retrieval --split dev \
      --index .cache/experiments/flagship/plaid-consumer-health-nbits2-e5788db7db3657701e20648f \
      --dense-index .cache/experiments/flagship/dense-consumer-health-flat-fbbd7339d2507f9b35d69707 \
      --out experiments/quality/pyterrier/consumer-health
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import pyterrier as pt
from medcolbert.bench import cpu_model as cpu_name
from medcolbert.bench import write_results

from medcolbert.baselines.dense import BiEncoder, DenseIndex
from medcolbert.evaluation.datasets import load_beir
from medcolbert.indexing.index import Index
from medcolbert.modeling.encoder import ColBERT
from medcolbert.pyterrier import ColBERTRerank, ColBERTRetrieve, from_retriever
from medcolbert.retrievers import BM25Retriever, DenseRetriever


def main() -> None:
    """Run the experiment and write OUT.md / OUT.csv / OUT.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="BEIR folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--index", required=True, help="a medcolbert index of the same corpus")
    ap.add_argument("--dense-index", required=True,
                    help="a saved single-vector index of the same corpus (e.g. the flagship's), model from its manifest")
    ap.add_argument("--dense-maxlen", type=int, default=300, help="the single-vector model's document length")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--out", required=True, help="output path without suffix")
    args = ap.parse_args()

    data = load_beir(args.data, args.split)
    corpus = {d: doc.full_text for d, doc in data.corpus.items()}
    index = Index.open(args.index)
    if set(index.position) != set(corpus):
        raise SystemExit(f"{args.index}: its documents are not the corpus of {args.data}")
    model = ColBERT.from_pretrained(index.manifest["model"]["source"])
    topics = pd.DataFrame([{"qid": q, "query": t} for q, t in data.queries.items()])
    qrels = pd.DataFrame([{"qid": q, "docno": d, "label": r} for q, rels in data.qrels.items() for d, r in rels.items()])

    t0 = time.perf_counter()
    bm25 = from_retriever(BM25Retriever(corpus), k=args.depth)
    dense_manifest = json.loads((Path(args.dense_index) / "manifest.json").read_text())
    # The flagship reads documents up to 300 tokens with the single-vector models (part of their fingerprint).
    encoder = BiEncoder.from_pretrained(dense_manifest["model"]["source"], max_length=args.dense_maxlen)
    dense_index = DenseIndex.load(args.dense_index, encoder)
    dense = from_retriever(DenseRetriever(index=dense_index), k=args.depth)
    rerank = ColBERTRerank(model, index)  # exact MaxSim with the index's stored vectors: no document encoding
    systems = [dense, bm25, ColBERTRetrieve(index, model, k=args.depth), bm25 >> rerank, dense >> rerank]
    sv = dense_manifest["model"]["name"]
    names = [f"single-vector {sv} (the baseline)", "BM25", "medcolbert PLAID", "BM25 >> medcolbert MaxSim",
             f"single-vector {sv} >> medcolbert MaxSim"]
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = pt.Experiment(systems, topics, qrels, eval_metrics=["ndcg_cut_10", "recall_100"], names=names,
                          baseline=0, correction="holm")
    wall = time.perf_counter() - t0

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    head = (f"pt.Experiment (python-terrier {pt.__version__}) on {Path(args.data).name} {args.split}: "
            f"{len(topics)} queries, {len(corpus)} documents; model {index.manifest['model']['name']}, "
            f"first stages' depth {args.depth}; {setup_s:.0f} s to build the first stages, {wall:.0f} s for the "
            f"experiment on {cpu_name()}. Significance: PyTerrier's paired t-test against the first row, "
            "Holm-corrected (the `+`/`-` columns count queries better/worse).")
    write_results(out.with_suffix(".json"), {"cpu": cpu_name(), "queries": len(topics), "documents": len(corpus),
                                             "wall_s": wall, "table": table.to_dict(orient="records")},
                  head + "\n\n" + table.to_markdown(index=False, floatfmt=".4f"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
