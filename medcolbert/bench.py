"""What every benchmark shares: the CPU's name, a timing loop and its percentiles (scripts/ and the harness use it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .machine import cpu_model

__all__ = ["cpu_model", "time_each", "percentiles"]


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
