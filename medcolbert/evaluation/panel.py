"""The real-question panel: every model on each set separately, against the untuned base and a reference model,
and the release rule of issue 29 (a gain over the base averaged over the shortcut-free real-question sets).

It reads what `medcolbert experiment` wrote (results.json and perquery/*.json of one or more experiment folders),
so a model is scored once and judged from its recorded per-query scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..experiment import _slug, paired_test


@dataclass(frozen=True)
class PanelRule:
    """What a new default must show on the panel (issue 29, item 4), written before any candidate is scored."""

    decision_sets: tuple[str, ...] = ("mediqa-qa-rerank", "mediqa-qa", "consumer-health-dev-medquad")
    no_loss_sets: tuple[str, ...] = ("mediqa-qa-rerank", "mediqa-qa", "consumer-health-dev-medquad",
                                     "consumer-health-dev")
    min_gain: float = 0.02          # mean over the decision sets of (model - base) nDCG@10
    alpha: float = 0.05             # paired t over all their questions
    floors: dict = field(default_factory=lambda: {"scifact": 0.71, "medquad": 0.88})
    metric: str = "ndcg@10"


def load_panel(folders: list[str | Path]) -> dict[str, dict]:
    """{set: {"block": its systems from every folder, "folders": {system: folder}}} from experiment output folders.

    A set may be in several folders (the releases in one experiment, candidates in another): its systems are joined;
    a system named in two folders of one set must have the same scores there (e.g. the base, run in both)."""
    sets: dict[str, dict] = {}
    for folder in map(Path, folders):
        path = folder / "results.json"
        if not path.is_file():
            raise DataError("no results.json: run the experiment first", path)
        results = json.loads(path.read_text())
        for name, block in results["datasets"].items():
            entry = sets.setdefault(name, {"block": {**block, "systems": {}}, "folders": {}})
            for system, row in block["systems"].items():
                known = entry["block"]["systems"].get(system)
                if known is not None and abs(known.get("ndcg@10", 0) - row.get("ndcg@10", 0)) > 1e-9:
                    raise DataError(f"set '{name}': system '{system}' has different scores in {entry['folders'][system]} "
                                    f"and {folder}", path)
                if known is None:
                    entry["block"]["systems"][system] = row
                    entry["folders"][system] = folder
    return sets


def per_query(sets: dict[str, dict], set_name: str, system: str, metric: str) -> dict[str, float] | None:
    """A system's recorded per-query scores on a set (None when it was not run there)."""
    folder = sets[set_name]["folders"].get(system)
    path = None if folder is None else folder / "perquery" / f"{set_name}.{_slug(system)}.json"
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())[metric]


def _paired(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, int]:
    """Mean difference a - b over the questions both have, its paired t-test p, and how many questions."""
    qids = sorted(set(a) & set(b))
    x, y = np.array([a[q] for q in qids]), np.array([b[q] for q in qids])
    if not qids:
        return 0.0, 1.0, 0
    return float(x.mean() - y.mean()), paired_test(x, y, "paired-t"), len(qids)


def judge(sets: dict[str, dict], system: str, base: str, rule: PanelRule = PanelRule()) -> dict:
    """The rule's verdict on one system: mean gain over the decision sets, its p, losses, floors."""
    gains, missing = {}, []
    mine, theirs = [], []   # paired scores over every question of the decision sets
    for s in rule.no_loss_sets:
        if s not in sets:
            missing.append(s)
            continue
        a, b = per_query(sets, s, system, rule.metric), per_query(sets, s, base, rule.metric)
        if a is None or b is None:
            missing.append(s)
            continue
        gains[s] = _paired(a, b)[0]
        if s in rule.decision_sets:
            qids = sorted(set(a) & set(b))
            mine += [a[q] for q in qids]
            theirs += [b[q] for q in qids]
    decision = [gains[s] for s in rule.decision_sets if s in gains]
    mean_gain = float(np.mean(decision)) if decision else float("nan")
    p = paired_test(np.array(mine), np.array(theirs)) if len(mine) > 1 else float("nan")
    floors = {}
    for s, floor in rule.floors.items():
        row = sets.get(s, {}).get("block", {}).get("systems", {}).get(system)
        floors[s] = None if row is None else (row[rule.metric], row[rule.metric] >= floor)
    below = [s for s, g in gains.items() if g < 0]
    passes = (not missing and mean_gain >= rule.min_gain and p < rule.alpha and not below
              and all(v is not None and v[1] for v in floors.values()))
    return {"system": system, "mean_gain": mean_gain, "p": p, "questions": len(mine), "gains": gains,
            "below_base_on": below, "floors": floors, "missing": missing, "passes": passes}


