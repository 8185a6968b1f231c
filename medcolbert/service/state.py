"""The service's state: metrics, the query batcher, snapshots of the index, the Service object and its checks."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..errors import IndexFormatError, MedColbertError
from ..validation import id_problem, is_blank, text_problem
from .requests import Limits

log = logging.getLogger("medcolbert.service")


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
        from ..indexing.index import Index
        from ..retrievers import PlaidRetriever

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
        from ..retrievers import make_retriever

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
                 batching: bool | None = None, first_stages: Sequence[str] = (), query_encoder: str | None = None) -> None:
        from ..retrievers import check_retriever_spec

        for spec in first_stages:
            check_retriever_spec(spec)
        self.first_stages = list(dict.fromkeys(first_stages))
        self.path = Path(index_path)
        self.model_path, self.limits, self.batching = model_path, limits or Limits(), batching
        self.query_encoder = query_encoder
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
            from ..indexing.storage import read_manifest
            from ..modeling.encoder import ColBERT

            manifest = read_manifest(self.path)
            source = self.model_path or manifest.get("model", {}).get("source")
            self.model = ColBERT.from_pretrained(source, query_encoder=self.query_encoder)
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
        from ..modeling.encoder import encode_queries_pooled, has_pooled_head

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
        from ..indexing.storage import read_manifest

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
