"""Exact late-interaction (MaxSim) scoring: the one tensor function every other part calls."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import ModelConfig

# Bound the [nq, nd, Lq, Ld] similarity tensor of one chunk (in elements), so that scoring a query
# against thousands of documents never needs more than a few hundred MB.
MAX_CHUNK_ELEMENTS = 32 * 1024 * 1024


def maxsim(queries: torch.Tensor, documents: torch.Tensor, query_mask: torch.Tensor | None = None,
           document_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of every query against every document, [nq, nd]: sum over query tokens of the best dot product."""
    if queries.ndim == 2:
        queries = queries.unsqueeze(0)
        query_mask = None if query_mask is None else query_mask.unsqueeze(0)
    if documents.ndim == 2:
        documents = documents.unsqueeze(0)
        document_mask = None if document_mask is None else document_mask.unsqueeze(0)
    if queries.shape[-1] != documents.shape[-1]:
        raise ValueError(f"query vectors have dim {queries.shape[-1]} but document vectors have {documents.shape[-1]}")
    nq, lq, _ = queries.shape
    nd, ld, _ = documents.shape
    documents = documents.to(queries.dtype)
    out = torch.empty((nq, nd), dtype=queries.dtype, device=queries.device)
    chunk = max(1, MAX_CHUNK_ELEMENTS // max(1, nq * lq * ld))
    for start in range(0, nd, chunk):
        d = documents[start:start + chunk]
        sim = torch.einsum("qid,njd->qnij", queries, d)
        if document_mask is not None:
            m = document_mask[start:start + chunk].to(device=sim.device, dtype=torch.bool)
            sim = sim.masked_fill(~m[None, :, None, :], float("-inf"))
        best = sim.max(dim=-1).values
        # A document with no vectors at all contributes nothing rather than -inf.
        best = torch.nan_to_num(best, neginf=0.0) if document_mask is not None else best
        if query_mask is not None:
            best = best * query_mask.to(device=best.device, dtype=best.dtype)[:, None, :]
        out[:, start:start + chunk] = best.sum(dim=-1)
    return out


def pad_vectors(vectors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length [n_i, dim] tensors into [N, max n_i, dim] plus a boolean mask of real rows."""
    if len(vectors) == 0:
        raise ValueError("pad_vectors needs at least one tensor")
    dim = vectors[0].shape[-1]
    dtype = dtype or vectors[0].dtype
    length = max(1, max(v.shape[0] for v in vectors))
    padded = torch.zeros((len(vectors), length, dim), dtype=dtype, device=vectors[0].device)
    mask = torch.zeros((len(vectors), length), dtype=torch.bool, device=vectors[0].device)
    for i, v in enumerate(vectors):
        if v.ndim != 2 or v.shape[-1] != dim:
            raise ValueError(f"vectors[{i}] has shape {tuple(v.shape)}, expected (n, {dim})")
        padded[i, : v.shape[0]] = v.to(dtype)
        mask[i, : v.shape[0]] = True
    return padded, mask


def maxsim_one(query: torch.Tensor, documents: Sequence[torch.Tensor]) -> torch.Tensor:
    """Scores of one query [Lq, dim] against variable-length documents, [nd]."""
    if len(documents) == 0:
        return torch.empty(0, dtype=torch.float32)
    # Group by similar length so the padding of each group stays small.
    order = sorted(range(len(documents)), key=lambda i: documents[i].shape[0])
    result = torch.empty(len(documents), dtype=torch.float32)
    group = 256
    for start in range(0, len(order), group):
        idx = order[start:start + group]
        padded, mask = pad_vectors([documents[i] for i in idx], dtype=query.dtype)
        s = maxsim(query.unsqueeze(0), padded, document_mask=mask)[0]
        result[torch.tensor(idx)] = s.float().cpu()
    return result


def add_dense_term(scores: torch.Tensor, query: torch.Tensor, cosines: torch.Tensor,
                   weight: float | ModelConfig) -> torch.Tensor:
    """MaxSim scores [nd] of one query [Lq, dim] plus weight x (its vector count) x the pooled cosines [nd].

    weight is a number, or a model's config, whose pooled_weight gives the weight for this query's length."""
    # Scaled by the query's vector count (its [PAD] rows are zero), so the pooled cosine weighs per query
    # token what one MaxSim term weighs: weight 1 gives both parts the same scale whatever the query's length.
    count = int((query.abs().sum(dim=-1) > 0).sum())
    w = weight.pooled_weight(count) if isinstance(weight, ModelConfig) else float(weight)
    # At least float32: with a length power the term reaches 10^5-10^6 for long queries, past float16's range.
    dtype = torch.promote_types(scores.dtype, torch.float32)
    return scores.to(dtype) + w * count * cosines.to(scores.device, dtype)


def score_candidates(query: torch.Tensor, documents: Sequence[torch.Tensor] | None = None,
                     weight: float | ModelConfig = 0.0, query_pooled: torch.Tensor | None = None,
                     document_pooled: torch.Tensor | None = None, *, cosines: torch.Tensor | None = None,
                     maxsim_scores: torch.Tensor | None = None,
                     units_per_document: Sequence[int] | None = None) -> torch.Tensor:
    """The one score of medcolbert: one query [Lq, dim] against candidates, [n].

    MaxSim over each candidate's vectors (or `maxsim_scores` computed already, e.g. by the compiled engine), plus,
    for a model with a pooled head, weight x (query vectors) x the pooled cosine (from `query_pooled` and the
    candidates' `document_pooled` [n, hidden], or `cosines` given); weight is a number or the model's config (whose
    pooled_weight sets it by the query's length). With `units_per_document`, candidates are passages of documents
    laid one after another and each document scores as its best passage.
    """
    scores = maxsim_scores if maxsim_scores is not None else maxsim_one(query, documents if documents is not None else [])
    if len(scores) and (cosines is not None or (query_pooled is not None and document_pooled is not None)):
        if cosines is None:
            cosines = document_pooled.float() @ query_pooled.float()  # type: ignore[union-attr]
        scores = add_dense_term(scores, query, cosines, weight)
    if units_per_document is not None:
        if sum(units_per_document) != len(scores) or any(n < 1 for n in units_per_document):
            raise ValueError(f"units_per_document {list(units_per_document)[:5]}... do not cover {len(scores)} scores")
        scores = torch.stack([part.max() for part in torch.split(scores, list(units_per_document))]) \
            if len(units_per_document) else scores[:0]
    return scores
