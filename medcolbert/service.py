"""An HTTP search and rerank service over one index: FastAPI app, request limits, live index updates, metrics.

Start it with `medcolbert serve --index PATH`. Searches run in FastAPI's thread pool against an immutable
(index, PLAID retriever) snapshot; a write, or another process's write seen through the manifest, builds a new
snapshot and swaps it in, so no request ever sees a half-applied change. On CUDA, concurrent queries are
encoded together in one batch by a small collector thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from .errors import CheckpointError, IndexFormatError, MedColbertError
from .validation import id_problem, is_blank, text_problem

log = logging.getLogger("medcolbert.service")
API_KEY_ENV = "MEDCOLBERT_API_KEY"


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


# ----------------------------------------------------------------------------------------- metrics
class Metrics:
    """Request counts, errors, latency histograms and index gauges, through prometheus-client (one registry
    per app, so that several apps in one process keep their own numbers)."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medcolbert_requests", "Requests by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("medcolbert_errors", "Requests answered with a 4xx or 5xx status.", ["endpoint"],
                              registry=self.registry)
        self.seconds = Histogram("medcolbert_request_seconds", "Request latency.", ["endpoint"],
                                 buckets=self.BUCKETS, registry=self.registry)
        self.gauges = {name: Gauge(f"medcolbert_{name}", help_text, registry=self.registry) for name, help_text in
                       (("ready", "1 once the index and model are loaded."),
                        ("index_documents", "Live documents in the served index."),
                        ("index_generation", "The served index's generation."))}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint).inc()
        self.seconds.labels(endpoint).observe(seconds)

    def render(self, extra: dict[str, float]) -> str:
        """The Prometheus exposition text, with the gauges set from `extra` first."""
        for name, value in extra.items():
            if name in self.gauges:
                self.gauges[name].set(value)
        return generate_latest(self.registry).decode("utf-8")


# ----------------------------------------------------------------------------------------- query batching
class QueryBatcher:
    """Encodes queries that arrive together in one encoder call (a collector thread, short wait)."""

    def __init__(self, model, max_batch: int = 32, wait_s: float = 0.002) -> None:  # type: ignore[no-untyped-def]
        self.model, self.max_batch, self.wait_s = model, max_batch, wait_s
        self._queue: queue.Queue[tuple[str, Future]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="medcolbert-query-batcher", daemon=True)
        self._thread.start()

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Vectors of the given queries, [n, Lq, dim], encoded together with whatever else is waiting."""
        futures = []
        for t in texts:
            f: Future = Future()
            self._queue.put((t, f))
            futures.append(f)
        return torch.stack([f.result() for f in futures])

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.perf_counter() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.perf_counter())))
                except queue.Empty:
                    break
            try:
                vectors = self.model.encode_queries([t for t, _ in batch], batch_size=len(batch), show_progress=False)
                for (_, f), v in zip(batch, vectors):
                    f.set_result(v)
            except Exception as exc:  # hand the failure to every waiting request instead of dying
                for _, f in batch:
                    f.set_exception(exc)


# ----------------------------------------------------------------------------------------- the service
class _Snapshot:
    """An opened index and its PLAID retriever, never modified after construction."""

    def __init__(self, path: Path, model) -> None:  # type: ignore[no-untyped-def]
        from .indexing.index import Index
        from .retrievers import PlaidRetriever

        # The manifest's stat is taken before the index is read: a commit that lands in between then shows as
        # a change at the next request (one extra reload), instead of hiding behind a newer stat forever.
        self.manifest_stat = _stat(path)
        self.index = Index.open(path)
        self.plaid = PlaidRetriever.from_index(self.index, model)
        self.generation = self.index.manifest.get("generation")
        self._stages: dict[str, Any] = {}
        self._stages_lock = threading.Lock()

    def first_stage(self, spec: str):  # type: ignore[no-untyped-def]
        """The registered first stage `spec` over this snapshot's stored texts, built on first use."""
        from .retrievers import make_retriever

        with self._stages_lock:  # one build per snapshot, however many requests arrive meanwhile
            if spec not in self._stages:
                self._stages[spec] = make_retriever(spec, self.index.texts())
            return self._stages[spec]


def _stat(path: Path) -> tuple[int, int]:
    st = (path / "manifest.json").stat()
    return st.st_mtime_ns, st.st_ino


