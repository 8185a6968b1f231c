"""What every request passes through: request id, API key, body limits and timeouts, error handlers."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import CheckpointError, IndexFormatError, MedColbertError
from .state import ServerFault, Service

log = logging.getLogger("medcolbert.service")


API_KEY_ENV = "MEDCOLBERT_API_KEY"

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

KNOWN_PATHS = {"/health", "/metrics", "/search", "/rerank", "/documents", "/documents/delete", "/openapi.json", "/docs",
               "/", "/info"}

# Open without the API key: the page's own files (they hold no data; the page asks for the key).
OPEN_PATHS = {"/health", "/", "/static/index.html", "/static/app.js", "/static/style.css"}

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
        from ..evaluation.datasets import iter_lines

        lines = [line for _, line in iter_lines(path)]   # a missing file or bad bytes: one line naming it
        key = lines[0].strip() if lines else ""
        if not key:
            raise MedColbertError(f"{path}: the API key file is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None
