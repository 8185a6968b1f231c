"""The service's limits and request models (what a client may send)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field



@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_query_chars: int = 2_000
    max_batch: int = 64              # queries per /search request
    max_k: int = 1_000
    max_candidates: int = 1_000      # per /rerank request
    max_document_chars: int = 100_000
    max_add: int = 1_000             # documents per add request
    max_body_bytes: int = 4_000_000
    header_timeout_s: float = 10.0   # a connection must finish its request headers within this
    body_timeout_s: float = 30.0     # and send each part of its body within this
    # Requests encoding or scoring at once (None: cores / torch threads, at least 1). More than the cores can run
    # only makes them share the CPU unfairly: with 16 clients on 2 cores the slowest twentieth waited about 14x the median
    # (experiments/service/mixed-load); the rest wait in arrival order instead.
    concurrent_compute: int | None = None

# ----------------------------------------------------------------------------------------- request models
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

class SearchRequest(_Strict):
    """One query or a batch, the number of hits, and optional PLAID knobs."""

    query: str | None = None
    queries: list[str] | None = None
    k: int = 10
    ncells: int | None = Field(default=None, ge=1, le=64)
    centroid_score_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    ndocs: int | None = Field(default=None, ge=1, le=100_000)
    preset: Literal["quality", "colbert-ai"] | None = None   # defaults for unset knobs (SearchConfig.preset)
    return_documents: bool = False   # add each hit's stored text and metadata
    # None: PLAID search. A first stage the server was started with (`serve --first-stage bm25`): its top
    # `depth` documents reranked by exact MaxSim with the index's stored vectors.
    first_stage: str | None = None
    depth: int = Field(default=100, ge=1, le=1_000)
    # Only documents whose metadata match: an expression ("source in {a, b} and year >= 2015") or a mapping
    # ({"source": ["a", "b"], "year": {"$gte": 2015}}); syntax in docs/reference.md.
    where: str | dict[str, Any] | None = None
    # plaid (late interaction), lexical (BM25 over the index's postings) or hybrid (the two fused by rank).
    mode: Literal["plaid", "lexical", "hybrid"] = "plaid"
    fusion: Literal["rrf", "score"] = "rrf"                  # hybrid: by rank, or by min-max normalised scores
    lexical_weight: float = Field(default=1.0, ge=0.0, le=100.0)   # hybrid: the weight of BM25's side
    pooled_weight: float = Field(default=0.0, ge=0.0, le=100.0)    # hybrid: a third side, the pooled vector's nearest
    plaid_depth: int | None = Field(default=None, ge=1, le=1_000)  # hybrid: PLAID's side depth (default: BM25's 100)
    explain: bool = False   # each hit with why it matched: matched words, spans in its text, shares (explain.py)

class RerankRequest(_Strict):
    """A query and its candidates, as texts or as ids of indexed documents."""

    query: str
    candidates: list[str] | None = None
    ids: list[str] | None = None
    k: int | None = None
    where: str | dict[str, Any] | None = None   # with ids: only those whose metadata match are ranked
    explain: bool = False   # each result with why it scored as it did (explain.py)

class AddRequest(_Strict):
    """Documents to add, {id: text}."""

    documents: dict[str, str]
    metadata: dict[str, dict[str, Any]] | None = None   # optional, by document id

class DeleteRequest(_Strict):
    """Ids of documents to delete."""

    ids: list[str]