class ServerFault(Exception):
    """A failure of the server's own state (its index or model), answered 5xx with no internals."""


class Service:
    """The state behind the app: model, current snapshot, writer lock, batcher, metrics."""

    def __init__(self, index_path: str | Path, model_path: str | None = None, limits: Limits | None = None,
                 batching: bool | None = None, first_stages: Sequence[str] = ()) -> None:
        from .retrievers import check_retriever_spec

        for spec in first_stages:
            check_retriever_spec(spec)
        self.first_stages = list(dict.fromkeys(first_stages))
        self.path = Path(index_path)
        self.model_path, self.limits, self.batching = model_path, limits or Limits(), batching
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._swap = threading.Lock()
        self._write = threading.Lock()
        slots = self.limits.concurrent_compute
        if slots is None:
            slots = max(1, (os.cpu_count() or 1) // max(1, torch.get_num_threads()))
        self.compute = threading.Semaphore(slots)   # waiters are woken in arrival order
        self.snapshot: _Snapshot | None = None
        self.model = None
        self.batcher: QueryBatcher | None = None

    def load(self) -> None:
        """Load model and index (in a background thread at startup; /health says when it is done)."""
        try:
            from .indexing.storage import read_manifest
            from .modeling.encoder import ColBERT

            manifest = read_manifest(self.path)
            source = self.model_path or manifest.get("model", {}).get("source")
            self.model = ColBERT.from_pretrained(source)
            self.snapshot = _Snapshot(self.path, self.model)
            # First stages are built over the stored texts before the server says it is ready; after a change to
            # the index, the new snapshot builds them again on first use (BM25 takes about a second per 15k
            # documents; a dense first stage encodes every document again, so it suits indexes that rarely change).
            for spec in self.first_stages:
                if not self.snapshot.index.has_documents:
                    raise MedColbertError("the index stores no document texts, so no first stage can search it; "
                                          "rebuild it with its documents or serve without --first-stage")
                self.snapshot.first_stage(spec)
            # Batching pays on a GPU; on a 2-core CPU the load test measured it at half the throughput of
            # encoding each request on its own thread (experiments/service/load), so auto = CUDA only.
            batching = self.model.device.type == "cuda" if self.batching is None else self.batching
            if self.model.device.type == "cuda" and self.limits.concurrent_compute is None:
                self.compute = threading.Semaphore(1_000)   # the GPU batches concurrent queries: let them all in
            self.batcher = QueryBatcher(self.model, max_batch=self.limits.max_batch) if batching else None
            self.ready.set()
        except Exception as exc:  # reported by /health, not raised into the server loop
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self.load_error)

    def current(self) -> _Snapshot:
        """The latest snapshot, reloaded first if the manifest on disk changed (e.g. another process wrote)."""
        if not self.ready.is_set():
            raise HTTPException(503, "the index and model are still loading")
        snap = self.snapshot
        assert snap is not None
        try:
            changed = _stat(self.path) != snap.manifest_stat
        except FileNotFoundError:
            changed = False
        if changed:
            with self._swap:
                if self.snapshot is snap:  # another request may have reloaded meanwhile
                    try:
                        self.snapshot = _Snapshot(self.path, self.model)
                    except (MedColbertError, OSError, ValueError) as exc:
                        # The server's own index, not the client: logged with its path, answered without.
                        log.error("reloading the index failed: %s", exc)
                        raise ServerFault("the index changed on disk and cannot be read; serving stopped") from None
                snap = self.snapshot
        return snap

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Query vectors, batched with concurrent requests when batching is on."""
        if self.batcher is not None:
            return self.batcher.encode(texts)
        return self.model.encode_queries(texts, show_progress=False)  # type: ignore[union-attr]

    def encode_for_search(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Query vectors and, for a model with a pooled head, the pooled vectors from the same pass (else None)."""
        from .modeling.encoder import encode_queries_pooled, has_pooled_head

        if has_pooled_head(self.model):
            # Not batched: the batcher carries token vectors only, and the pooled vector must come from this pass.
            return encode_queries_pooled(self.model, texts, show_progress=False)  # type: ignore[arg-type]
        return self.encode(texts), None

    # --------------------------------------------------------------- checks
    def check_text(self, text: str, what: str, limit: int) -> None:
        """Reject empty, oversized or invalid (lone surrogate) strings with a message naming the field."""
        if is_blank(text):
            raise HTTPException(422, f"{what} is empty (nothing but whitespace, control or format characters)")
        if len(text) > limit:
            raise HTTPException(413, f"{what} has {len(text)} characters; the limit is {limit}")
        bad = text_problem(text)
        if bad:
            raise HTTPException(422, f"{what} {bad}")

    def check_id(self, doc_id: str, what: str) -> None:
        """Reject ids that are empty, too long, or hold control characters, whitespace or invalid Unicode."""
        if len(doc_id) > 512:
            raise HTTPException(413, f"{what} has {len(doc_id)} characters; the limit is 512")
        bad = id_problem(doc_id)
        if bad:
            raise HTTPException(422, f"{what} {ascii(doc_id[:40])} {bad}")

    def index_problem(self) -> str | None:
        """Why the index on disk cannot serve (a short reason, no paths), or None; cheap: manifest and file sizes."""
        from .indexing.storage import read_manifest

        try:
            manifest = read_manifest(self.path)
            for rel, info in manifest["files"].items():
                if (self.path / rel).stat().st_size != info["bytes"]:
                    return "an index file does not have the size the manifest records"
        except FileNotFoundError:
            return "an index file is missing"
        except (IndexFormatError, OSError) as exc:
            log.error("index check failed: %s", exc)
            return "the index cannot be read"
        return None

    def check_k(self, k: int) -> None:
        """Reject k outside 1..max_k."""
        if not 1 <= k <= self.limits.max_k:
            raise HTTPException(422, f"k must be between 1 and {self.limits.max_k}, got {k}")


