"""Exact MaxSim reranking of candidate lists: one query at a time, or a whole run."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..evaluation.datasets import Run
from ..modeling.encoder import ColBERT, encode_documents_pooled, encode_queries_pooled, has_pooled_head
from ..passages import PassageSplitter, parent_of, split_records
from ..scoring import score_candidates
from ..validation import check_id_list, check_int, is_blank
from ..vector_cache import VectorCache


def rerank(model: ColBERT, query: str | torch.Tensor | Sequence[str],
           candidates: Sequence[str] | Sequence[torch.Tensor] | Mapping[Hashable, str] | Sequence[Sequence[str]],
           k: int | None = None, ids: Sequence[Hashable] | None = None,
           batch_size: int = 32) -> list[tuple[Hashable, float]] | list[list[tuple[Hashable, float]]]:
    """Candidates ordered by MaxSim with the query, best first, as (id, score).

    candidates: texts (ids default to their positions), a dict {id: text} (its keys are the ids), or
    precomputed [tokens, dim] tensors. A list of queries reranks the same candidates for each, or, given a
    list of candidate lists (one per query), each query's own; the result is then one list per query.
    """
    if isinstance(query, (list, tuple)):
        per_query = len(candidates) == len(query) and len(query) > 0 and all(
            isinstance(c, (list, tuple, Mapping)) for c in candidates)
        return [rerank(model, q, candidates[i] if per_query else candidates, k=k, ids=ids,  # type: ignore[index]
                       batch_size=batch_size) for i, q in enumerate(query)]
    if isinstance(query, str) and is_blank(query):
        raise ValueError("the query is empty (nothing but whitespace, control or format characters)")
    if not isinstance(query, (str, torch.Tensor)):
        raise TypeError(f"query must be a str, a [tokens, dim] tensor or a list of them, got {type(query).__name__}")
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, (Mapping, list, tuple, torch.Tensor)):
        raise TypeError("candidates must be a list of texts or [tokens, dim] tensors, or a dict {id: text}; got "
                        f"{type(candidates).__name__}" + (" (wrap one text in a list)" if isinstance(candidates, str) else ""))
    if k is not None:
        check_int("k", k, 1)
    if isinstance(candidates, Mapping):
        if ids is not None:
            raise ValueError("give ids either as the dict's keys or as ids=, not both")
        ids, candidates = list(candidates.keys()), list(candidates.values())
    if ids is not None:
        ids = check_id_list(ids, "rerank(ids=)")
    if ids is not None and len(ids) != len(candidates):
        raise ValueError(f"{len(ids)} ids for {len(candidates)} candidates")
    if len(candidates) == 0:
        return []
    if has_pooled_head(model) and not (isinstance(query, str) and all(isinstance(c, str) for c in candidates)):
        raise ValueError("this model also scores with its pooled single-vector head (dense_weight > 0), which needs "
                         "the query's and the candidates' texts; give texts, or model.reconfigure(dense_weight=0)")
    q, q_pooled = query, None
    if isinstance(query, str):
        encoded, pooled_q = encode_queries_pooled(model, [query], show_progress=False)
        q, q_pooled = encoded[0], None if pooled_q is None else pooled_q[0]
    if q.ndim != 2:
        raise ValueError(f"a precomputed query must be [tokens, dim], got shape {tuple(q.shape)}")
    d_pooled = None
    if all(isinstance(c, str) for c in candidates):
        blank = next((i for i, c in enumerate(candidates) if is_blank(c)), None)  # type: ignore[arg-type]
        if blank is not None:
            raise ValueError(f"candidates[{blank}] is empty (nothing but whitespace, control or format characters)")
        docs, d_pooled = encode_documents_pooled(model, list(candidates), batch_size=batch_size)  # type: ignore[arg-type]
    elif all(isinstance(c, torch.Tensor) for c in candidates):
        docs = list(candidates)  # type: ignore[arg-type]
    else:
        raise TypeError("candidates must be all strings, a dict {id: text}, or all precomputed [tokens, dim] tensors")
    scores = score_candidates(q.float(), docs, model.config, q_pooled, d_pooled)
    if not torch.isfinite(scores).all():
        raise ValueError("MaxSim gave non-finite scores (NaN or inf vectors); no ranking can be made")
    labels = list(ids) if ids is not None else list(range(len(candidates)))
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    return [(labels[i], float(scores[i])) for i in order[: k or len(order)]]


def rerank_run(model: ColBERT, queries: Mapping[str, str], run: Mapping[str, Mapping[str, float]],
               documents: Mapping[str, str], depth: int = 100, k: int | None = None,
               cache: VectorCache | None = None, batch_size: int = 32,
               show_progress: bool | None = None, splitter: PassageSplitter | None = None,
               encoded_queries: tuple[torch.Tensor, torch.Tensor | None, list[str]] | None = None) -> Run:
    """Rerank the top `depth` documents of every query of a run by exact MaxSim; keep the top k (default depth).

    encoded_queries: the queries encoded already, as (vectors [n, L, dim], pooled [n, hidden] or None, their ids).

    splitter: split each document into passages and score it by its best passage (instead of truncating it).
    """
    check_int("depth", depth, 1)
    if k is not None:
        check_int("k", k, 1)
    missing_q = [q for q in run if q not in queries]
    if missing_q:
        raise KeyError(f"the run has {len(missing_q)} queries without text, e.g. '{missing_q[0]}'")
    top = {qid: [d for d, _ in sorted(hits.items(), key=lambda kv: -kv[1])[:depth]] for qid, hits in run.items()}
    unique = list(dict.fromkeys(d for docs in top.values() for d in docs))
    missing_d = [d for d in unique if d not in documents]
    if missing_d:
        raise KeyError(f"the run names {len(missing_d)} documents not in the corpus, e.g. '{missing_d[0]}'")
    if splitter is not None:
        per_doc: dict[str, list[tuple[str, str]]] = {}
        for u, t, _ in split_records(splitter, ((d, documents[d], None) for d in unique)):
            per_doc.setdefault(parent_of(u), []).append((u, t))
        # A document that fits in one passage is its own unit: its text and cached vectors are the unsplit ones.
        units = {d: [d] if len(parts) == 1 else [u for u, _ in parts] for d, parts in per_doc.items()}
        unit_ids = [u for d in unique for u in units[d]]
        texts = [t for d in unique for _, t in per_doc[d]]
    else:
        units = {d: [d] for d in unique}
        unit_ids, texts = unique, [documents[d] for d in unique]
    pooled: dict[str, torch.Tensor] = {}
    if cache is not None:
        vectors = cache.get_or_encode(unit_ids, texts, batch_size=batch_size, show_progress=show_progress)
        if has_pooled_head(model):
            pooled = dict(zip(unit_ids, cache.pooled_vectors(unit_ids)))
    else:
        encoded, pooled_all = encode_documents_pooled(model, texts, batch_size=batch_size, show_progress=show_progress)
        vectors = dict(zip(unit_ids, encoded))
        pooled = dict(zip(unit_ids, pooled_all)) if pooled_all is not None else {}
    qids = list(top)
    if encoded_queries is not None:
        at = {q: i for i, q in enumerate(encoded_queries[2])}
        rows = [at[q] for q in qids]
        q_vectors = encoded_queries[0][rows]
        q_pooled = None if encoded_queries[1] is None or not has_pooled_head(model) else encoded_queries[1][rows]
    else:
        q_vectors, q_pooled = encode_queries_pooled(model, [queries[q] for q in qids], show_progress=show_progress)
    out: Run = {}
    for qi, qid in enumerate(tqdm(qids, desc="Reranking", unit="query", disable=not show_progress)):
        cands = top[qid]
        cand_units = [u for d in cands for u in units[d]]
        # A document scores as its best passage (itself, when not split).
        scores = score_candidates(q_vectors[qi], [vectors[u] for u in cand_units], model.config,
                                  None if q_pooled is None else q_pooled[qi],
                                  torch.stack([pooled[u] for u in cand_units]) if q_pooled is not None and cand_units else None,
                                  units_per_document=[len(units[d]) for d in cands])
        if not torch.isfinite(scores).all():
            raise ValueError(f"query '{qid}': MaxSim gave non-finite scores (NaN or inf vectors)")
        ranked = sorted(zip(cands, scores.tolist()), key=lambda kv: -kv[1])[: k or depth]
        out[qid] = dict(ranked)
    return out
