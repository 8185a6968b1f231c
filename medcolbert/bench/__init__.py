"""The benchmarks behind one entry point (`medcolbert bench NAME ...`, `python -m medcolbert.bench NAME ...`), and
what every one of them shares: the CPU's name, a timing loop, its percentiles and the writer of its records (the
experiment harness uses them too). Each benchmark is a module of this package with a `main(argv)`."""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_write_text
from ..machine import cpu_model

__all__ = ["BENCHMARKS", "cpu_model", "time_each", "percentiles", "overlap_at_k", "write_results", "run_benchmark"]

# name -> (module of this package, what it measures); listed by `medcolbert bench` without a name.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "search": ("search", "PLAID vs exact MaxSim vs colbert-ai 0.2.22 on one collection: build, size, latency, quality"),
    "latency": ("latency", "medcolbert vs colbert-ai search latency in alternating rounds (after `search`)"),
    "stages": ("stages", "where a search's time goes per stage, under each instruction set this CPU runs"),
    "engines": ("engines", "medcolbert beside colbert-ai, fast-plaid and xtr-warp-rs on the same vectors"),
    "exact-stage": ("exact_stage", "PLAID's exact stage: residual-code scoring against decompression, per stage"),
    "encode": ("encode", "document encoding throughput, fp32 vs bf16"),
    "scale": ("scale", "indexes of 1M / 10M / 100M resampled token vectors: build, size, latency, memory"),
    "kmeans": ("kmeans", "centroid training at scale: flat against two-level k-means"),
    "assignment": ("assignment", "nearest-centroid assignment: exact against HNSW and IVF"),
    "filters": ("filters", "filtered search per selectivity against exact search over the subset"),
    "hybrid": ("hybrid", "what the lexical side costs: latency per mode, postings size and build time"),
    "sharded": ("sharded", "shard-merge simulation: S shards searched apart against one index (own codecs)"),
    "shards": ("shards", "a shard set against one index: quality per shard count, the Ray hop, memory per actor"),
    "shards-scale": ("shards_scale", "a shard set against one index at 1M and 10M vectors: overlap with exact MaxSim"),
    "cluster-sim": ("cluster_sim", "a simulated cluster: every shard on its own core, the slowest shard per query"),
    "ray-build": ("ray_build", "the Ray build against the single-process build: time and equal arrays"),
    "service-load": ("service_load", "`medcolbert serve` under 1 / 4 / 16 clients: throughput and latency"),
}


def time_each(fn: Callable[[Any], object], items: Sequence[Any], warmup: int = 3) -> list[float]:
    """Milliseconds of fn(item) for each item, one at a time, after `warmup` untimed calls on the first items."""
    for item in items[:warmup]:
        fn(item)
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - start) * 1000)
    return out


def percentiles(ms: Iterable[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """{"p50_ms": ..., "p95_ms": ..., ...} of a list of milliseconds (NaN for an empty list)."""
    values = np.asarray(list(ms), dtype=np.float64)
    return {f"p{p}_ms": float(np.percentile(values, p)) if len(values) else float("nan") for p in points}


def overlap_at_k(runs: Iterable[Sequence[str]], references: Iterable[Sequence[str]], k: int = 10) -> float:
    """Mean share of each reference's top k that the run's top k also holds (runs and references paired, best first)."""
    return float(np.mean([len(set(list(a)[:k]) & set(list(b)[:k])) / k for a, b in zip(runs, references, strict=True)]))


def write_results(path: str | Path, result: Any, markdown: str | Iterable[str]) -> Path:
    """Record a benchmark: the raw result as JSON at `path` and its table (text or lines) beside it as .md,
    each written to a temporary file and renamed, so an interrupted run never leaves half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    atomic_write_text(path.with_suffix(".md"), text.rstrip("\n") + "\n")
    return atomic_write_text(path, json.dumps(result, indent=1, default=str) + "\n")


def run_benchmark(name: str, argv: Sequence[str] = ()) -> int:
    """Run one benchmark by name with its own command-line arguments; returns its exit status."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; one of: {', '.join(sorted(BENCHMARKS))}")
    module = importlib.import_module(f"{__name__}.{BENCHMARKS[name][0]}")
    saved = sys.argv
    # The benchmarks name themselves by sys.argv[0] in their usage lines and records.
    sys.argv = [f"medcolbert bench {name}", *argv]
    try:
        return int(module.main(list(argv)) or 0)
    finally:
        sys.argv = saved
