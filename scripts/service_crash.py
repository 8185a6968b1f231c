"""Crash test of `medcolbert serve`: kill -9 during writes, restart, and check that no acknowledged document is lost.

Builds a small index of real passages, then for each round: starts the service, sends add requests of new
documents from a writer thread, kills the server with SIGKILL at a random moment, restarts it and checks
that every document whose add was acknowledged (HTTP 200) is in the index and found by search, and that the
index opens with every checksum intact. Writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx

from medcolbert import ColBERT, load_beir
from medcolbert.indexing.index import Index
from medcolbert.bench.service_load import free_port, start_server


def main() -> None:
    """Run the rounds and write the result."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/scifact")
    ap.add_argument("--docs", type=int, default=300, help="passages in the starting index")
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default=".cache/service-crash")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_beir(args.data, "test")
    ids = sorted(data.corpus)[: args.docs]
    model = ColBERT.from_pretrained(args.model)
    index_path = work / "index"
    Index.build(index_path, model, {d: data.corpus[d].full_text for d in ids}, overwrite=True)
    extra = sorted(data.corpus)[args.docs:]
    acknowledged: list[str] = []
    rounds = []
    for r in range(args.rounds):
        port = free_port()
        server = start_server(str(index_path), model.source, port, batching=False)
        stop = threading.Event()
        sent: list[str] = []

        def writer() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                while not stop.is_set() and extra:
                    doc = extra.pop(0)
                    sent.append(doc)
                    try:
                        resp = http.post("/documents", json={"documents": {doc: data.corpus[doc].full_text}})
                    except httpx.HTTPError:
                        return  # the server died mid-request: this add was never acknowledged
                    if resp.status_code == 200:
                        acknowledged.append(doc)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(rng.uniform(2.0, 8.0))
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        stop.set()
        thread.join()
        # Restart and check: the index opens, checksums hold, every acknowledged document is there.
        index = Index.open(index_path, verify=True)
        missing = [d for d in acknowledged if d not in index.position]
        port = free_port()
        server = start_server(str(index_path), model.source, port, batching=False)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                probe = acknowledged[-3:]
                found = [http.post("/rerank", json={"query": "x", "ids": [d]}).status_code == 200 for d in probe]
        finally:
            server.kill()
            server.wait()
        rounds.append({"round": r + 1, "sent": len(sent), "acknowledged_total": len(acknowledged),
                       "missing_after_restart": missing, "documents_after_restart": len(index),
                       "probe_found_by_service": all(found)})
        print(json.dumps(rounds[-1]), flush=True)
    result = {"rounds": rounds, "acknowledged": len(acknowledged),
              "lost": sum(len(r["missing_after_restart"]) for r in rounds),
              "passed": all(not r["missing_after_restart"] and r["probe_found_by_service"] for r in rounds)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
    if not result["passed"]:
        raise SystemExit("acknowledged documents were lost")


if __name__ == "__main__":
    main()
