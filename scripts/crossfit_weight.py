"""Cross-fitted choice of a scoring setting from an experiment's per-query files (issue 12, analysis).

An experiment that runs one system at several values of a setting (systems named "FAMILY PARAM=VALUE", e.g.
"PLAID w=2"; PARAM is w unless --param says otherwise) writes each one's per-query scores. Picking the value with
the best mean on a set and reporting that mean scores each query with a value tuned on it; cross-fitting does
not: the queries are halved at random, each half is scored at the value best on the other half, and this is
repeated over many halvings (each query's score is its mean over them). Prints, per family: every value's mean,
the value best on all queries, how often each was chosen, the cross-fitted mean, and its paired t-test against
the baseline system; for the other data sets, each value's mean, so the cost of a value chosen on one set can be
read on the others.
Usage: python scripts/crossfit_weight.py OUTPUT_DIR [--dataset consumer-health] [--metric ndcg@10]
       [--halvings 2000] [--seed 0] [--param w] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from medcolbert.errors import MedColbertError
from medcolbert.experiment import _slug, paired_test




def load(out_dir: Path) -> dict:
    """The experiment's results.json, with a one-line error when it is missing or unreadable."""
    path = out_dir / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedColbertError(f"{path}: cannot read the experiment's results ({exc})") from None


def families(systems: list[str], param: str = "w") -> dict[str, dict[float, str]]:
    """System names "FAMILY PARAM=VALUE" grouped by family: family -> {value: system name}."""
    pattern = re.compile(rf"^(?P<family>.+) {re.escape(param)}=(?P<w>[0-9.]+)$")
    found: dict[str, dict[float, str]] = {}
    for name in systems:
        m = pattern.match(name)
        if m:
            found.setdefault(m["family"], {})[float(m["w"])] = name
    return found


def perquery(out_dir: Path, dataset: str, system: str, metric: str) -> dict[str, float]:
    """One system's per-query metric on one data set, as the experiment wrote it."""
    path = out_dir / "perquery" / f"{dataset}.{_slug(system)}.json"  # the experiment's file-name rule
    try:
        scores = json.loads(path.read_text())[metric]
    except (OSError, ValueError, KeyError) as exc:
        raise MedColbertError(f"{path}: no per-query {metric} ({exc})") from None
    bad = [q for q, v in scores.items() if not np.isfinite(v)]
    if bad:
        raise MedColbertError(f"{path}: query {bad[0]!r} has a non-finite {metric}")
    return scores


def crossfit(table: np.ndarray, halvings: int, seed: int) -> tuple[np.ndarray, Counter]:
    """Per-query cross-fitted scores from a [queries, weights] table, and how often each weight column was chosen.

    Ties between weights go to the lower column (the caller orders columns by weight)."""
    rng = np.random.default_rng(seed)
    n = table.shape[0]
    total = np.zeros(n)
    chosen: Counter = Counter()
    for _ in range(halvings):
        order = rng.permutation(n)
        halves = (order[: n // 2], order[n // 2:])
        for pick_on, score_on in (halves, halves[::-1]):
            best = int(np.argmax(table[pick_on].mean(axis=0)))
            chosen[best] += 1
            total[score_on] += table[score_on, best]
    return total / halvings, chosen


def report(out_dir: Path, dataset: str, metric: str, halvings: int, seed: int, param: str = "w") -> str:
    """The markdown report for one experiment folder."""
    results = load(out_dir)
    sets = results["datasets"]
    if dataset not in sets:
        raise MedColbertError(f"{out_dir}: no data set {dataset!r} (has {sorted(sets)})")
    baseline = results["baseline"]
    groups = families(list(sets[dataset]["systems"]), param)
    if not groups:
        raise MedColbertError(f"{out_dir}: no systems named 'FAMILY {param}=VALUE' on {dataset}")
    base = perquery(out_dir, dataset, baseline, metric)
    qids = sorted(base)
    lines = [f"# Cross-fitted choice of {param} on {dataset} ({metric}; {halvings} random halvings, seed {seed})", "",
             f"Baseline `{baseline}`: {np.mean([base[q] for q in qids]):.4f} over {len(qids)} queries.", ""]
    for family, by_weight in sorted(groups.items()):
        weights = sorted(by_weight)
        cols = [perquery(out_dir, dataset, by_weight[w], metric) for w in weights]
        table = np.array([[c[q] for c in cols] for q in qids])
        means = table.mean(axis=0)
        scores, chosen = crossfit(table, halvings, seed)
        b = np.array([base[q] for q in qids])
        p = paired_test(scores, b, "paired-t")
        lines += [f"## {family}", "",
                  f"| {param} | " + " | ".join(f"{w:g}" for w in weights) + " |",
                  "|---|" + "---|" * len(weights),
                  f"| {dataset} | " + " | ".join(f"{m:.4f}" for m in means) + " |"]
        for other in sorted(sets):
            if other == dataset:
                continue
            got = [sets[other]["systems"].get(by_weight[w], {}).get(metric) for w in weights]
            lines.append(f"| {other} | " + " | ".join("-" if g is None else f"{g:.4f}" for g in got) + " |")
        share = ", ".join(f"{weights[i]:g}: {chosen[i] / (2 * halvings):.1%}" for i in sorted(chosen))
        lines += ["", f"- best on all of {dataset}: {param} = {weights[int(np.argmax(means))]:g} ({means.max():.4f})",
                  f"- chosen by the halves: {share}",
                  f"- cross-fitted: {scores.mean():.4f}, {scores.mean() - b.mean():+.4f} over the baseline, "
                  f"paired t p = {p:.4g}", ""]
    return "\n".join(lines)


def main() -> int:
    """Print (and optionally write) the report; one-line errors for bad input."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("--dataset", default="consumer-health")
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("--halvings", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--param", default="w", help="the name before '=' in the systems' names (default w)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.halvings < 1:
        print(f"error: --halvings must be at least 1, got {args.halvings}", file=sys.stderr)
        return 2
    try:
        text = report(args.output_dir, args.dataset, args.metric, args.halvings, args.seed, args.param)
    except MedColbertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
