"""What every benchmark shares: the CPU's name, a timing loop, its percentiles and the writer of its records
(scripts/ and the harness use it)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .fsutil import atomic_write_text
from .machine import cpu_model

__all__ = ["cpu_model", "time_each", "percentiles", "write_results"]


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


def write_results(path: str | Path, result: Any, markdown: str | Iterable[str]) -> Path:
    """Record a benchmark: the raw result as JSON at `path` and its table (text or lines) beside it as .md,
    each written to a temporary file and renamed, so an interrupted run never leaves half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    atomic_write_text(path.with_suffix(".md"), text.rstrip("\n") + "\n")
    return atomic_write_text(path, json.dumps(result, indent=1, default=str) + "\n")
