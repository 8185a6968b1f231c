"""Draw docs/architecture.svg: medcolbert's data flow and layers (a plain SVG, so the picture is reviewed as text).

    .venv/bin/python scripts/draw_architecture.py        # rewrites docs/architecture.svg
"""

from __future__ import annotations

from html import escape
from pathlib import Path

# (column, row, title, modules): the layers bottom-up, each row one layer; arrows below follow the data.
BOXES = {
    "data": (0, 0, "your data", "corpus.jsonl / BEIR folders\nqueries, qrels, runs\n(evaluation/datasets.py)"),
    "model": (1, 0, "model", "modeling/: encoder, tokenization\ncheckpoint + layouts (colbert-ai,\nPyLate, ST6), precision, ONNX"),
    "train": (2, 0, "training", "training/: triplets, mixes,\ntrainer (torchrun), distillation"),
    "build": (0, 1, "indexing", "indexing/: builder (chunks, Ray),\ncodec (k-means + residuals),\nstorage, index, shards, lexical.py"),
    "index": (1, 1, "index folder", "manifest.json + plain .npy arrays:\ncodes, residuals, ivf, doc store,\nfields, BM25 postings, pooled"),
    "engine": (2, 1, "search", "search/: plaid (Searcher), engine\n(C kernel: AVX-512 / AVX2 / portable;\ntorch on CUDA), exact, fusion, shards"),
    "retr": (1, 2, "one retriever interface", "retrievers.py: PlaidRetriever, BM25,\ndense, MaxSimReranker, RRF, >>\nexplain.py, baselines/"),
    "front": (0, 3, "front ends", "cli/, service/ + static/ page,\nshard_service.py (Ray actors)"),
    "exp": (1, 3, "experiments + benchmarks", "experiment.py, evaluation/ (metrics,\npanel, compare); bench/ (medcolbert\nbench NAME); records: experiments/"),
    "libs": (2, 3, "other libraries", "pyterrier.py, langchain.py"),
}
ARROWS = [("data", "build", "texts"), ("model", "build", "vectors"), ("train", "model", "checkpoints"),
          ("build", "index", "writes"), ("index", "engine", "memory-maps"), ("model", "engine", "queries"),
          ("engine", "retr", "hits"), ("retr", "front", ""), ("retr", "exp", ""), ("retr", "libs", "")]
W, H, GAP_X, GAP_Y, TOP = 250, 92, 100, 46, 40


def _center(key: str) -> tuple[float, float]:
    c, r, _, _ = BOXES[key]
    return 20 + c * (W + GAP_X) + W / 2, TOP + (3 - r) * (H + GAP_Y) + H / 2


def svg() -> str:
    """The picture as SVG text."""
    width, height = 20 * 2 + 3 * W + 2 * GAP_X, TOP + 4 * (H + GAP_Y)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
           '<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
           f'<text x="20" y="24" font-size="15" font-weight="bold">medcolbert: how data flows (arrows) through '
           f'the layers (rows, lowest first)</text>']
    for src, dst, label in ARROWS:
        (x1, y1), (x2, y2) = _center(src), _center(dst)
        # from box edge to box edge
        dx, dy = x2 - x1, y2 - y1
        scale = min(abs((W / 2) / dx) if dx else 9e9, abs((H / 2) / dy) if dy else 9e9)
        sx, sy, ex, ey = x1 + dx * scale, y1 + dy * scale, x2 - dx * scale, y2 - dy * scale
        out.append(f'<line x1="{sx:.1f}" y1="{sy:.1f}" x2="{ex:.1f}" y2="{ey:.1f}" stroke="#555" stroke-width="1.4" '
                   'marker-end="url(#a)"/>')
        if label:
            out.append(f'<text x="{(sx + ex) / 2:.1f}" y="{(sy + ey) / 2 - 5:.1f}" font-size="11" fill="#333" '
                       f'text-anchor="middle">{escape(label)}</text>')
    for key, (c, r, title, body) in BOXES.items():
        x, y = 20 + c * (W + GAP_X), TOP + (3 - r) * (H + GAP_Y)
        fill = {0: "#eef3f8", 1: "#eef7ee", 2: "#fff6e0", 3: "#f6eef8"}[r]
        out.append(f'<rect x="{x}" y="{y}" width="{W}" height="{H}" rx="6" fill="{fill}" stroke="#667"/>')
        out.append(f'<text x="{x + 10}" y="{y + 19}" font-size="13" font-weight="bold">{escape(title)}</text>')
        for i, line in enumerate(body.split("\n")):
            out.append(f'<text x="{x + 10}" y="{y + 38 + 15 * i}" font-size="11.5">{escape(line)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "architecture.svg"
    target.write_text(svg())
    print(f"wrote {target.relative_to(Path.cwd()) if target.is_relative_to(Path.cwd()) else target.name}")
