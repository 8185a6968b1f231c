"""An HTTP search and rerank service over one index: FastAPI app, request limits, live index updates, metrics.

Start it with `medcolbert serve --index PATH`. Searches run in FastAPI's thread pool against an immutable
(index, PLAID retriever) snapshot; a write, or another process's write seen through the manifest, builds a new
snapshot and swaps it in, so no request ever sees a half-applied change. On CUDA, concurrent queries are
encoded together in one batch by a small collector thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from .guards import (API_KEY_ENV, KNOWN_PATHS, OPEN_PATHS, BodyTimeout, _add_guards, read_api_key,
                     timed_http_protocol)
from .requests import AddRequest, DeleteRequest, Limits, RerankRequest, SearchRequest
from .routes import (STATIC, _add_document_routes, _add_page_routes, _add_rerank_route, _add_search_route,
                     _add_status_routes)
from .state import Metrics, QueryBatcher, ServerFault, Service

# The names the rest of medcolbert and its users import from `medcolbert.service`.
__all__ = ["create_app", "Limits", "SearchRequest", "RerankRequest", "AddRequest", "DeleteRequest", "Metrics",
           "QueryBatcher", "Service", "ServerFault", "BodyTimeout", "timed_http_protocol", "read_api_key",
           "API_KEY_ENV", "KNOWN_PATHS", "OPEN_PATHS", "STATIC"]


def create_app(index_path: str | Path, model_path: str | None = None, api_key: str | None = None,
               limits: Limits | None = None, batching: bool | None = None, load_in_background: bool = True,
               first_stages: Sequence[str] = (), query_encoder: str | None = None) -> FastAPI:
    """The FastAPI application serving one index (first_stages: registered retrievers /search may start from;
    query_encoder: 'distilled' encodes queries with the model's distilled student)."""
    service = Service(index_path, model_path, limits, batching, first_stages, query_encoder)
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


def _version() -> str:
    from .. import __version__

    return __version__
