"""The third probe's command-line findings, each with the case that showed it."""

from __future__ import annotations

import json

import pytest
import yaml

from medcolbert.cli import main
from medcolbert.experiment import ExperimentConfig
from medcolbert.indexing.index import Index
from tests.conftest import make_tiny_model, write_beir
from tests.test_index import make_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe3")
    model = make_tiny_model(seed=3)
    checkpoint = model.save_pretrained(root / "ckpt")
    corpus = make_corpus(40, seed=2)
    Index.build(root / "index", model, corpus, show_progress=False)
    ids = list(corpus)
    data = write_beir(root / "data", docs={d: ("", corpus[d]) for d in ids},
                      queries={"q1": " ".join(corpus[ids[0]].split()[:4]), "q2": " ".join(corpus[ids[5]].split()[:4])},
                      qrels={"q1": {ids[0]: 1}, "q2": {ids[5]: 1}})
    return root, checkpoint, data


def test_json_dash_prints_one_json_object_on_stdout_and_nothing_else(built, capsys, tmp_path, monkeypatch):
    root, checkpoint, data = built
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--index", str(root / "index"), "--model", str(checkpoint), "--query", "statins", "--k", "3",
                 "--json", "-"]) == 0
    captured = capsys.readouterr()
    hits = json.loads(captured.out)["hits"]
    assert len(hits) == 3 and "  1  " in captured.err
    assert not (tmp_path / "-").exists()
    assert main(["search", "--index", str(root / "index"), "--model", str(checkpoint), "--data", str(data),
                 "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)["results"]) == {"ColBERT PLAID"}
    assert main(["bm25", "--data", str(data), "--json", "-"]) == 0
    assert "BM25" in json.loads(capsys.readouterr().out)["results"]


def test_search_over_an_index_that_holds_no_judged_document_fails(built, tmp_path, capsys):
    root, checkpoint, _ = built
    other = write_beir(tmp_path / "other", qrels={"q1": {"d1": 1}})  # judged ids the index never saw
    assert main(["search", "--index", str(root / "index"), "--model", str(checkpoint), "--data", str(other)]) != 0
    err = capsys.readouterr().err.strip()
    assert "holds none of the documents judged" in err and "\n" not in err


@pytest.mark.parametrize("metrics", ["", ",", "ndcg@10,,map@100", "ndcg@10,ndcg@10", "bogus@3"])
def test_bad_metrics_are_one_line_errors(built, tmp_path, metrics, capsys):
    root, _, data = built
    run = tmp_path / "r.trec"
    run.write_text("q1 Q0 d1 1 1.0 x\n")
    assert main(["evaluate", str(run), "--data", str(data), "--metrics", metrics]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("medcolbert evaluate: error:") and "metric" in err and "\n" not in err


@pytest.mark.parametrize("change, key", [
    ({"datasets": [{"name": "d", "path": "x", "max_querys": 5}]}, "datasets[0].max_querys"),
    ({"latency_queries": "ten"}, "latency_queries"),
    ({"tolerance": "abc"}, "tolerance"),
    ({"systems": [{"name": "b", "type": "bm25", "k": 0}]}, "systems[0].k"),
    ({"systems": [{"name": "b", "type": "bm25", "depth": 5}]}, "systems[0].depth"),
    ({"metrics": []}, "metrics"),
])
def test_experiment_files_are_checked_at_every_level_with_the_line(tmp_path, change, key):
    spec = {"name": "t", "datasets": [{"name": "d", "path": "x"}], "metrics": ["ndcg@10"],
            "systems": [{"name": "b", "type": "bm25"}]}
    spec.update(change)
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(spec, default_flow_style=False, sort_keys=False))
    with pytest.raises(ValueError) as info:
        ExperimentConfig.from_yaml(path)
    message = str(info.value)
    assert key in message and f"e.yaml:" in message, message
    assert message.split("e.yaml:")[1].split(":")[0].isdigit()
