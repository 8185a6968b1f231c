"""The README's results table and the experiment file's `expected:` block, from a recorded flagship run.

Usage: python experiments/quality/flagship/flagship_table.py [experiments/quality/flagship/results.json] [--expected]
The table: nDCG@10 per set (▲/▼ = significantly better/worse than the run's baseline after its correction),
consumer-health's 95% bootstrap interval and Recall@100, whether each set is in domain, and p50 latency.
--expected prints the YAML block experiments/quality/flagship/experiment.yaml checks later runs against (nDCG@10, Recall@100).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MARK = {"better": "▲", "worse": "▼"}


def marked(system: dict, metric: str) -> str:
    """A score to 4 places with its significance mark."""
    test = system.get("vs_baseline", {}).get(metric, {})
    mark = MARK.get(test.get("direction", ""), "") if test.get("significant") else ""
    return f"{system[metric]:.4f}{mark}"


def table(results: dict) -> str:
    """The markdown table over every data set of the run."""
    sets = list(results["datasets"])
    focus = "consumer-health" if "consumer-health" in sets else sets[-1]
    head = ([f"{s} nDCG@10" for s in sets if s != focus] + [f"{focus} nDCG@10", f"{focus} R@100"]
            + [f"in domain ({'/'.join(s[0].upper() for s in sets)})", f"p50 ms ({' / '.join(sets)})"])
    lines = ["| system | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name in results["datasets"][sets[0]]["systems"]:
        rows = {s: results["datasets"][s]["systems"][name] for s in sets}
        ci = rows[focus]["ci95"]["ndcg@10"]
        cells = ([marked(rows[s], "ndcg@10") for s in sets if s != focus]
                 + [f"{marked(rows[focus], 'ndcg@10')} [{ci[0]:.3f}, {ci[1]:.3f}]", marked(rows[focus], "recall@100")]
                 + ["/".join("yes" if rows[s].get("in_domain") else "no" for s in sets),
                    " / ".join(f"{rows[s]['p50_ms']:.1f}" if rows[s].get("p50_ms") is not None else "-" for s in sets)])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def expected(results: dict) -> str:
    """The `expected:` block of the experiment file (nDCG@10 and Recall@100 to 4 places)."""
    lines = ["expected:   # measured by the run recorded in experiments/quality/flagship/ (2 CPU cores); the run fails past the tolerance"]
    for ds, data in results["datasets"].items():
        lines.append(f"  {ds}:")
        for name, row in data["systems"].items():
            lines.append(f'    "{name}": {{ndcg@10: {round(row["ndcg@10"], 4)}, recall@100: {round(row["recall@100"], 4)}}}')
    return "\n".join(lines)


def main() -> None:
    """Print the table (or the expected block) of one recorded run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default="experiments/quality/flagship/results.json")
    ap.add_argument("--expected", action="store_true")
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    print(expected(results) if args.expected else table(results))


if __name__ == "__main__":
    main()
