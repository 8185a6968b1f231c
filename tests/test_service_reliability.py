"""The service under bad ids and texts, its own failures, slow clients, and concurrent writers."""

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from medcolbert.indexing.index import Index
from medcolbert.service import Limits, create_app, timed_http_protocol
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc-rel")
    model = make_tiny_model(seed=31)
    checkpoint = model.save_pretrained(root / "ckpt")
    corpus = make_corpus(60, seed=9)
    Index.build(root / "index", model, corpus, num_centroids=16, show_progress=False)
    return root, checkpoint, corpus


def serve(root: Path, checkpoint, name: str, **limits):
    path = root / name
    if not path.exists():
        shutil.copytree(root / "index", path)
    return create_app(path, str(checkpoint), limits=Limits(**limits), load_in_background=False), path


@pytest.mark.parametrize("path,body,field", [
    ("/documents", {"documents": {"a\u0000b": "text"}}, "document id"),
    ("/documents", {"documents": {"a b": "text"}}, "document id"),
    ("/documents", {"documents": {"ok1": "bad \ud800 text"}}, "documents["),
    ("/documents", {"documents": {"x\ud800": "text"}}, "document id"),
    ("/documents/delete", {"ids": ["doc1\u0000"]}, "ids[0]"),
    ("/search", {"query": "lone \udc00 surrogate"}, "query"),
    ("/search", {"queries": ["fine", "bad \ud800"]}, "queries[1]"),
    ("/rerank", {"query": "q", "candidates": ["ok", "bad \ud800"]}, "candidates[1]"),
    ("/rerank", {"query": "q", "ids": ["doc1", "nul\u0000"]}, "ids[1]"),
    # issue 40 D5b / D12: metadata the index cannot store as written is the client's mistake, not a 500
    ("/documents", {"documents": {"n1": "text"}, "metadata": {"n1": {"date": "2024-02-30"}}}, "not a valid date"),
    ("/documents", {"documents": {"n1": "text"}, "metadata": {"n1": {"date": "2024-01-01T25:00"}}}, "not a valid date"),
    ("/documents", {"documents": {"n1": "text"}, "metadata": {"n1": {"medcolbert:passage": 0}}}, "is reserved"),
])
def test_bad_ids_and_texts_get_422(built, path, body, field):
    root, checkpoint, _ = built
    app, _ = serve(root, checkpoint, "ids")
    with TestClient(app) as client:
        r = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert field in r.json()["detail"]
        assert client.get("/health").json()["documents"] == 60   # nothing was added or deleted


def test_own_index_failure_is_5xx_with_request_id_and_no_path(built):
    root, checkpoint, corpus = built
    app, path = serve(root, checkpoint, "broken")
    with TestClient(app) as client:
        ok = client.post("/search", json={"query": corpus["doc3"]})
        assert ok.status_code == 200 and ok.headers["X-Request-ID"]
        (path / "manifest.json").write_text("{ not json")      # the server's own index breaks under it
        r = client.post("/search", json={"query": corpus["doc3"]})
        assert r.status_code == 503 and r.json()["request_id"] == r.headers["X-Request-ID"]
        assert str(root) not in r.text and "manifest" not in r.text
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded" and str(root) not in health.text
        w = client.post("/documents", json={"documents": {"new": "aspirin"}})
        assert w.status_code == 503 and str(root) not in w.text


def test_a_delete_does_not_wait_for_an_add_being_encoded(built):
    root, checkpoint, corpus = built
    app, _ = serve(root, checkpoint, "locks")
    service = app.state.service
    with TestClient(app) as client:
        encode = service.model.encode_documents
        started, release = threading.Event(), threading.Event()

        def slow_encode(texts, **kw):   # the real encoder, held until the delete has been answered
            started.set()
            release.wait(30)
            return encode(texts, **kw)

        service.model.encode_documents = slow_encode
        result = {}
        adder = threading.Thread(target=lambda: result.update(
            add=client.post("/documents", json={"documents": {"late": "aspirin after infarction"}})))
        adder.start()
        assert started.wait(10)
        t0 = time.perf_counter()
        deleted = client.post("/documents/delete", json={"ids": ["doc1"]})
        waited = time.perf_counter() - t0
        release.set()
        adder.join(30)
        service.model.encode_documents = encode
        assert deleted.status_code == 200 and waited < 5
        assert result["add"].status_code == 200
        ids = {h["id"] for h in client.post("/search", json={"query": "aspirin after infarction", "k": 50}).json()["results"]}
        assert "late" in ids and "doc1" not in ids


