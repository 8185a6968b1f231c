import json
import subprocess
import sys

import pytest

from medcolbert.cli import main
from medcolbert.evaluation.datasets import read_run
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return make_tiny_model(seed=7).save_pretrained(tmp_path_factory.mktemp("models") / "tiny-colbert")


def test_help_explains_every_command():
    out = subprocess.run([sys.executable, "-m", "medcolbert", "--help"], capture_output=True, text=True, check=True)
    for command in ("bm25", "rerank", "evaluate", "index", "search", "update", "mine", "make-mix", "train",
                    "experiment", "serve", "info"):
        assert command in out.stdout
    for command, phrase in [("bm25", "BM25"), ("rerank", "--first-stage"), ("evaluate", "--qrels"),
                            ("mine", "--window"), ("train", "--config"), ("experiment", "drifts"),
                            ("serve", "--api-key-file")]:
        sub = subprocess.run([sys.executable, "-m", "medcolbert", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and phrase in sub.stdout


def test_info_says_which_search_engine_runs(monkeypatch, capsys):
    from medcolbert.cli import main
    from medcolbert.search import cpu_kernel

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "default model" in out
    if cpu_kernel.load() is not None:
        assert cpu_kernel.load().path in out
    monkeypatch.setenv("MEDCOLBERT_PLAID_KERNEL", "torch")
    assert main(["info"]) == 0
    assert "search runs the torch engine" in capsys.readouterr().out


def test_bm25_command_prints_metrics_and_writes_run(tiny_beir, tmp_path, capsys):
    assert main(["bm25", "--data", str(tiny_beir), "--k", "3", "--output", str(tmp_path / "bm25.trec"),
                 "--json", str(tmp_path / "bm25.json")]) == 0
    out = capsys.readouterr().out
    assert "BM25" in out and "ndcg@10" in out
    assert set(read_run(tmp_path / "bm25.trec")) == {"q1", "q2", "q3", "q4"}
    assert json.loads((tmp_path / "bm25.json").read_text())["results"]["BM25"]["mrr@10"] == 1.0


def test_rerank_command_compares_first_stage_and_rerank(tiny_beir, tiny_checkpoint, tmp_path, capsys):
    args = ["rerank", "--data", str(tiny_beir), "--first-stage", "bm25", "--depth", "5", "--model",
            str(tiny_checkpoint), "--output", str(tmp_path / "rr.trec"), "--json", str(tmp_path / "rr.json"),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[3:]]
    assert rows == ["BM25", "BM25"] and "ColBERT rerank (top 5)" in out
    reranked = read_run(tmp_path / "rr.trec")
    assert set(reranked) == {"q1", "q2", "q3", "q4"} and all(len(h) <= 5 for h in reranked.values())
    record = json.loads((tmp_path / "rr.json").read_text())
    assert record["documents_encoded"] > 0
    # Second run: every vector comes from the cache.
    assert main(args) == 0
    assert json.loads((tmp_path / "rr.json").read_text())["documents_encoded"] == 0
    # Rerank an existing run file, then evaluate both runs side by side.
    assert main(["bm25", "--data", str(tiny_beir), "--k", "4", "--output", str(tmp_path / "b.trec")]) == 0
    assert main(["rerank", "--data", str(tiny_beir), "--run", str(tmp_path / "b.trec"), "--model",
                 str(tiny_checkpoint), "--no-cache", "--output", str(tmp_path / "rr2.trec")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "b.trec"), str(tmp_path / "rr2.trec"), "--data", str(tiny_beir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[2:]] == ["b.trec", "rr2.trec"]


def test_bad_input_is_one_line_naming_the_problem(tiny_beir, tmp_path, capsys):
    (tiny_beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "fine"}\n{"_id": "d2"}\n')
    assert main(["bm25", "--data", str(tiny_beir)]) == 2
    err = capsys.readouterr().err
    assert "corpus.jsonl:2: missing field 'text'" in err and "Traceback" not in err
    run = tmp_path / "r.trec"
    run.write_text("q1 Q0 d1 1 x t\n")
    assert main(["evaluate", str(run), "--qrels", str(tiny_beir / "qrels" / "test.tsv")]) == 2
    assert "r.trec:1: score 'x' is not a number" in capsys.readouterr().err
    assert main(["bm25", "--data", str(tiny_beir), "--metrics", "ndcg@10,foo@5"]) == 2
    assert "unknown metric 'foo@5'" in capsys.readouterr().err
    assert main(["rerank", "--data", str(tiny_beir), "--model", str(tmp_path / "no-model")]) == 2
