"""The query encoder's precision on this CPU, chosen by measurement: the fastest that keeps fp32's vectors."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from ..machine import THREADS, cpu_id, cpu_model, remembered, torch_capability

# A lower precision is used only when every probe vector stays this close to fp32's (cosine) ...
MIN_COSINE = 0.999
# ... and it is this much faster than fp32 (p50 of one query): a tie keeps the exact path.
MIN_SPEEDUP = 1.05
CHOICES = ("float32", "bfloat16")
# Both fit 32 tokens, the shortest query_maxlen of any checkpoint, so measuring never truncates (or warns).
PROBES = ("what are the side effects of metformin",
          "can the antibiotic my mother takes for a cough change how her warfarin works and what should we watch for")


def _dtype(name: str) -> torch.dtype | None:
    return None if name == "float32" else getattr(torch, name)


def _key(model: Any) -> str:
    # torch's kernel level (ATEN_CPU_CAPABILITY may lower it below what the CPU has) decides bfloat16's speed.
    # A distilled query encoder (fewer layers) is timed apart: its fingerprint is the full model's.
    student = getattr(model, "query_backbone", None)
    queries = f"|query encoder {len(student.encoder.layer)} layers" if student is not None else ""
    return f"{cpu_id()}|torch {torch.__version__} {torch_capability()}|{torch.get_num_threads()} threads|" \
           f"{model.fingerprint(weights_only=True)}{queries}"


def measure(model: Any, repeats: int = 15) -> dict:
    """Time one-query encoding (traced graph) per precision and compare its vectors with fp32's."""
    # Every candidate is timed at the process's own thread count, not at what the machine's load would give a search.
    with THREADS.fixed():
        return _measure(model, repeats)


def _measure(model: Any, repeats: int) -> dict:
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "p50_ms": {}, "min_cosine": {}}
    previous, traced = model.query_dtype, model.trace_queries
    # A model with query_maxlen under the probes' length truncates them: that must neither warn nor use up
    # the once-only warning a user's own long query should get.
    warned = model.tokenizer._warned_truncation
    model.tokenizer._warned_truncation = True
    model.trace_queries = True
    try:
        model.query_dtype = None
        model.trace_queries = False   # the reference: eager fp32
        reference = model.encode_queries(list(PROBES), batch_size=1, show_progress=False)
        model.trace_queries = True
        keep = reference.abs().sum(-1) > 0
        usable = []
        for name in CHOICES:
            model.query_dtype = _dtype(name)
            try:
                got = model.encode_queries(list(PROBES), batch_size=1, show_progress=False)   # traces, warms
            except RuntimeError as exc:   # a CPU or build without the kernels: not a candidate
                result["min_cosine"][name] = None
                result.setdefault("errors", {})[name] = str(exc).splitlines()[0][:200]
                continue
            cos = torch.nn.functional.cosine_similarity(got[keep], reference[keep], dim=-1)
            result["min_cosine"][name] = round(float(cos.min()), 6)
            usable.append(name)
        # Timed in turns, so that a busy machine slows every candidate alike (the ratio is what decides).
        times: dict[str, list[float]] = {name: [] for name in usable}
        for i in range(repeats):
            for name in usable:
                model.query_dtype = _dtype(name)
                t0 = time.perf_counter()
                model.encode_queries([PROBES[i % 2]], show_progress=False)
                times[name].append((time.perf_counter() - t0) * 1000)
        result["p50_ms"] = {name: round(statistics.median(t), 3) for name, t in times.items()}
    finally:
        model.query_dtype, model.trace_queries = previous, traced
        model.tokenizer._warned_truncation = warned
    return result


def decide(measured: dict) -> str:
    """The fastest precision whose vectors stay within MIN_COSINE of fp32's, if it beats fp32 by MIN_SPEEDUP."""
    base = measured["p50_ms"].get("float32")
    best = "float32"
    for name in CHOICES[1:]:
        cos, ms = measured["min_cosine"].get(name), measured["p50_ms"].get(name)
        if cos is None or ms is None or base is None or cos < MIN_COSINE:
            continue
        if ms * MIN_SPEEDUP <= base and ms < measured["p50_ms"][best]:
            best = name
    return best


def choose_query_precision(model: Any, force: str | None = None, remeasure: bool = False) -> dict:
    """Set the model's query precision for this CPU and return the decision with its measurements.

    force (or $MEDCOLBERT_QUERY_PRECISION): "float32", "bfloat16" or "auto" (measure once per CPU model,
    torch version, thread count and weights; the result is kept in the medcolbert cache folder).
    """
    choice = force or os.environ.get("MEDCOLBERT_QUERY_PRECISION", "auto")
    if choice not in ("auto", *CHOICES):
        raise ValueError(f"query precision must be auto, float32 or bfloat16, got {choice!r}")
    if model.device.type != "cpu" or model.autocast_dtype is not None:
        model.query_dtype = None
        return {"chosen": "autocast" if model.autocast_dtype is not None else "float32", "reason": "not a CPU model"}
    if choice != "auto":
        model.query_dtype = _dtype(choice)
        return {"chosen": choice, "reason": "forced"}

    def measured() -> dict:
        entry = measure(model)
        entry["chosen"] = decide(entry)
        return entry

    entry = remembered("query-precision", _key(model), measured, lambda e: e.get("chosen") in CHOICES, remeasure)
    model.query_dtype = _dtype(entry["chosen"])
    return {**entry, "reason": "measured"}
