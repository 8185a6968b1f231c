"""The experiment harness end to end on a tiny corpus with tiny models built in the test."""

import json

import numpy as np
import pytest
import yaml
from transformers import AutoTokenizer, BertConfig, BertModel

from medcolbert.cli import main
from medcolbert.errors import DataError
from medcolbert.experiment import ExperimentConfig, ExperimentDrift, paired_test, run_experiment
from medcolbert.modeling.checkpoint import default_model_path
from tests.conftest import make_tiny_model, write_beir
from tests.test_index import make_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    texts = make_corpus(60, seed=4)
    docs = {d: ("", t) for d, t in texts.items()}
    ids = list(texts)
    queries = {f"q{i}": " ".join(texts[ids[i * 5]].split()[:4]) for i in range(8)}
    qrels = {f"q{i}": {ids[i * 5]: 1} for i in range(8)}
    data = write_beir(root / "data", docs=docs, queries=queries, qrels=qrels)
    colbert = make_tiny_model(seed=2).save_pretrained(root / "colbert")
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128))
    bert.save_pretrained(root / "dense")
    tokenizer.save_pretrained(root / "dense")
    spec = {"name": "tiny", "datasets": [{"name": "tiny", "path": str(data), "split": "test"}],
            "systems": [{"name": "bm25", "type": "bm25"},
                        {"name": "dense", "type": "dense", "model": str(root / "dense"), "doc_maxlen": 64},
                        {"name": "colbert", "type": "colbert", "model": str(colbert)},
                        {"name": "bm25 > colbert", "type": "rerank", "first_stage": "bm25", "model": str(colbert), "depth": 20},
                        {"name": "hybrid", "type": "rrf", "runs": ["bm25", "colbert"]}],
            "latency_queries": 3, "output_dir": str(root / "out"), "work_dir": str(root / "work")}
    return root, spec


def test_experiment_writes_tables_runs_significance_and_plots(setup):
    root, spec = setup
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    results = run_experiment(ExperimentConfig.from_yaml(path), log=lambda _: None)
    out = root / "out"
    rows = results["datasets"]["tiny"]["systems"]
    assert list(rows) == ["bm25", "dense", "colbert", "bm25 > colbert", "hybrid"]
    assert rows["bm25"]["ndcg@10"] > 0.5      # the queries are words of their document
    assert "vs_baseline" not in rows["bm25"] and 0.0 <= rows["colbert"]["vs_baseline"]["ndcg@10"]["p"] <= 1.0
    assert all(rows[s]["p50_ms"] > 0 for s in rows)
    for name in ("runs/tiny.bm25-colbert.trec", "perquery/tiny.hybrid.json", "results.md", "results.json",
                 "plots/quality.png", "plots/quality-vs-latency.png", "plots/per-query-differences.png"):
        assert (out / name).is_file(), name
    perq = json.loads((out / "perquery" / "tiny.colbert.json").read_text())
    assert len(perq["ndcg@10"]) == 8
    assert "| hybrid |" in (out / "results.md").read_text()
    # A query-by-query report of each system against the baseline, linked from results.md.
    assert "compare_report" not in rows["bm25"]
    for name in ("dense", "colbert", "hybrid"):
        report = out / rows[name]["compare_report"]
        assert report.is_file() and f"tiny: {name} vs bm25" in report.read_text()
        assert f"]({rows[name]['compare_report']})" in (out / "results.md").read_text()
    for name, row in rows.items():   # every score has its interval; the mean lies inside it
        lo, hi = row["ci95"]["ndcg@10"]
        assert lo <= row["ndcg@10"] + 1e-9 and row["ndcg@10"] <= hi + 1e-9
    sig = rows["colbert"]["vs_baseline"]["ndcg@10"]
    assert sig["p_adjusted"] >= sig["p"] and sig["direction"] in ("better", "worse", "no difference")
    # Pipelines are timed end to end: never faster than their first stage alone.
    assert rows["bm25 > colbert"]["p50_ms"] >= rows["bm25"]["p50_ms"]
    assert rows["bm25 > colbert"]["timed_at"] == "k=100, top 20 reranked"
    assert rows["colbert"]["in_domain"] is None and "in-domain" in (out / "results.md").read_text()
    # A second run reuses the cached indexes and gives the same table.
    again = run_experiment(ExperimentConfig.from_yaml(path), log=lambda _: None)
    assert again["datasets"]["tiny"]["systems"]["colbert"]["ndcg@10"] == rows["colbert"]["ndcg@10"]
    # max_queries: a fixed sample of the judged queries, the same one every run.
    sample = {**spec, "systems": spec["systems"][:1], "output_dir": str(root / "sample"),
              "datasets": [{**spec["datasets"][0], "max_queries": 3}]}
    path.write_text(yaml.safe_dump(sample))
    first = run_experiment(ExperimentConfig.from_yaml(path), log=lambda _: None)["datasets"]["tiny"]
    perq = json.loads((root / "sample" / "perquery" / "tiny.bm25.json").read_text())["ndcg@10"]
    assert first["queries"] == 3 and len(perq) == 3
    run_experiment(ExperimentConfig.from_yaml(path), log=lambda _: None)
    assert json.loads((root / "sample" / "perquery" / "tiny.bm25.json").read_text())["ndcg@10"] == perq


