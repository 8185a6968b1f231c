"""Teacher scores for distillation: a single-vector model's cosine of each query with its positives and negatives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .data import Triplet


def score_triplets(triplets: Sequence[Triplet], teacher: str, max_length: int = 128, batch_size: int = 64,
                   show_progress: bool | None = None) -> list[Triplet]:
    """The triplets with pos_scores / neg_scores from the teacher (a BiEncoder name or path), each text encoded once."""
    from ..baselines.dense import BiEncoder

    model = BiEncoder.from_pretrained(teacher, max_length=max_length, dtype="float32")
    queries = list(dict.fromkeys(t.query for t in triplets))
    passages = list(dict.fromkeys(p for t in triplets for p in t.pos + t.neg))
    q = model.encode(queries, is_query=True, batch_size=batch_size, show_progress=show_progress)
    d = model.encode(passages, is_query=False, batch_size=batch_size, show_progress=show_progress)
    q_row = {text: i for i, text in enumerate(queries)}
    d_row = {text: i for i, text in enumerate(passages)}
    out = []
    for t in triplets:
        qv = q[q_row[t.query]]

        def cos(texts: Sequence[str]) -> tuple[float, ...]:
            if not texts:
                return ()
            rows = torch.stack([d[d_row[x]] for x in texts])
            values = (rows @ qv).tolist()
            if not all(torch.isfinite(torch.tensor(values))):
                raise ValueError(f"the teacher gave a non-finite score for query {t.query[:60]!r}")
            return tuple(round(v, 6) for v in values)

        out.append(replace(t, pos_scores=cos(t.pos), neg_scores=cos(t.neg)))
    return out
