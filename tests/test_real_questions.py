"""Issue 29's pieces: frozen-backbone training, MeQSum pairs, joined splits, stored runs, cosine reranking, the panel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medcolbert.errors import DataError
from medcolbert.evaluation.datasets import load_beir
from medcolbert.evaluation.panel import PanelRule, judge, load_panel, panel_markdown
from medcolbert.training.trainer import Trainer
from tests.conftest import SHARED_DATA, write_beir
from tests.test_training import config, tiny_checkpoint  # noqa: F401  (the module-scoped fixture)


def test_train_layers_zero_trains_only_the_projection(tmp_path, tiny_checkpoint):  # noqa: F811
    trainer = Trainer(config(tmp_path, tiny_checkpoint, train_layers=0, max_steps=3), show_progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained == {"linear.weight"}
    for _ in range(3):
        trainer.train_step()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"linear.weight"}
    # The frozen backbone runs as at inference (no dropout) during training steps.
    backbone = trainer.model.backbone
    dropouts = [m for part in (backbone.embeddings, backbone.encoder) for m in part.modules()
                if isinstance(m, torch.nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts)


def test_train_layers_one_trains_the_top_layer_and_the_l2_pull_holds_it_near_its_start(tmp_path, tiny_checkpoint):  # noqa: F811
    def drift(l2: float) -> float:
        trainer = Trainer(config(tmp_path / str(l2), tiny_checkpoint, train_layers=1, l2_to_start=l2, max_steps=6,
                                 lr=1e-2), show_progress=False)
        trained = {n.split(".layer.")[1].split(".")[0] for n, p in trainer.model.named_parameters()
                   if p.requires_grad and ".layer." in n}
        assert trained == {"1"}   # the tiny backbone has layers 0 and 1
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad and ".layer." in n}
        for _ in range(6):
            trainer.train_step()
        params = dict(trainer.model.named_parameters())
        return float(sum(((params[n].detach() - w) ** 2).sum() for n, w in start.items()))

    assert drift(100.0) < drift(0.0)


def test_train_layers_is_validated(tmp_path, tiny_checkpoint):  # noqa: F811
    with pytest.raises(ValueError, match="train_layers"):
        config(tmp_path, tiny_checkpoint, train_layers=-1)
    from medcolbert.errors import MedColbertError

    with pytest.raises(MedColbertError, match="more than the backbone's 2 layers"):
        Trainer(config(tmp_path, tiny_checkpoint, train_layers=3), show_progress=False)


@pytest.mark.skipif(not (SHARED_DATA / "meqsum").is_dir(), reason="needs ../shared/data")
def test_meqsum_pairs_join_the_mix_without_copies_of_evaluation_questions(tmp_path):
    from medcolbert.training.mining import _words
    from medcolbert.training.mix import build_medical_mix, held_out, meqsum_triplets, near_copy

    pairs = meqsum_triplets(SHARED_DATA / "meqsum" / "questions.jsonl")
    assert len(pairs) == 867 and all(len(t.pos) == 1 and len(t.pos[0]) < len(t.query) for t in pairs[:50])
    mix, report = build_medical_mix(SHARED_DATA, None, n_negatives=2, meqsum=True, show_progress=False)
    meq = [t for t in mix if t.meta["source"] == "meqsum"]
    assert 0 < len(meq) < 867 and report["dropped"]["meqsum (near-copy of an evaluation question)"] == 867 - len(meq)
    held = [_words(q) for q in held_out(SHARED_DATA)["queries"]]
    mediqa = [json.loads(line)["text"] for line in (SHARED_DATA / "mediqa-qa" / "queries.jsonl").open()]
    assert all(_words(q) in held or near_copy(q, held) for q in mediqa)   # the panel's questions are held out
    assert not any(near_copy(text, held) for t in meq for text in (t.query, *t.pos))
    assert all(t.neg and t.pos[0] not in t.neg for t in meq)


def test_joined_splits_pool_their_judgments_and_refuse_a_query_judged_twice(tmp_path):
    folder = write_beir(tmp_path / "d", qrels={"q1": {"d1": 1}, "q2": {"d3": 1}}, split="a")
    write_beir(folder, qrels={"q3": {"d4": 2}}, split="b")
    data = load_beir(folder, "a+b")
    assert set(data.qrels) == {"q1", "q2", "q3"} and data.qrels["q3"] == {"d4": 2}
    with pytest.raises(DataError, match="split 'c'"):
        load_beir(folder, "a+c")
    write_beir(folder, qrels={"q1": {"d2": 1}}, split="c")
    with pytest.raises(DataError, match="more than one"):
        load_beir(folder, "a+c")


def test_stored_first_stage_reranked_by_cosine_and_maxsim(tmp_path):
    from medcolbert.experiment import ExperimentConfig, run_experiment
    from tests.conftest import make_tiny_model

    folder = write_beir(tmp_path / "d", qrels={"q1": {"d1": 1}, "q2": {"d3": 1}}, split="a")
    write_beir(folder, qrels={"q3": {"d4": 1}, "q4": {"d2": 1}}, split="b")
    for split, rows in (("a", [("q1", "d2"), ("q1", "d1"), ("q2", "d3"), ("q2", "d5")]),
                        ("b", [("q3", "d6"), ("q3", "d4"), ("q4", "d2"), ("q4", "d1")])):
        (folder / f"first-{split}.trec").write_text(
            "".join(f"{q} Q0 {d} {i + 1} {10 - i} cand\n" for i, (q, d) in enumerate(rows)))
    colbert = make_tiny_model(seed=2).save_pretrained(tmp_path / "colbert")
    spec = {"name": "stored", "datasets": [{"name": "d", "path": str(folder), "split": "a+b"}],
            "systems": [{"name": "cand", "type": "run", "path": str(folder / "first-{split}.trec")},
                        {"name": "cos", "type": "rerank", "kind": "dense", "first_stage": "cand",
                         "model": "packaged:all-MiniLM-L6-v2", "doc_maxlen": 64},
                        {"name": "maxsim", "type": "rerank", "first_stage": "cand", "model": str(colbert)}],
            "latency_queries": 2, "output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work")}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(spec))
    results = run_experiment(ExperimentConfig.from_yaml(path), log=lambda _: None)
    rows = results["datasets"]["d"]["systems"]
    runs = {name: (tmp_path / "out" / "runs" / f"d.{name}.trec").read_text().split("\n") for name in rows}
    # Every reranking keeps exactly the stored candidates of each query.
    for name in ("cos", "maxsim"):
        got = {(line.split()[0], line.split()[2]) for line in runs[name] if line}
        assert got == {(line.split()[0], line.split()[2]) for line in runs["cand"] if line}
    # The base model puts each query's answer first (the queries are paraphrases of their documents).
    assert rows["cos"]["ndcg@10"] == 1.0 and rows["cand"]["ndcg@10"] < 1.0
    assert rows["cand"]["p50_ms"] is None and rows["cos"]["p50_ms"] is None


def _write_set(folder: Path, name: str, scores: dict[str, dict[str, float]]) -> None:
    (folder / "perquery").mkdir(parents=True, exist_ok=True)
    systems = {}
    for system, per in scores.items():
        slug = system.replace(" ", "-")
        (folder / "perquery" / f"{name}.{slug}.json").write_text(json.dumps({"ndcg@10": per}))
        systems[system] = {"ndcg@10": float(np.mean(list(per.values()))), "ci95": {"ndcg@10": [0.0, 1.0]}}
    results = json.loads((folder / "results.json").read_text()) if (folder / "results.json").is_file() else {"datasets": {}}
    results["datasets"][name] = {"queries": len(next(iter(scores.values()))), "documents": 10, "systems": systems}
    (folder / "results.json").write_text(json.dumps(results))


def test_panel_rule_needs_a_mean_gain_a_small_p_no_loss_and_the_floors(tmp_path):
    rng = np.random.default_rng(0)
    rule = PanelRule(decision_sets=("a", "b"), no_loss_sets=("a", "b", "c"), floors={"f": 0.7})
    for name in ("a", "b", "c"):
        base = {f"q{i}": float(rng.uniform(0.3, 0.7)) for i in range(40)}
        _write_set(tmp_path / "x", name, {
            "base": base,
            "good": {q: v + 0.05 + float(rng.normal(0, 0.02)) for q, v in base.items()},
            # as good on the decision sets but below the base on the reported set c
            "loses c": {q: v + (0.05 if name != "c" else -0.03) for q, v in base.items()},
            "noise": {q: v + float(rng.normal(0, 0.2)) for q, v in base.items()}})
    _write_set(tmp_path / "x", "f", {"base": {"q": 0.6}, "good": {"q": 0.75}, "loses c": {"q": 0.75}, "noise": {"q": 0.6}})
    sets = load_panel([tmp_path / "x"])
    verdicts = {s: judge(sets, s, "base", rule) for s in ("good", "loses c", "noise")}
    assert verdicts["good"]["passes"] and verdicts["good"]["mean_gain"] == pytest.approx(0.05, abs=0.01)
    assert verdicts["good"]["questions"] == 80 and verdicts["good"]["p"] < 1e-6
    assert not verdicts["loses c"]["passes"] and verdicts["loses c"]["below_base_on"] == ["c"]
    assert not verdicts["noise"]["passes"]   # no gain of 0.02 with p < 0.05 from noise, and floor f missed
    assert verdicts["noise"]["floors"]["f"] == (0.6, False)
    text, summary = panel_markdown(sets, "base", "good", rule, shortcut=("c",))
    assert "## c (SHORTCUT" in text and "| good | +0.05" in text.replace("+0.04", "+0.05")
    assert summary["sets"]["a"]["noise"]["vs_reference"]["delta"] < 0
