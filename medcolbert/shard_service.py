"""The HTTP front of a shard set (`medcolbert serve --shards SET`): the service's request models, guards, limits,
API key and metrics over a set whose shards are searched as threads here or, with Ray, on actors placed where their
files are. The front encodes each query once, sends its vectors to every shard in parallel, and merges the top k.

Routes: GET /health (every shard, every replica), GET /metrics, POST /search (PLAID; where, presets, knobs, k,
return_documents pass through; "partial": true in the answer, with the missing shards, when some did not answer
and the server allows partial answers, else 503 naming them), POST /documents and /documents/delete (routed to the
owning shard, acknowledged once committed there). Lexical and hybrid modes, first stages and /rerank are served by
`medcolbert serve --index` over one index, not over a set: BM25's statistics would be per shard.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse

from .errors import MedColbertError
from .filters import FilterError
from .service import (AddRequest, DeleteRequest, Limits, Metrics, SearchRequest, Service, _add_guards, _version)
from .service.routes import add_inputs, delete_inputs, search_inputs


class ShardService:
    """The state behind a set's front: model, the sharded searcher, limits, metrics (what the guards read)."""

    def __init__(self, set_path: str | Path, model_path: str | None = None, limits: Limits | None = None,
                 ray: bool = False, replicas: int = 1, ray_address: str | None = None,
                 allow_partial: bool = False) -> None:
        self.path = Path(set_path)
        self.model_path, self.limits = model_path, limits or Limits()
        self.ray, self.replicas, self.ray_address, self.allow_partial = ray, replicas, ray_address, allow_partial
        self.metrics = Metrics()
        from prometheus_client import Gauge

        self.shard_up = Gauge("medcolbert_shard_up", "1 where a shard's replica answers.", ["shard", "replica"],
                              registry=self.metrics.registry)
        self.shard_documents = Gauge("medcolbert_shard_documents", "Live documents per shard.", ["shard"],
                                     registry=self.metrics.registry)
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.searcher: Any = None
        self.model: Any = None

    # the guards' and checks' view of this object is the one-index Service's
    check_text = Service.check_text
    check_id = Service.check_id
    check_k = Service.check_k

    def load(self) -> None:
        """Open the set (start the shards' actors with Ray); /health says when it is done."""
        try:
            from .indexing.index import Index
            from .indexing.shards import read_set

            first = self.path / read_set(self.path)["shards"][0]["name"]
            self.model = Index.open(first).load_model(self.model_path)
            if self.ray:
                from .search.ray_shards import RayShardedSearcher

                self.searcher = RayShardedSearcher(self.path, self.model, self.replicas, self.ray_address,
                                                   on_missing="partial")
            else:
                from .search.sharded import ShardedSearcher

                self.searcher = ShardedSearcher.from_set(self.path, self.model)
            self.ready.set()
        except Exception as exc:  # reported by /health, not raised into the server loop
            self.load_error = f"{type(exc).__name__}: {exc}"

    def current(self) -> Any:
        """The searcher, or 503 while loading."""
        if not self.ready.is_set():
            raise HTTPException(503, "the shard set is still loading" if not self.load_error else
                                "the shard set could not be loaded (see the server log)")
        return self.searcher

    def shard_states(self) -> list[dict]:
        """Each shard's (and with Ray, each replica's) state."""
        searcher = self.searcher
        if hasattr(searcher, "health"):
            return [{k: v for k, v in h.items() if k in ("shard", "replica", "ok", "documents", "generation",
                                                          "rss_mb", "error")} for h in searcher.health()]
        return [{"shard": s, "replica": 0, "ok": True, "documents": len(x.index),
                 "generation": x.index.manifest.get("generation")} for s, x in enumerate(searcher.searchers)]


