"""Per-query scores of an experiment's systems, grouped by query length in word pieces (issue 12, analysis).

Reads the per-query files an experiment wrote (OUTPUT_DIR/perquery/DATASET.SYSTEM.json) and the dataset's queries,
counts each query's word pieces with MODEL's tokenizer (markers included, as the encoder reads it) and prints
one row per system with the mean of METRIC in each length bucket and the bucket sizes, as a markdown table.
Usage: python experiments/releases/recipe-studies/perquery_by_length.py OUTPUT_DIR DATASET BEIR_FOLDER [--model M] [--metric ndcg@10]
       [--edges 32,64] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medcolbert.errors import MedColbertError
from medcolbert.evaluation.datasets import load_queries


def buckets(edges: list[int]) -> list[tuple[int, int | None]]:
    """Half-open length ranges (lo, hi] from the bucket edges; the last one has no upper end."""
    bounds = [0, *edges]
    return [(bounds[i], bounds[i + 1] if i + 1 < len(bounds) else None) for i in range(len(bounds))]


def label(lo: int, hi: int | None) -> str:
    """A bucket's column name."""
    return f"{lo + 1}-{hi}" if hi is not None else f"> {lo}"


def table(out_dir: Path, dataset: str, lengths: dict[str, int], metric: str, edges: list[int]) -> str:
    """The markdown table: one row per system, one column per length bucket (mean metric, queries in brackets)."""
    files = sorted((out_dir / "perquery").glob(f"{dataset}.*.json"))
    if not files:
        raise MedColbertError(f"{out_dir / 'perquery'}: no per-query files for dataset {dataset!r}")
    spans = buckets(edges)
    head = ["system", "all"] + [label(lo, hi) for lo, hi in spans]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path in files:
        per_metric = json.loads(path.read_text())
        scores = per_metric.get(metric)
        if scores is None:
            raise MedColbertError(f"{path}: no {metric!r} (has {sorted(per_metric)})")
        missing = [q for q in scores if q not in lengths]
        if missing:
            raise MedColbertError(f"{path}: query {missing[0]!r} is not in the dataset's queries")
        cells = [path.stem.split(".", 1)[1], f"{sum(scores.values()) / len(scores):.4f} ({len(scores)})"]
        for lo, hi in spans:
            part = [s for q, s in scores.items() if lengths[q] > lo and (hi is None or lengths[q] <= hi)]
            cells.append(f"{sum(part) / len(part):.4f} ({len(part)})" if part else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main() -> int:
    """Print (and optionally write) the table for one experiment output folder and dataset."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("dataset")
    ap.add_argument("beir_folder")
    ap.add_argument("--model", default="checkpoints/medcolbert-minilm-v5", help="whose tokenizer counts the pieces")
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("--edges", default="32,64", help="bucket edges in word pieces, increasing")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    try:
        edges = [int(x) for x in args.edges.split(",")]
        if edges != sorted(set(edges)) or edges[0] < 1:
            raise ValueError
    except ValueError:
        print(f"error: --edges must be increasing positive integers, got {args.edges!r}", file=sys.stderr)
        return 2
    from medcolbert import ColBERT

    try:
        queries = load_queries(Path(args.beir_folder) / "queries.jsonl")
        model = ColBERT.from_pretrained(args.model, device="cpu")
        lengths = {q: len(model.tokenizer.tokenizer(t)["input_ids"]) + 1 for q, t in queries.items()}  # + [Q]
        text = table(args.output_dir, args.dataset, lengths, args.metric, edges)
    except MedColbertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        args.out.write_text(f"{args.metric} by query length in word pieces ({args.model}'s tokenizer, [CLS] [Q] "
                            f"[SEP] counted); bucket sizes in brackets.\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
