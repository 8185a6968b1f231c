"""Retrieval metrics through ir-measures, averaged over every judged query, and their tables."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import ir_measures

from .datasets import Qrels

DEFAULT_METRICS = ("ndcg@10", "map@100", "recall@100", "mrr@10")

# Friendly names users type, mapped to ir-measures' own.
_ALIASES = {"ndcg": "nDCG", "map": "AP", "ap": "AP", "recall": "R", "r": "R", "mrr": "RR", "rr": "RR",
            "p": "P", "precision": "P", "success": "Success"}


def parse_metric(name: str) -> ir_measures.Measure:
    """An ir-measures measure from a name like 'ndcg@10', 'MAP@100' or 'nDCG@10'."""
    base, _, cutoff = name.partition("@")
    measure_name = _ALIASES.get(base.lower(), base)
    text = f"{measure_name}@{cutoff}" if cutoff else measure_name
    try:
        return ir_measures.parse_measure(text)
    except (ValueError, NameError, AttributeError, SyntaxError):
        raise ValueError(f"unknown metric {name!r}; try ndcg@10, map@100, recall@100, mrr@10") from None


def parse_metrics(value: object) -> list[str]:
    """A metric list from 'ndcg@10,map@100' or a list of names: every name checked, at least one, no repeats."""
    if isinstance(value, str):
        names = [m.strip() for m in value.split(",")]
        if any(not m for m in names) and any(names):
            raise ValueError(f"metrics {value!r} has an empty name between commas")
        names = [m for m in names if m]
    elif isinstance(value, list) and all(isinstance(m, str) for m in value):
        names = [m.strip() for m in value]
    else:
        raise ValueError(f"metrics must be a comma-separated string or a list of names, got {value!r}")
    if not names or not all(names):
        raise ValueError("no metric given; try ndcg@10, map@100, recall@100, mrr@10")
    for name in names:
        parse_metric(name)
    if len(set(names)) != len(names):
        raise ValueError(f"metric listed twice in {value!r}")
    return names


def per_query(run: Mapping[str, Mapping[str, float]], qrels: Qrels,
              metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """metric name -> {query id: value} over every query in the qrels (0 where the run has none)."""
    measures = {m: parse_metric(m) for m in metrics}
    by_measure = {str(v): k for k, v in measures.items()}
    values: dict[str, dict[str, float]] = {m: {qid: 0.0 for qid in qrels} for m in metrics}
    run_plain = {qid: {d: float(s) for d, s in docs.items()} for qid, docs in run.items() if qid in qrels}
    if run_plain:
        for row in ir_measures.iter_calc(list(measures.values()), qrels, run_plain):
            name = by_measure[str(row.measure)]
            if row.query_id in values[name]:
                values[name][row.query_id] = float(row.value)
    return values


def evaluate(run: Mapping[str, Mapping[str, float]], qrels: Qrels,
             metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over all judged queries (a query missing from the run counts as 0)."""
    # Averaging over the qrels, not over the queries the run happens to contain, is the BEIR convention;
    # it stops a run that drops hard queries from looking better.
    table = per_query(run, qrels, metrics)
    return {m: (sum(v.values()) / len(v) if v else math.nan) for m, v in table.items()}


def format_table(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str] | None = None,
                 digits: int = 4) -> str:
    """An aligned plain-text table: one row per system, one column per metric."""
    if not rows:
        return "(no results)"
    metrics = list(metrics or next(iter(rows.values())).keys())
    header = ["system", *metrics]
    body = [[name, *(f"{vals.get(m, math.nan):.{digits}f}" for m in metrics)] for name, vals in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _finite(value: object) -> object:
    """value with every float that is not finite replaced by None, through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(data: object, path: str | Path) -> Path | None:
    """Write JSON (indented, keys in order) creating parent folders, atomically; '-' prints it to stdout."""
    # NaN and infinity are not JSON (a document's metadata may hold one from before they were refused): null.
    text = json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"
    if str(path) == "-":
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    from ..fsutil import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