def create_app(index_path: str | Path, model_path: str | None = None, api_key: str | None = None,
               limits: Limits | None = None, batching: bool | None = None, load_in_background: bool = True,
               first_stages: Sequence[str] = ()) -> FastAPI:
    """The FastAPI application serving one index (first_stages: registered retrievers /search may start from)."""
    service = Service(index_path, model_path, limits, batching, first_stages)
    app = FastAPI(title="medcolbert", version=_version(),
                  description="Late-interaction search and reranking over a medcolbert index.")
    app.state.service = service
    if load_in_background:
        threading.Thread(target=service.load, name="medcolbert-loader", daemon=True).start()
    else:
        service.load()

    _add_guards(app, service, api_key)
    _add_status_routes(app, service)
    _add_page_routes(app, service)
    _add_search_route(app, service)
    _add_rerank_route(app, service)
    _add_document_routes(app, service)
    return app


def _add_guards(app: FastAPI, service: Service, api_key: str | None) -> None:
    """Request checks (id, API key, body size and time limits), metrics, and the error handlers."""
    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        endpoint = request.url.path
        response = await _guarded(request, call_next, service, api_key)
        service.metrics.observe(endpoint if endpoint in KNOWN_PATHS else "other", response.status_code,
                                time.perf_counter() - start)
        return response

    app.add_middleware(BodyTimeout, timeout=service.limits.body_timeout_s)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                    for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)

    @app.exception_handler(ServerFault)
    async def server_fault(request: Request, exc: ServerFault) -> JSONResponse:
        rid = getattr(request.state, "request_id", "-")
        return JSONResponse({"detail": f"{exc} (request id {rid})", "request_id": rid}, status_code=503)

    @app.exception_handler(MedColbertError)
    async def own_failure(request: Request, exc: MedColbertError) -> JSONResponse:
        # Client input is checked in the endpoints; an error from medcolbert's own code reaching this point
        # concerns the server's index or model: 5xx, details (paths) only in the server log.
        rid = getattr(request.state, "request_id", "-")
        log.error("request %s on %s failed: %s", rid, request.url.path, exc)
        return JSONResponse({"detail": f"the server's index or model failed (request id {rid})", "request_id": rid},
                            status_code=503 if isinstance(exc, (IndexFormatError, CheckpointError)) else 500)


