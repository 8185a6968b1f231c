"""Brute-force MaxSim over every decompressed document: slow, exact, the ground truth for PLAID."""

from __future__ import annotations

import numpy as np
import torch

from ..indexing.index import Index

BLOCK_TOKENS = 8192


def exact_search(index: Index, queries: torch.Tensor, k: int,
                 allowed: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
    """Top-k of each query [nq, Lq, dim] by exact MaxSim over all live documents of the index (or those of
    the boolean mask `allowed`, a filter's matches)."""
    nq, lq, dim = queries.shape
    Q = queries.float().reshape(nq * lq, dim)
    live = np.flatnonzero(~index.deleted if allowed is None else allowed)
    best_scores = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_docs = np.zeros((nq, 0), dtype=np.int64)
    # Blocks of whole documents of about BLOCK_TOKENS vectors: each block is decompressed once for all queries.
    cum = np.cumsum(index.doclens[live])
    cuts = np.searchsorted(cum, np.arange(BLOCK_TOKENS, int(cum[-1]) if len(live) else 0, BLOCK_TOKENS), side="right")
    splits = np.unique(np.concatenate([[0], cuts, [len(live)]]).astype(np.int64))
    for a, b in zip(splits[:-1], splits[1:]):
        docs = live[a:b]
        rows, lens = index.embedding_rows(docs)
        vectors = index.codec.decompress(index.codes[rows], index.residual_rows(rows))
        sim = (Q @ vectors.T).numpy()
        bounds = np.concatenate([[0], np.cumsum(lens)[:-1]])
        scores = np.maximum.reduceat(sim, bounds, axis=1).reshape(nq, lq, len(docs)).sum(axis=1)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_docs = np.concatenate([best_docs, np.broadcast_to(docs, (nq, len(docs)))], axis=1)
        keep = min(k, all_scores.shape[1])
        part = np.argpartition(-all_scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.take_along_axis(all_scores, part, axis=1)
        best_docs = np.take_along_axis(all_docs, part, axis=1)
    out = []
    for qi in range(nq):
        order = np.argsort(-best_scores[qi], kind="stable")
        out.append([(index.doc_ids[best_docs[qi, j]], float(best_scores[qi, j])) for j in order])
    return out