def create_shard_app(set_path: str | Path, model_path: str | None = None, api_key: str | None = None,
                     limits: Limits | None = None, ray: bool = False, replicas: int = 1,
                     ray_address: str | None = None, allow_partial: bool = False,
                     load_in_background: bool = True) -> FastAPI:
    """The FastAPI application serving a shard set."""
    service = ShardService(set_path, model_path, limits, ray, replicas, ray_address, allow_partial)
    app = FastAPI(title="medcolbert (shard set)", version=_version(),
                  description="Late-interaction search over a medcolbert shard set.")
    app.state.service = service
    if load_in_background:
        threading.Thread(target=service.load, name="medcolbert-shards-loader", daemon=True).start()
    else:
        service.load()
    _add_guards(app, service, api_key)   # type: ignore[arg-type]

    @app.get("/health")
    def health() -> JSONResponse:
        """200 when every shard answers; 503 while loading, after a failed load, or with a shard down."""
        if not service.ready.is_set():
            return JSONResponse({"status": "failed" if service.load_error else "loading"}, status_code=503)
        shards = service.shard_states()
        down = sorted({h["shard"] for h in shards} - {h["shard"] for h in shards if h["ok"]})
        body = {"status": "degraded" if down else "ready", "shards": shards, "missing_shards": down,
                "documents": sum(h.get("documents", 0) for h in shards if h["ok"] and h["replica"] == 0)}
        return JSONResponse(body, status_code=503 if down else 200)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        """Prometheus text: requests, errors, latency, and per shard whether it answers and its documents."""
        extra = {"ready": float(service.ready.is_set())}
        if service.ready.is_set():
            states = service.shard_states()
            for h in states:
                service.shard_up.labels(str(h["shard"]), str(h["replica"])).set(float(h["ok"]))
                if h["ok"] and h["replica"] == 0:
                    service.shard_documents.labels(str(h["shard"])).set(float(h.get("documents", 0)))
            extra["index_documents"] = float(sum(h.get("documents", 0) for h in states if h["ok"] and h["replica"] == 0))
        return service.metrics.render(extra)

    @app.post("/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        """Top-k documents of the whole set for a query or a batch."""
        texts, knobs = search_inputs(req, service)
        if req.mode != "plaid" or req.first_stage is not None:
            raise HTTPException(422, "a shard set is searched by PLAID only (mode plaid, no first_stage)")
        searcher = service.current()
        from .filters import parse_where

        try:
            if req.where is not None:
                parse_where(req.where)   # the client's filter, checked before any shard is asked
        except FilterError as exc:
            raise HTTPException(422, str(exc)) from None
        from .modeling.encoder import encode_queries_pooled

        Q, P = encode_queries_pooled(service.model, texts, show_progress=False)
        results, missing = [], set()
        for i in range(len(texts)):
            try:
                if service.ray:
                    hits, gone = searcher.search_hits_partial(Q[i], req.k, None if P is None else P[i], req.where,
                                                              **knobs)
                else:
                    hits, gone = searcher.search_hits(Q[i], req.k, None if P is None else P[i], req.where, **knobs), []
            except FilterError as exc:
                raise HTTPException(422, str(exc)) from None
            if gone and not service.allow_partial:
                raise HTTPException(503, f"shards {', '.join(map(str, gone))} did not answer (no live replica)")
            missing.update(gone)
            results.append(searcher.documents(hits) if req.return_documents else
                           [{"id": d, "score": x} for d, x, _ in hits])
        body: dict[str, Any] = {"results": results[0]} if req.query is not None else {"results": results}
        if missing:
            body.update({"partial": True, "missing_shards": sorted(missing)})
        return body

    @app.post("/documents")
    def add_documents(req: AddRequest) -> dict[str, Any]:
        """Add documents to the shards that own their ids; answered once every owning shard committed."""
        docs = add_inputs(req, service)
        searcher = service.current()
        try:
            got = searcher.add(docs, req.metadata)
        except MedColbertError as exc:
            if "did not answer" in str(exc):
                raise HTTPException(503, str(exc)) from None
            raise HTTPException(409 if "already in the set" in str(exc) else 422, str(exc)) from None
        return {"added": sum(got.values()) if not service.ray else got["added"],
                **({"present": got["present"]} if service.ray else {})}

    @app.post("/documents/delete")
    def delete_documents(req: DeleteRequest) -> dict[str, Any]:
        """Delete documents by id on the shards that own them."""
        delete_inputs(req, service)
        searcher = service.current()
        try:
            got = searcher.delete(list(dict.fromkeys(req.ids)))
        except MedColbertError as exc:
            if "did not answer" in str(exc):
                raise HTTPException(503, str(exc)) from None
            raise HTTPException(404 if "not in the set" in str(exc) else 422, str(exc)) from None
        return {"deleted": sum(got.values()) if not service.ray else got["deleted"]}

    return app