def _add_status_routes(app: FastAPI, service: Service) -> None:
    """GET /health and /metrics."""
    @app.get("/health")
    def health() -> JSONResponse:
        """200 when the index and model are loaded and the index is readable; 503 loading, failed or degraded."""
        if service.ready.is_set():
            problem = service.index_problem()
            snap = service.snapshot
            if problem:
                return JSONResponse({"status": "degraded", "error": problem}, status_code=503)
            return JSONResponse({"status": "ready", "documents": len(snap.index) if snap else 0,
                                 "generation": snap.generation if snap else None})
        # The load error is logged with its details; the answer names only what kind of failure it was.
        return JSONResponse({"status": "failed" if service.load_error else "loading",
                             "error": "the index or model could not be loaded (see the server log)"
                             if service.load_error else None}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        """Prometheus text: requests, errors, latency histograms, index size."""
        snap = service.snapshot
        extra = {"ready": float(service.ready.is_set())}
        if snap is not None:
            extra.update({"index_documents": float(len(snap.index)), "index_generation": float(snap.generation or 0)})
        return service.metrics.render(extra)


STATIC = Path(__file__).with_name("static")
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}


def _add_page_routes(app: FastAPI, service: Service) -> None:
    """GET / (the search page: static files shipped in the package, no build step, no CDN) and GET /info (what the
    page offers: the index's filterable fields, the search modes, the document count)."""
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return _static_file("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in PAGE_FILES:
            raise HTTPException(404, f"no page file {name!r}")
        return _static_file(name)

    @app.get("/info")
    def info() -> dict[str, Any]:
        """The index's filterable metadata fields and their kinds, the search modes it serves, its size."""
        snap = service.current()
        fields = {name: sorted(kinds - {"nested"}) for name, kinds in sorted(snap.index.field_kinds().items())
                  if kinds - {"nested"}}
        modes = ["plaid"] + (["hybrid", "lexical"] if snap.index.lexical is not None else [])
        return {"documents": len(snap.index), "fields": fields, "modes": modes,
                "stores_documents": snap.index.has_documents}


def _static_file(name: str) -> Response:
    """A page file from the package, or 500 (no path) where the install lacks it."""
    try:
        return Response((STATIC / name).read_bytes(), media_type=PAGE_FILES[name],
                        headers={"Cache-Control": "no-cache"})
    except OSError:
        log.error("the search page's file %s is missing from the installed package", name)
        raise ServerFault("the search page is not installed") from None


def _add_search_route(app: FastAPI, service: Service) -> None:
    """POST /search: PLAID, or a registered first stage reranked by MaxSim."""
    L = service.limits
    @app.post("/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        """Top-k documents for a query or a batch of queries."""
        if (req.query is None) == (req.queries is None):
            raise HTTPException(422, "give exactly one of 'query' or 'queries'")
        texts = [req.query] if req.query is not None else list(req.queries or [])
        if not texts:
            raise HTTPException(422, "queries is an empty list")
        if len(texts) > L.max_batch:
            raise HTTPException(413, f"{len(texts)} queries; the limit per request is {L.max_batch}")
        for i, t in enumerate(texts):
            service.check_text(t, "query" if req.query is not None else f"queries[{i}]", L.max_query_chars)
        service.check_k(req.k)
        knobs = {k: v for k, v in (("ncells", req.ncells), ("centroid_score_threshold", req.centroid_score_threshold),
                                   ("ndocs", req.ndocs), ("preset", req.preset)) if v is not None}
        if req.first_stage is not None:
            if req.first_stage not in service.first_stages:
                raise HTTPException(422, f"first_stage {req.first_stage!r} is not served here; accepted: "
                                         + ", ".join(service.first_stages or ["none (start the server with --first-stage)"]))
            if knobs:
                raise HTTPException(422, f"{', '.join(sorted(knobs))} tune PLAID search and cannot be given with first_stage")
        snap = service.current()
        allowed = _matching(snap.index, req.where)
        if allowed is not None and req.first_stage is not None:
            raise HTTPException(422, "'where' filters PLAID search; it cannot be given with first_stage")
        if req.mode != "plaid" and req.first_stage is not None:
            raise HTTPException(422, f"mode {req.mode!r} searches the index itself; it cannot be given with first_stage")
        if req.mode != "plaid" and snap.index.lexical is None:
            raise HTTPException(409, "this index has no lexical postings; add them with "
                                     "`medcolbert update --index PATH --lexical`")
        if (req.return_documents or req.first_stage is not None or req.explain) and not snap.index.has_documents:
            raise HTTPException(409, "this index stores no document texts; rebuild it to return documents, "
                                     "to explain matches or to search from a first stage")
        from .retrievers import EncodedQueries, MaxSimReranker, Pipeline

        with service.compute:
            Q, Q_pooled = service.encode_for_search(texts)
            # Encoded once: a first stage reads the texts beside the vectors, PLAID and MaxSim the vectors.
            queries = EncodedQueries([str(i) for i in range(len(texts))], texts, Q, Q_pooled)
            if req.first_stage is not None:
                stage = Pipeline(snap.first_stage(req.first_stage), MaxSimReranker(service.model, snap.index, depth=req.depth))
                run = stage.retrieve(queries, k=req.k)
                ranked: list[list] = [list(run.get(q, {}).items()) for q in queries.ids]
            else:
                mode = {} if req.mode == "plaid" else {"mode": req.mode} if req.mode == "lexical" else \
                    {"mode": req.mode, "fusion": req.fusion, "lexical_weight": req.lexical_weight,
                     "pooled_weight": req.pooled_weight}
                per_query = snap.plaid.with_knobs(where=allowed, **mode, **knobs).hits(queries, k=req.k)
                ranked = [per_query[q] for q in queries.ids]
            # A PLAID hit's third element is the stored entry that matched (a split document's best passage).
            hits = [snap.plaid.searcher.documents(h) for h in ranked] if req.return_documents else \
                [[(hit[0], hit[1]) for hit in h] for h in ranked]
            explanations = _explanations(service, snap, texts, ranked, req.mode) if req.explain else None
        results = hits if req.return_documents else [[{"id": d, "score": s} for d, s in h] for h in hits]
        if explanations is not None:
            for rows, notes in zip(results, explanations):
                for row, note in zip(rows, notes):
                    row["explanation"] = note
        body: dict[str, Any] = {"generation": snap.generation}
        body.update({"results": results[0]} if req.query is not None else {"results_batch": results})
        return body


def _explanations(service: Service, snap: _Snapshot, texts: list[str], ranked: list[list],
                  mode: str) -> list[list[dict]]:
    """Each hit's explanation (explain.py), from the stored entry that matched (a split document's best passage)."""
    from .explain import explain_texts

    out = []
    for text, hits in zip(texts, ranked):
        stored = [hit[2] if len(hit) == 3 else hit[0] for hit in hits]
        rows = explain_texts(service.model, text, [snap.index.document(u)["text"] for u in stored],
                             [float(hit[1]) for hit in hits], lexical=mode != "plaid") if hits else []
        for note, unit, hit in zip(rows, stored, hits):
            if unit != hit[0]:
                note["passage"] = unit
        out.append(rows)
    return out


def _matching(index, where: str | dict[str, Any] | None):  # type: ignore[no-untyped-def]
    """A request's filter as the index's boolean mask of matches (None: no filter); a bad one is the client's: 422."""
    from .filters import FilterError

    try:
        return index.matching(where)
    except FilterError as exc:
        raise HTTPException(422, str(exc)) from None


def _add_rerank_route(app: FastAPI, service: Service) -> None:
    """POST /rerank: candidates (texts or indexed ids) ordered by the model's score."""
    L = service.limits
    @app.post("/rerank")
    def rerank(req: RerankRequest) -> dict[str, Any]:
        """Candidates (texts, or ids of indexed documents) ordered by exact MaxSim with the query."""
        from .retrievers import EncodedQueries, MaxSimReranker, in_order

        service.check_text(req.query, "query", L.max_query_chars)
        if (req.candidates is None) == (req.ids is None):
            raise HTTPException(422, "give exactly one of 'candidates' (texts) or 'ids' (indexed documents)")
        items = req.candidates if req.candidates is not None else req.ids
        assert items is not None
        if not items:
            raise HTTPException(422, "no candidates given")
        if len(items) > L.max_candidates:
            raise HTTPException(413, f"{len(items)} candidates; the limit is {L.max_candidates}")
        k = req.k if req.k is not None else len(items)
        service.check_k(k)
        for i, c in enumerate(req.candidates or []):
            service.check_text(c, f"candidates[{i}]", L.max_document_chars)
        snap = service.current()
        if req.where is not None and req.candidates is not None:
            raise HTTPException(422, "'where' filters indexed documents: give their 'ids', not candidate texts")
        allowed = _matching(snap.index, req.where)
        if req.candidates is not None:
            documents: Any = {str(i): c for i, c in enumerate(req.candidates)}
            order = list(documents)
        else:
            for i, d in enumerate(req.ids or []):
                service.check_id(d, f"ids[{i}]")
            unknown = [d for d in req.ids or [] if not snap.index.passages_of(d)]
            if unknown:
                raise HTTPException(404, f"{len(unknown)} unknown document id(s): {', '.join(unknown[:5])}")
            documents, order = snap.index, list(dict.fromkeys(req.ids or []))
        # The candidates in the order given (ties keep it); the reranker scores MaxSim plus, with a pooled head,
        # the pooled term, a split document by its best passage, and only the ids a filter matches.
        reranker = MaxSimReranker(service.model, documents, depth=len(order), where=allowed)
        with service.compute:
            encoded_q, pooled_q = service.encode_for_search([req.query])
            queries = EncodedQueries(["q"], [req.query], encoded_q, pooled_q)
            ranked = reranker.rerank(queries, {"q": in_order(order)}, k=k)["q"]
            notes = None
            if req.explain:
                if req.candidates is None and not snap.index.has_documents:
                    raise HTTPException(409, "this index stores no document texts to explain matches in")
                notes = [reranker.explain(req.query, d, float(x)) for d, x in ranked.items()]
        if req.candidates is not None:
            rows = [{"index": int(d), "score": float(x)} for d, x in ranked.items()]
        else:
            rows = [{"id": d, "score": float(x)} for d, x in ranked.items()]
        for row, note in zip(rows, notes or []):
            row["explanation"] = note
        return {"results": rows}


def _add_document_routes(app: FastAPI, service: Service) -> None:
    """POST /documents and /documents/delete: committed, durable changes."""
    L = service.limits
    @app.post("/documents")
    def add_documents(req: AddRequest) -> dict[str, Any]:
        """Add documents; the answer comes once they are committed (durable and searchable)."""
        if not req.documents:
            raise HTTPException(422, "documents is empty")
        if len(req.documents) > L.max_add:
            raise HTTPException(413, f"{len(req.documents)} documents; the limit per request is {L.max_add}")
        for doc_id, text in req.documents.items():
            service.check_id(doc_id, "document id")
            service.check_text(text, f"documents[{ascii(doc_id)}]", L.max_document_chars)
        snap = service.current()  # 503 while loading
        docs = dict(req.documents)
        unknown = sorted(set(req.metadata or {}) - set(docs))
        if unknown:
            raise HTTPException(422, f"metadata for {len(unknown)} id(s) not among the documents, e.g. {ascii(unknown[0])}")
        from .indexing.encoded import EncodedDocuments

        # Encoding is the slow part and touches no index file: it runs before the write lock is taken,
        # so a delete never waits behind a large add. Split like the index was built (passages), if it was.
        with service.compute:
            try:
                encoded = EncodedDocuments.encode(service.model, docs, req.metadata, index=snap.index)
            except MedColbertError as exc:   # the request's metadata (a reserved key)
                raise HTTPException(422, str(exc)) from None
        return _write(service, lambda index: index.add(encoded), "added")

    @app.post("/documents/delete")
    def delete_documents(req: DeleteRequest) -> dict[str, Any]:
        """Delete documents by id; they never come back in results."""
        if not req.ids:
            raise HTTPException(422, "ids is empty")
        for i, d in enumerate(req.ids):
            service.check_id(d, f"ids[{i}]")
        snap = service.current()
        unknown = [d for d in req.ids if not snap.index.passages_of(d)]
        if unknown:
            raise HTTPException(404, f"{len(unknown)} unknown document id(s): {', '.join(unknown[:5])}")
        return _write(service, lambda index: index.delete(list(dict.fromkeys(req.ids))), "deleted")


KNOWN_PATHS = {"/health", "/metrics", "/search", "/rerank", "/documents", "/documents/delete", "/openapi.json", "/docs",
               "/", "/info"}
# Open without the API key: the page's own files (they hold no data; the page asks for the key).
OPEN_PATHS = {"/health", "/", "/static/index.html", "/static/app.js", "/static/style.css"}


def _write(service: Service, change, verb: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Apply a change through a fresh writer Index, then swap in a snapshot that shows it."""
    from .indexing.index import Index

    service.current()  # 503 while loading
    with service._write:
        try:
            index = Index.open(service.path)
        except (MedColbertError, OSError) as exc:
            log.error("opening the index for a write failed: %s", exc)
            raise ServerFault("the index cannot be opened for writing") from None
        try:
            n = change(index)
        except (IndexFormatError, OSError) as exc:
            log.error("writing to the index failed: %s", exc)
            raise ServerFault("the index could not be written") from None
        except MedColbertError as exc:   # the request's ids: unknown, already present
            raise HTTPException(409 if "already in the index" in str(exc) else 404 if "not in the index" in str(exc)
                                else 422, str(exc)) from None
        with service._swap:
            try:
                service.snapshot = _Snapshot(service.path, service.model)
            except (MedColbertError, OSError) as exc:
                log.error("reloading after a write failed: %s", exc)
                raise ServerFault("the change was committed but the index cannot be reloaded") from None
    return {verb: n, "generation": service.snapshot.generation}


async def _guarded(request: Request, call_next, service: Service, api_key: str | None):  # type: ignore[no-untyped-def]
    """Request id, API key (all but /health) and body size checks before the endpoint runs."""
    rid = uuid.uuid4().hex[:16]
    request.state.request_id = rid
    response = await _checked(request, call_next, service, api_key, rid)
    response.headers["X-Request-ID"] = rid
    return response


async def _checked(request: Request, call_next, service: Service, api_key: str | None, rid: str):  # type: ignore[no-untyped-def]
    if api_key and request.url.path not in OPEN_PATHS:
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            return JSONResponse({"detail": "missing or wrong API key"}, status_code=401)
    length = request.headers.get("content-length")
    limit = service.limits.max_body_bytes
    if length is not None:
        if not length.isdigit():
            return JSONResponse({"detail": "bad Content-Length header"}, status_code=400)
        if int(length) > limit:
            return JSONResponse({"detail": f"request body of {length} bytes; the limit is {limit}"}, status_code=413)
    elif request.method == "POST":
        # A body without a declared length could be of any size; ask for the length instead of reading it.
        return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
    try:
        return await call_next(request)
    except Exception:  # a bug, not bad input: answer 500 with no internals, keep the server up
        log.exception("unhandled error on %s (request id %s)", request.url.path, rid)
        return JSONResponse({"detail": f"internal error (request id {rid})", "request_id": rid}, status_code=500)


class BodyTimeout:
    """ASGI middleware: a request whose body stalls for longer than `timeout` seconds is answered 408."""

    def __init__(self, app, timeout: float) -> None:  # type: ignore[no-untyped-def]
        self.app, self.timeout = app, timeout

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"timed_out": False, "started": False}

        async def timed_receive():  # type: ignore[no-untyped-def]
            try:
                return await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                # The app sees the client as gone; its own answer to that is replaced by the 408 below.
                state["timed_out"] = True
                return {"type": "http.disconnect"}

        async def guarded_send(message):  # type: ignore[no-untyped-def]
            if state["timed_out"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not state["timed_out"]:
                raise
        if state["timed_out"] and not state["started"]:
            body = json.dumps({"detail": f"the request body did not arrive within {self.timeout:g} s"}).encode()
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def timed_http_protocol(header_timeout: float):  # type: ignore[no-untyped-def]
    """uvicorn's h11 protocol, closing connections that do not finish their request headers in time."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        """Closes a connection whose request headers are not complete `header_timeout` seconds after it opened
        (or after its previous response): uvicorn alone keeps such a connection open as long as bytes trickle in."""

        _header_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.warning("closing a connection that did not finish its request headers in %g s", header_timeout)
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def, override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the headers are in; the body has its own timeout

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


def read_api_key(path: str | None) -> str | None:
    """The API key from a file (first line) or the MEDCOLBERT_API_KEY environment variable."""
    if path:
        from .evaluation.datasets import iter_lines

        lines = [line for _, line in iter_lines(path)]   # a missing file or bad bytes: one line naming it
        key = lines[0].strip() if lines else ""
        if not key:
            raise MedColbertError(f"{path}: the API key file is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def _version() -> str:
    from . import __version__

    return __version__