def panel_markdown(sets: dict[str, dict], base: str, reference: str, rule: PanelRule = PanelRule(),
                   shortcut: tuple[str, ...] = ("consumer-health-dev",)) -> tuple[str, dict]:
    """The panel as markdown (one table per set, then the rule's verdicts) and the same as a dict."""
    m = rule.metric
    lines = ["# Real-question panel", "",
             f"{m} per set, 95% bootstrap interval; Δ and p: paired t-test over the set's questions against the "
             f"untuned base (`{base}`) and against `{reference}` (uncorrected). Sets marked SHORTCUT reward the "
             "style of consumer-health train's positives; floors are in domain.", ""]
    summary: dict = {"base": base, "reference": reference, "sets": {}, "verdicts": {}}
    systems: list[str] = []
    for name, entry in sets.items():
        block = entry["block"]
        kind = ("SHORTCUT" if name in shortcut else "decision" if name in rule.decision_sets
                else "floor" if name in rule.floors else "reported")
        lines += [f"## {name} ({kind}; {block['queries']} questions, {block['documents']} documents)", "",
                  f"| system | {m} | vs base Δ (p) | vs {reference} Δ (p) |", "|---|---|---|---|"]
        base_q, ref_q = per_query(sets, name, base, m), per_query(sets, name, reference, m)
        summary["sets"][name] = {}
        for system, row in block["systems"].items():
            if system not in systems:
                systems.append(system)
            own = per_query(sets, name, system, m)
            ci = row.get("ci95", {}).get(m, [float("nan")] * 2)
            cells = [f"{row[m]:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"]
            entry_out = {m: row[m], "ci95": ci}
            for key, other in (("vs_base", base_q), ("vs_reference", ref_q)):
                itself = system == (base if key == "vs_base" else reference)
                if other is None or own is None or itself:
                    cells.append("")
                    continue
                delta, p, _ = _paired(own, other)
                entry_out[key] = {"delta": delta, "p": p}
                cells.append(f"{delta:+.4f} ({p:.3f})")
            summary["sets"][name][system] = entry_out
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Release rule", "",
              f"Mean {m} gain over the base on {', '.join(rule.decision_sets)} at least {rule.min_gain} with paired "
              f"p < {rule.alpha} over all their questions; below the base on none of {', '.join(rule.no_loss_sets)}; "
              + ", ".join(f"{s} >= {v}" for s, v in rule.floors.items()) + ".", "",
              "| system | mean gain | p | below base on | floors | passes |", "|---|---|---|---|---|---|"]
    for system in systems:
        if system == base:
            continue
        v = judge(sets, system, base, rule)
        summary["verdicts"][system] = v
        on = [s for s in rule.decision_sets if s in v["gains"]]
        if not on:
            continue   # on none of the decision sets (a first stage, a set-specific baseline)
        floors = ", ".join(f"{s} {x[0]:.4f}" if x else f"{s} -" for s, x in v["floors"].items())
        gain = f"{v['mean_gain']:+.4f}" + ("" if len(on) == len(rule.decision_sets) else f" (on {', '.join(on)} only)")
        verdict = "yes" if v["passes"] else "no" + (f" (not run on {', '.join(v['missing'])})" if v["missing"] else "")
        lines.append(f"| {system} | {gain} | {v['p']:.3f} | {', '.join(v['below_base_on']) or '-'} | {floors} | {verdict} |")
    return "\n".join(lines) + "\n", summary


def write_panel(folders: list[str | Path], out: str | Path, base: str, reference: str) -> Path:
    """Write PANEL.md and panel.json into `out` from experiment folders; returns the markdown's path."""
    sets = load_panel(folders)
    text, summary = panel_markdown(sets, base, reference)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "panel.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "PANEL.md").write_text(text)
    return out / "PANEL.md"
