"""The service's routes: status, the search page, search, rerank, and document writes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..errors import IndexFormatError, MedColbertError
from .requests import SearchRequest, RerankRequest, AddRequest, DeleteRequest
from .state import _Snapshot, ServerFault, Service

log = logging.getLogger("medcolbert.service")


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

STATIC = Path(__file__).resolve().parent.parent / "static"   # medcolbert/static, shipped in the wheel

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

def search_inputs(req: SearchRequest, service: Any) -> tuple[list[str], dict[str, Any]]:
    """A /search request's query texts and PLAID knobs, checked (one query or a batch, sizes, k): 4xx otherwise."""
    L = service.limits
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
    return texts, knobs


def _add_search_route(app: FastAPI, service: Service) -> None:
    """POST /search: PLAID, or a registered first stage reranked by MaxSim."""
    @app.post("/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        """Top-k documents for a query or a batch of queries."""
        texts, knobs = search_inputs(req, service)
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
        from ..retrievers import EncodedQueries, MaxSimReranker, Pipeline

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
                     "pooled_weight": req.pooled_weight, "plaid_depth": req.plaid_depth}
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
    from ..explain import explain_texts

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
    from ..filters import FilterError

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
        from ..retrievers import EncodedQueries, MaxSimReranker, in_order

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

def add_inputs(req: AddRequest, service: Any) -> dict[str, str]:
    """A /documents request's {id: text}, checked (count, ids, texts, metadata only for given ids): 4xx otherwise."""
    L = service.limits
    if not req.documents:
        raise HTTPException(422, "documents is empty")
    if len(req.documents) > L.max_add:
        raise HTTPException(413, f"{len(req.documents)} documents; the limit per request is {L.max_add}")
    for doc_id, text in req.documents.items():
        service.check_id(doc_id, "document id")
        service.check_text(text, f"documents[{ascii(doc_id)}]", L.max_document_chars)
    unknown = sorted(set(req.metadata or {}) - set(req.documents))
    if unknown:
        raise HTTPException(422, f"metadata for {len(unknown)} id(s) not among the documents, e.g. {ascii(unknown[0])}")
    return dict(req.documents)


def delete_inputs(req: DeleteRequest, service: Any) -> None:
    """A /documents/delete request's ids, checked: 4xx otherwise."""
    if not req.ids:
        raise HTTPException(422, "ids is empty")
    for i, d in enumerate(req.ids):
        service.check_id(d, f"ids[{i}]")


def _add_document_routes(app: FastAPI, service: Service) -> None:
    """POST /documents and /documents/delete: committed, durable changes."""
    @app.post("/documents")
    def add_documents(req: AddRequest) -> dict[str, Any]:
        """Add documents; the answer comes once they are committed (durable and searchable)."""
        docs = add_inputs(req, service)
        snap = service.current()  # 503 while loading
        from ..indexing.encoded import EncodedDocuments

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
        delete_inputs(req, service)
        snap = service.current()
        unknown = [d for d in req.ids if not snap.index.passages_of(d)]
        if unknown:
            raise HTTPException(404, f"{len(unknown)} unknown document id(s): {', '.join(unknown[:5])}")
        return _write(service, lambda index: index.delete(list(dict.fromkeys(req.ids))), "deleted")

def _write(service: Service, change, verb: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Apply a change through a fresh writer Index, then swap in a snapshot that shows it."""
    from ..indexing.index import Index

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
