"""Apply README.md's rule to the two experiments beside this file; write judgment.md and judgment.json.

    .venv/bin/python experiments/releases/query-encoder/judge.py [FOLDER]

FOLDER (default: this one) holds the two experiments' records (first-student/ keeps the first candidate's).

Reads results.json and perquery/ of experiments/releases/query-encoder/ (end to end) and its rerank/ folder; for
each set: nDCG@10 of v5, of v5 with the distilled query encoder and of the base, the paired difference to v5
(t-test over the set's questions) and, end to end, overlap@10 of the two runs (from runs/, when present).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scipy import stats

HERE = Path(__file__).resolve().parent
FULL, FAST, BASE = "medcolbert v5", "medcolbert v5 distilled queries", "MiniLM (base)"
SLUG = {FULL: "medcolbert-v5", FAST: "medcolbert-v5-distilled-queries"}
# (folder, data set, label, real-question set?) in the README's order.
ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE
SETS = [(ROOT, "mediqa-qa", "mediqa-qa end to end", True),
        (ROOT / "rerank", "mediqa-qa-rerank", "mediqa-qa reranking CHiQA's candidates", True),
        (ROOT, "consumer-health-dev-medquad", "consumer-health dev-medquad", True),
        (ROOT, "consumer-health-dev", "consumer-health dev (shortcut)", True),
        (ROOT, "mediqa-qa-validation", "mediqa-qa validation (13 long questions), end to end", False),
        (ROOT / "rerank", "mediqa-qa-rerank-validation", "mediqa-qa validation, reranking", False),
        (ROOT, "scifact", "SciFact test (floor 0.71)", False),
        (ROOT, "medquad", "MedQuAD dev (floor 0.88)", False)]
FLOORS = {"scifact": 0.71, "medquad": 0.88}


def perquery(folder: Path, dataset: str, system: str) -> dict[str, float]:
    """One system's nDCG@10 per question."""
    return json.loads((folder / "perquery" / f"{dataset}.{SLUG[system]}.json").read_text())["ndcg@10"]


def top10(folder: Path, dataset: str, system: str) -> dict[str, list[str]] | None:
    """One system's top 10 per question from its TREC run, if the run is here."""
    path = folder / "runs" / f"{dataset}.{SLUG[system]}.trec"
    if not path.is_file():
        return None
    ranked: dict[str, list[tuple[int, str]]] = {}
    for line in path.read_text().splitlines():
        qid, _, doc, rank, *_ = line.split()
        ranked.setdefault(qid, []).append((int(rank), doc))
    return {q: [d for _, d in sorted(hits)[:10]] for q, hits in ranked.items()}


def main() -> None:
    """Judge and write."""
    rows, passed = [], True
    for folder, dataset, label, real in SETS:
        systems = json.loads((folder / "results.json").read_text())["datasets"][dataset]["systems"]
        full, fast, base = (systems[s]["ndcg@10"] for s in (FULL, FAST, BASE))
        a, b = perquery(folder, dataset, FULL), perquery(folder, dataset, FAST)
        qids = sorted(a)
        diff = [b[q] - a[q] for q in qids]
        p = float(stats.ttest_rel([b[q] for q in qids], [a[q] for q in qids]).pvalue) if any(diff) else 1.0
        runs = top10(folder, dataset, FULL), top10(folder, dataset, FAST)
        overlap = None
        if runs[0] is not None and runs[1] is not None:
            overlap = sum(len(set(runs[0][q]) & set(runs[1].get(q, []))) for q in runs[0]) / (10 * len(runs[0]))
        checks = []
        if real:
            checks.append(("within 0.01 of v5", fast >= full - 0.01))
            if full >= base:
                checks.append(("not below the base", fast >= base))
        if dataset in FLOORS:
            checks.append((f">= {FLOORS[dataset]}", fast >= FLOORS[dataset]))
        ok = all(c for _, c in checks)
        passed &= ok
        rows.append({"set": label, "questions": len(qids), "v5": round(full, 4), "distilled": round(fast, 4),
                     "base": round(base, 4), "difference": round(fast - full, 4), "p": round(p, 3),
                     "overlap@10": None if overlap is None else round(overlap, 3),
                     "checks": {name: bool(c) for name, c in checks}, "pass": ok if checks else None})
    lines = ["# v5's distilled query encoder against v5, judged by README.md's rule", "",
             "| set | questions | v5 | v5, distilled queries | base | difference (p, paired t) | overlap@10 with v5 | rule |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rule = "-" if r["pass"] is None else ("pass" if r["pass"] else "FAIL: " + ", ".join(
            k for k, v in r["checks"].items() if not v))
        overlap = "-" if r["overlap@10"] is None else f"{r['overlap@10']:.3f}"
        lines.append(f"| {r['set']} | {r['questions']} | {r['v5']:.4f} | {r['distilled']:.4f} | {r['base']:.4f} | "
                     f"{r['difference']:+.4f} ({r['p']:.3f}) | {overlap} | {rule} |")
    lines += ["", f"Verdict: {'offered as the opt-in fast query encoder' if passed else 'not offered'} "
                  f"({'every' if passed else 'not every'} check of the rule passes)."]
    (ROOT / "judgment.json").write_text(json.dumps({"rows": rows, "pass": passed}, indent=2) + "\n")
    (ROOT / "judgment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
