"""scripts/crossfit_weight.py: the cross-fitted estimate of a setting chosen on the same queries."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location("crossfit_weight", Path(__file__).parents[1] / "scripts" / "crossfit_weight.py")
crossfit_weight = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(crossfit_weight)


def test_a_value_best_on_every_query_is_always_chosen_and_scored_as_it_is():
    rng = np.random.default_rng(1)
    table = rng.uniform(0, 0.5, size=(40, 3))
    table[:, 1] += 0.5
    scores, chosen = crossfit_weight.crossfit(table, halvings=50, seed=0)
    assert set(chosen) == {1} and chosen[1] == 100
    assert np.allclose(scores, table[:, 1])


def test_pure_noise_is_not_rewarded_by_cross_fitting():
    """Columns of independent noise: the best in-sample mean beats the others by chance, the cross-fitted mean
    does not (it is an out-of-sample estimate, about the average column)."""
    rng = np.random.default_rng(2)
    table = rng.uniform(0, 1, size=(60, 8))
    scores, chosen = crossfit_weight.crossfit(table, halvings=400, seed=0)
    assert table.mean(axis=0).max() > scores.mean() + 0.02
    assert abs(scores.mean() - table.mean()) < 0.03
    assert sum(chosen.values()) == 800 and len(chosen) > 1


def test_report_reads_an_experiment_folder_and_refuses_a_missing_one(tmp_path):
    out = tmp_path / "exp"
    (out / "perquery").mkdir(parents=True)
    qids = [f"q{i}" for i in range(10)]
    systems = {"base": [0.2, 0.1] * 5, "R w=0": [0.1] * 10, "R w=1": [0.3, 0.25] * 5}
    for name, vals in systems.items():
        slug = name.replace(" ", "-").replace("=", "-")
        (out / "perquery" / f"ds.{slug}.json").write_text(json.dumps({"ndcg@10": dict(zip(qids, vals))}))
    results = {"baseline": "base", "datasets": {"ds": {"systems": {n: {"ndcg@10": v[0]} for n, v in systems.items()}}}}
    (out / "results.json").write_text(json.dumps(results))
    text = crossfit_weight.report(out, "ds", "ndcg@10", halvings=10, seed=0)
    assert "best on all of ds: w = 1 (0.2750)" in text and "cross-fitted: 0.2750, +0.1250" in text
    with pytest.raises(crossfit_weight.MedColbertError, match="cannot read the experiment's results"):
        crossfit_weight.report(tmp_path / "none", "ds", "ndcg@10", halvings=10, seed=0)
    with pytest.raises(crossfit_weight.MedColbertError, match="no data set 'other'"):
        crossfit_weight.report(out, "other", "ndcg@10", halvings=10, seed=0)