def test_drift_fails_loudly_after_writing(setup, capsys):
    root, spec = setup
    spec = {**spec, "systems": spec["systems"][:1], "output_dir": str(root / "drift"),
            "expected": {"tiny": {"bm25": {"ndcg@10": 0.0}}}}
    path = root / "drift.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ExperimentDrift, match="tiny / bm25 / ndcg@10: expected 0.0000"):
        run_experiment(ExperimentConfig.from_yaml(path), log=lambda _: None)
    assert (root / "drift" / "results.md").is_file()
    assert main(["experiment", str(path)]) == 3
    assert "drifted" in capsys.readouterr().err


def test_bad_experiment_files_name_the_problem(tmp_path, setup):
    _, spec = setup
    cases = [({**spec, "sytems": []}, "unknown key"),
             ({**spec, "systems": [{"name": "r", "type": "rerank", "first_stage": "nope"}]}, "not a system listed before"),
             ({**spec, "systems": [{"name": "x", "type": "magic"}]}, "type must be one of"),
             ({**spec, "metrics": ["ndcg@10", "bogus@3"]}, "bogus"),
             ({**spec, "baseline": "nobody"}, "baseline"),
             ({**spec, "datasets": [{**spec["datasets"][0], "max_queries": 0}]}, "max_queries")]
    for i, (content, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump(content))
        with pytest.raises(DataError, match=message):
            ExperimentConfig.from_yaml(path)


def test_paired_tests():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    assert paired_test(a, a) == 1.0
    for test in ("paired-t", "bootstrap"):
        assert paired_test(a + 0.1, a + rng.normal(0, 0.01, 200), test) < 0.001
        assert paired_test(a + rng.normal(0, 0.1, 200), a, test) > 0.01


def test_holm_and_bonferroni_corrections():
    from medcolbert.experiment import adjust_pvalues, bootstrap_ci

    p = [0.01, 0.04, 0.03]
    assert adjust_pvalues(p, "bonferroni") == pytest.approx([0.03, 0.12, 0.09])
    # Holm: sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.06 (kept monotone)
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust_pvalues(p, "none") == p
    lo, hi = bootstrap_ci(np.array([0.0, 1.0] * 50))
    assert 0.38 < lo < 0.5 < hi < 0.62


def test_in_domain_follows_the_stages(tmp_path):
    from medcolbert.experiment import _in_domain

    cfg = ExperimentConfig(name="x", datasets=[{"name": "a", "path": "."}], systems=[
        {"name": "bm25", "type": "bm25", "trained_on": []},
        {"name": "tuned", "type": "dense", "trained_on": ["a"]},
        {"name": "rr", "type": "rerank", "first_stage": "bm25", "trained_on": ["b"]},
        {"name": "rr2", "type": "rerank", "first_stage": "tuned", "trained_on": []},
        {"name": "fused", "type": "rrf", "runs": ["bm25", "tuned"]}])
    s = {x["name"]: x for x in cfg.systems}
    assert _in_domain(cfg, s["bm25"], "a") is False and _in_domain(cfg, s["tuned"], "a") is True
    assert _in_domain(cfg, s["rr"], "a") is False and _in_domain(cfg, s["rr"], "b") is True
    assert _in_domain(cfg, s["rr2"], "a") is True and _in_domain(cfg, s["fused"], "a") is True


def test_a_pooled_head_system_never_reuses_an_index_built_without_pooled_vectors(setup, tmp_path):
    """Indexes are cached by the document side's fingerprint, which dense_weight is not part of: a system with
    dense_weight 0 that ran first must not leave the pooled-head system an index it cannot search."""
    root, spec = setup
    hybrid = make_tiny_model(seed=5).reconfigure(dense_weight=0.5).save_pretrained(tmp_path / "hybrid")
    cfg = {**spec, "output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work"), "latency_queries": 0,
           "systems": [{"name": "MaxSim part", "type": "colbert", "model": str(hybrid), "dense_weight": 0.0},
                       {"name": "both halves", "type": "colbert", "model": str(hybrid)}]}
    path = tmp_path / "pooled.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = run_experiment(ExperimentConfig.from_yaml(path), log=lambda _: None)["datasets"]["tiny"]["systems"]
    assert set(rows) == {"MaxSim part", "both halves"}
    folders = sorted(p.name for p in (tmp_path / "work").glob("plaid-*"))
    assert len(folders) == 2 and folders[1] == folders[0] + "-pooled"
    # The two systems rank differently: the second one really scores with the pooled head.
    runs = [(tmp_path / "out" / "runs" / f"tiny.{n}.trec").read_text() for n in ("MaxSim-part", "both-halves")]
    assert runs[0] != runs[1]