def _start_server(app, **limits):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                            http=timed_http_protocol(limits["header_timeout_s"]))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, thread, port


def test_slow_headers_and_stalled_bodies_are_cut_off(built):
    root, checkpoint, _ = built
    limits = {"header_timeout_s": 0.6, "body_timeout_s": 0.6}
    app, _ = serve(root, checkpoint, "slow", **limits)
    server, thread, port = _start_server(app, **limits)
    try:
        # Headers trickling in a byte at a time: closed although bytes keep arriving.
        s = socket.create_connection(("127.0.0.1", port))
        t0 = time.perf_counter()
        closed = False
        for ch in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                s.send(bytes([ch]))
            except OSError:
                closed = True
                break
            s.settimeout(0.1)
            try:
                if s.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except OSError:   # reset by the server: cut off as well
                closed = True
                break
        assert closed and time.perf_counter() - t0 < 5
        s.close()
        # A body that stops after 10 of its 100 declared bytes: 408.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                  + b'{"query": ')
        s.settimeout(5)
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408")
        s.close()
        # A normal request on the same server still works.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_concurrent_searches_writes_and_a_second_process(built, tmp_path):
    """Searches, adds and deletes through the API and a second process's update, all at once; every answer
    is checked against the reference: the top hit for a document's own text is that document while it is live,
    and no search ever returns a document after its delete was acknowledged."""
    root, checkpoint, corpus = built
    app, path = serve(root, checkpoint, "concurrent")
    extra = {f"ext{i}": f"kidney dialysis hepatitis antibody report number {i}" for i in range(5)}
    (tmp_path / "ext.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in extra.items()))
    stable = [f"doc{i}" for i in range(30, 60)]          # never written: must always be found
    doomed = [f"doc{i}" for i in range(0, 10)]           # deleted through the API one by one
    errors: list[str] = []
    deleted_at: dict[str, float] = {}
    latencies: list[float] = []
    stop = threading.Event()
    with TestClient(app) as client:
        def searcher(seed: int) -> None:
            i = seed
            while not stop.is_set():
                d = stable[i % len(stable)]
                sent = time.perf_counter()
                r = client.post("/search", json={"query": corpus[d], "k": 10})
                latencies.append(time.perf_counter() - sent)
                if r.status_code != 200:
                    errors.append(f"search {r.status_code} {r.text[:100]}")
                else:
                    hits = [h["id"] for h in r.json()["results"]]
                    if hits[0] != d:
                        errors.append(f"top hit for {d} was {hits[0]}")
                    for gone in hits:
                        if gone in deleted_at and deleted_at[gone] < sent:
                            errors.append(f"{gone} returned after its delete was acknowledged")
                i += 3

        def writer() -> None:
            for j, d in enumerate(doomed):
                r = client.post("/documents/delete", json={"ids": [d]})
                if r.status_code != 200:
                    errors.append(f"delete {r.status_code} {r.text[:100]}")
                deleted_at[d] = time.perf_counter()
                r = client.post("/documents", json={"documents": {f"api{j}": f"asthma inhaler note {j}"}})
                if r.status_code != 200:
                    errors.append(f"add {r.status_code} {r.text[:100]}")

        threads = [threading.Thread(target=searcher, args=(s,)) for s in range(3)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        other = subprocess.run([sys.executable, "-m", "medcolbert", "update", "--index", str(path), "--model",
                                str(checkpoint), "--add", str(tmp_path / "ext.jsonl")],
                               capture_output=True, text=True, cwd=ROOT)
        threads[-1].join(120)
        time.sleep(0.3)
        stop.set()
        for t in threads[:-1]:
            t.join(60)
        assert other.returncode == 0, other.stderr[-300:]
        assert not errors, errors[:5]
        assert len(latencies) > 20
        ms = sorted(1000 * x for x in latencies)
        print(f"\nconcurrency: {len(ms)} searches + {2 * len(doomed)} API writes + 1 process update, 0 errors, "
              f"search p50 {ms[len(ms) // 2]:.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms")
        final = Index.open(path, verify=True)
        assert set(final.position) == (set(corpus) - set(doomed)) | {f"api{j}" for j in range(10)} | set(extra)
        found = client.post("/search", json={"query": extra["ext3"], "k": 3}).json()["results"]
        assert found[0]["id"] == "ext3"   # the other process's write is served
