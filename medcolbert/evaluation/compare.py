"""Two runs compared query by query (`medcolbert compare`): the metric per query for both, the differences as a
sorted plot, wins / ties / losses and the paired test the experiment harness uses, and for the queries that differ
most the two top-10 lists side by side with grades and snippets. One self-contained HTML file (inline SVG and CSS,
no script, nothing fetched), readable offline.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import DataError
from .metrics import per_query

TIE = 1e-9


def compare_runs(run_a: Mapping[str, Mapping[str, float]], run_b: Mapping[str, Mapping[str, float]],
                 qrels: Mapping[str, Mapping[str, int]], metric: str = "ndcg@10",
                 names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """The per-query comparison of two runs over the judged queries (a query a run lacks scores 0, as in evaluate)."""
    from ..experiment import paired_test

    if not qrels:
        raise DataError("no judged queries to compare on")
    judged_a, judged_b = set(run_a) & set(qrels), set(run_b) & set(qrels)
    if not judged_a or not judged_b:
        which = names[0] if not judged_a else names[1]
        raise DataError(f"run {which} holds none of the judged queries (were the qrels for another collection?)")
    a = per_query(run_a, qrels, [metric])[metric]
    b = per_query(run_b, qrels, [metric])[metric]
    qids = sorted(qrels)
    x, y = np.array([a[q] for q in qids]), np.array([b[q] for q in qids])
    diff = x - y
    return {"metric": metric, "names": list(names), "queries": len(qids),
            "mean": [float(x.mean()), float(y.mean())], "delta": float(diff.mean()),
            "wins": int((diff > TIE).sum()), "ties": int((np.abs(diff) <= TIE).sum()), "losses": int((diff < -TIE).sum()),
            "p_paired_t": paired_test(x, y, "paired-t") if len(qids) > 1 else 1.0,
            "per_query": {q: {"a": a[q], "b": b[q], "delta": a[q] - b[q]} for q in qids}}


def _plot(deltas: list[float], width: int = 760, height: int = 220) -> str:
    """An inline SVG of the per-query differences, sorted, as bars around a zero line."""
    values = sorted(deltas, reverse=True)
    top = max((abs(v) for v in values), default=0.0) or 1.0
    mid = height / 2
    bar = width / max(len(values), 1)
    rects = []
    for i, v in enumerate(values):
        h = abs(v) / top * (mid - 10)
        color = "#2a7a3b" if v > TIE else "#b3261e" if v < -TIE else "#999"
        rects.append(f'<rect x="{i * bar:.2f}" y="{(mid - h) if v > 0 else mid:.2f}" width="{max(bar - 0.3, 0.6):.2f}" '
                     f'height="{max(h, 0.8):.2f}" fill="{color}"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="per-query differences, sorted">'
            f'<line x1="0" y1="{mid}" x2="{width}" y2="{mid}" stroke="#444" stroke-width="0.6"/>{"".join(rects)}'
            f'<text x="4" y="12" font-size="11">+{top:.3f}</text><text x="4" y="{height - 3}" font-size="11">'
            f'-{top:.3f}</text></svg>')


def report_html(comparison: Mapping[str, Any], run_a: Mapping[str, Mapping[str, float]],
                run_b: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                queries: Mapping[str, str] | None = None, snippet: Callable[[str], str | None] | None = None,
                depth: int = 10, shown: int = 50, title: str | None = None) -> str:
    """The comparison as one self-contained HTML page; `shown` queries (those that differ most) get their two
    top-`depth` lists side by side, with each document's grade and, where `snippet` gives one, its text."""
    e = html.escape
    na, nb = comparison["names"]
    pq = comparison["per_query"]
    order = sorted(pq, key=lambda q: (-abs(pq[q]["delta"]), q))
    metric = comparison["metric"]
    head = (f"<h1>{e(title or f'{na} vs {nb}')}</h1><p class=summary>{metric} over {comparison['queries']} judged "
            f"queries: <b>{e(na)}</b> {comparison['mean'][0]:.4f}, <b>{e(nb)}</b> {comparison['mean'][1]:.4f} "
            f"(difference {comparison['delta']:+.4f}, paired t-test p = {comparison['p_paired_t']:.3g}); "
            f"{e(na)} wins {comparison['wins']}, ties {comparison['ties']}, loses {comparison['losses']}.</p>")
    plot = (f"<h2>Per-query differences ({e(na)} - {e(nb)}), sorted</h2>{_plot([v['delta'] for v in pq.values()])}")
    rows = "".join(f"<tr><td><a href='#q-{e(q)}'>{e(q)}</a></td><td>{e((queries or {}).get(q, ''))[:120]}</td>"
                   f"<td>{pq[q]['a']:.4f}</td><td>{pq[q]['b']:.4f}</td><td class='{_sign(pq[q]['delta'])}'>"
                   f"{pq[q]['delta']:+.4f}</td></tr>" for q in order)
    table = (f"<h2>Every query</h2><table class=all><tr><th>query</th><th>text</th><th>{e(na)}</th><th>{e(nb)}</th>"
             f"<th>difference</th></tr>{rows}</table>")

    def ranked(run: Mapping[str, Mapping[str, float]], q: str) -> str:
        hits = sorted(run.get(q, {}).items(), key=lambda kv: -kv[1])[:depth]
        if not hits:
            return "<p class=muted>(no results for this query)</p>"
        items = []
        for d, s in hits:
            grade = qrels.get(q, {}).get(d)
            text = snippet(d) if snippet else None
            items.append(f"<li class='{'rel' if grade and grade > 0 else ''}'><b>{e(d)}</b> <span class=muted>"
                         f"{s:.3f} · grade {grade if grade is not None else '-'}</span>"
                         + (f"<div class=snip>{e(text[:240])}{'...' if len(text) > 240 else ''}</div>" if text else "")
                         + "</li>")
        return "<ol>" + "".join(items) + "</ol>"

    detail = []
    for q in order[:shown]:
        detail.append(f"<section id='q-{e(q)}'><h3>{e(q)}: {e((queries or {}).get(q, ''))}</h3>"
                      f"<p>{e(na)} {pq[q]['a']:.4f} · {e(nb)} {pq[q]['b']:.4f} · difference "
                      f"<span class='{_sign(pq[q]['delta'])}'>{pq[q]['delta']:+.4f}</span></p>"
                      f"<div class=pair><div><h4>{e(na)}</h4>{ranked(run_a, q)}</div>"
                      f"<div><h4>{e(nb)}</h4>{ranked(run_b, q)}</div></div></section>")
    more = (f"<p class=muted>The {shown} queries that differ most are shown in full; the table lists every "
            "query.</p>") if len(order) > shown else ""
    style = ("body{font:14px/1.45 system-ui,sans-serif;max-width:70em;margin:1em auto;padding:0 1em;color:#1b1b1b}"
             "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left}"
             ".pos{color:#2a7a3b}.neg{color:#b3261e}.muted{color:#666;font-size:.9em}.pair{display:flex;gap:2em}"
             ".pair>div{flex:1}li.rel{background:#eef7ee}.snip{font-size:.9em;color:#333}ol{padding-left:1.4em}"
             "section{border-top:1px solid #ccc;margin-top:1em}")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title or f'{na} vs {nb}')}</title>"
            f"<style>{style}</style></head><body>{head}{plot}<h2>Queries that differ most</h2>{more}"
            f"{''.join(detail)}{table}</body></html>\n")


def _sign(x: float) -> str:
    return "pos" if x > TIE else "neg" if x < -TIE else ""
