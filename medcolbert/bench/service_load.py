"""Load test of `medcolbert serve` on loopback: throughput and p50/p95/p99 latency at 1, 4 and 16 clients.

Starts the service on a free port, waits for /health, then for each concurrency level runs a bounded
number of /search requests (and stops early at a time bound), counting errors. Optionally repeats the run
with query batching off, to see whether batching pays. Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from medcolbert import load_beir
from medcolbert.bench import write_results


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: str, model: str | None, port: int, batching: bool) -> subprocess.Popen:
    """`medcolbert serve` in a subprocess, returned once /health says ready."""
    cmd = [sys.executable, "-m", "medcolbert", "serve", "--index", index, "--port", str(port)]
    cmd += ["--model", model] if model else []
    cmd += ["--batching", "on" if batching else "off"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


async def level(port: int, queries: list[str], clients: int, requests: int, max_seconds: float, k: int) -> dict:
    """Run `requests` searches with `clients` concurrent clients; latencies, errors, throughput."""
    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0
    stop_at = time.perf_counter() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests and time.perf_counter() < stop_at:
            i = next_index
            next_index += 1
            t = time.perf_counter()
            try:
                r = await http.post("/search", json={"query": queries[i % len(queries)], "k": k})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - t)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                 limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    from medcolbert.bench import percentiles

    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "error_samples": errors[:5],
            "wall_s": wall, "throughput_qps": len(latencies) / wall, **percentiles(np.array(latencies) * 1000)}


async def mixed(port: int, queries: list[str], clients: int, seconds: float, k: int, writes: bool,
                tag: str = "load") -> dict:
    """`clients` searchers for `seconds`, with (writes=True) one adder and one deleter running beside them."""
    search_ms: list[float] = []
    write_ms: dict[str, list[float]] = {"add": [], "delete": []}
    errors: list[str] = []
    added: list[str] = []
    stop_at = time.perf_counter() + seconds

    async def searcher(http: httpx.AsyncClient, offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            r = await http.post("/search", json={"query": queries[i % len(queries)], "k": k})
            search_ms.append((time.perf_counter() - t) * 1000)
            if r.status_code != 200:
                errors.append(f"search {r.status_code} {r.text[:120]}")
            i += clients

    async def adder(http: httpx.AsyncClient) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            ids = [f"{tag}-{n}-{j}" for j in range(2)]   # unique per run: a later run never re-adds an id
            t = time.perf_counter()
            r = await http.post("/documents", json={"documents": {d: queries[(n + j) % len(queries)] + " (added)"
                                                                   for j, d in enumerate(ids)}})
            write_ms["add"].append((time.perf_counter() - t) * 1000)
            if r.status_code != 200:
                errors.append(f"add {r.status_code} {r.text[:120]}")
            else:
                added.extend(ids)
            n += 1

    async def deleter(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            if not added:
                await asyncio.sleep(0.2)
                continue
            ids = [added.pop(0)]
            t = time.perf_counter()
            r = await http.post("/documents/delete", json={"ids": ids})
            write_ms["delete"].append((time.perf_counter() - t) * 1000)
            if r.status_code != 200:
                errors.append(f"delete {r.status_code} {r.text[:120]}")

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                 limits=httpx.Limits(max_connections=clients + 2)) as http:
        tasks = [searcher(http, i) for i in range(clients)] + ([adder(http), deleter(http)] if writes else [])
        await asyncio.gather(*tasks)
    from medcolbert.bench import percentiles

    spread = percentiles(search_ms, (50, 95))
    return {"clients": clients, "writes": writes, "seconds": seconds, "searches": len(search_ms),
            "search_p50_ms": spread["p50_ms"], "search_p95_ms": spread["p95_ms"],
            "adds": len(write_ms["add"]), "deletes": len(write_ms["delete"]),
            "add_p50_ms": float(np.median(write_ms["add"])) if write_ms["add"] else None,
            "delete_p50_ms": float(np.median(write_ms["delete"])) if write_ms["delete"] else None,
            "errors": len(errors), "error_samples": errors[:5]}


def main(argv: list[str] | None = None) -> None:
    """Run the levels (with and without batching) and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="../shared/data/scifact", help="BEIR folder whose queries are sent")
    ap.add_argument("--split", default="test")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=200, help="requests per level")
    ap.add_argument("--max-seconds", type=float, default=120, help="time bound per level")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--compare-batching", action="store_true", help="also run with query batching off")
    ap.add_argument("--mixed", type=float, default=0, metavar="SECONDS",
                    help="instead: searches alone, then the same searches beside one adder and one deleter, each this "
                         "long (the index is changed: give a copy)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.mixed:
        return run_mixed(args)

    data = load_beir(args.data, args.split)
    queries = [data.queries[q] for q in sorted(data.queries)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"index": args.index, "k": args.k, "machine_cores": os.cpu_count(), "runs": []}
    for batching in ([True, False] if args.compare_batching else [True]):
        port = free_port()
        server = start_server(args.index, args.model, port, batching)
        try:
            asyncio.run(level(port, queries, 1, 10, 60, args.k))  # warm-up: traced graphs, page cache
            for n in (int(c) for c in args.clients.split(",")):
                row = {"batching": batching, **asyncio.run(level(port, queries, n, args.requests, args.max_seconds, args.k))}
                results["runs"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "error_samples"}), flush=True)
        finally:
            server.kill()
            server.wait()
    lines = ["| batching | clients | requests | errors | queries/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {'on' if r['batching'] else 'off'} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['throughput_qps']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} |")
    write_results(out / "results.json", results, lines)
    print("\n".join(lines))
    if any(r["errors"] for r in results["runs"]):
        raise SystemExit("errors during the load test; see results.json")


def run_mixed(args: argparse.Namespace) -> None:
    """Search latency alone and under adds and deletes, in alternating rounds; results.json and results.md in --out."""
    from medcolbert.bench import cpu_model

    data = load_beir(args.data, args.split)
    queries = [data.queries[q] for q in sorted(data.queries)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(args.index, args.model, port, batching=False)
    rows = []
    try:
        clients = int(args.clients.split(",")[-1])
        # Warm-up at full concurrency: traced query graphs per shape, page cache, the thread pool.
        asyncio.run(mixed(port, queries, clients, min(args.mixed, 15), args.k, False))
        for rnd in range(2):
            for writes in (False, True):
                row = {"round": rnd + 1, **asyncio.run(mixed(port, queries, clients, args.mixed, args.k, writes,
                                                             tag=f"load-{int(time.time())}-r{rnd}"))}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "error_samples"}), flush=True)
    finally:
        server.kill()
        server.wait()
    results = {"index": Path(args.index).name, "k": args.k, "cpu": cpu_model(), "machine_cores": os.cpu_count(), "runs": rows}
    lines = [f"CPU: {results['cpu']}, {os.cpu_count()} cores; {rows[0]['clients']} searchers, k={args.k}, "
             f"{args.mixed:.0f} s per run; query encoding included", "",
             "| round | adds + deletes beside | searches | search p50 ms | search p95 ms | adds | deletes | add p50 ms | "
             "delete p50 ms | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {'yes' if r['writes'] else 'no'} | {r['searches']} | {r['search_p50_ms']:.1f} | "
                     f"{r['search_p95_ms']:.1f} | {r['adds']} | {r['deletes']} | "
                     f"{r['add_p50_ms'] or 0:.0f} | {r['delete_p50_ms'] or 0:.0f} | {r['errors']} |")
    write_results(out / "results.json", results, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
