"""The third probe's command-line findings, each with the case that showed it."""

from __future__ import annotations

import json

import pytest
import yaml

from medcolbert.cli import main
from medcolbert.errors import MedColbertError
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
    assert key in message and "e.yaml:" in message, message
    assert message.split("e.yaml:")[1].split(":")[0].isdigit()


def _write_shard(folder, name, vectors, doclens, ids):
    import numpy as np

    np.save(folder / f"{name}.vectors.npy", np.asarray(vectors, dtype=np.float32))
    np.save(folder / f"{name}.doclens.npy", np.asarray(doclens, dtype=np.int64))
    (folder / f"{name}.ids.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder / f"{name}.vectors.npy"


def test_from_vectors_checks_the_dimension_against_the_model(built, tmp_path, capsys):
    import numpy as np

    root, checkpoint, _ = built   # the tiny model makes 16-dim vectors
    shard = _write_shard(tmp_path, "s", np.random.default_rng(0).normal(size=(60, 8)), [20, 20, 20], ["a", "b", "c"])
    assert main(["index", "--from-vectors", str(shard), "--model", str(checkpoint), "--index", str(tmp_path / "i")]) != 0
    err = capsys.readouterr().err.strip()
    assert "8-dim vectors but the model makes 16-dim" in err and "\n" not in err
    assert not (tmp_path / "i").exists() and not (tmp_path / ".i.building").exists()


@pytest.mark.parametrize("bad", ["nan", "zero"])
def test_a_rejected_from_vectors_build_leaves_nothing_behind(tmp_path, bad, capsys):
    import numpy as np

    vectors = np.random.default_rng(1).normal(size=(300, 16))
    vectors[150] = np.nan if bad == "nan" else 0.0
    shard = _write_shard(tmp_path, "s", vectors, [30] * 10, [f"d{i}" for i in range(10)])
    assert main(["index", "--from-vectors", str(shard), "--index", str(tmp_path / "i"), "--num-centroids", "8"]) != 0
    assert ("non-finite" if bad == "nan" else "all-zero") in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.doclens.npy", "s.ids.txt", "s.vectors.npy"]


def test_an_index_from_vectors_without_pooled_vectors_is_searched_by_maxsim_alone(built, tmp_path, capsys):
    import torch

    from medcolbert import ColBERT
    from medcolbert.search.plaid import Searcher
    from medcolbert.search.exact import exact_search

    root, checkpoint, _ = built
    model = ColBERT.from_pretrained(checkpoint, device="cpu")
    corpus = make_corpus(30, seed=5)
    ids = list(corpus)
    docs = model.encode_documents([corpus[d] for d in ids], show_progress=False)
    shard = _write_shard(tmp_path, "s", torch.cat(docs).numpy(), [len(d) for d in docs], ids)
    assert main(["index", "--from-vectors", str(shard), "--model", str(checkpoint), "--index", str(tmp_path / "i"),
                 "--num-centroids", "16"]) == 0
    index = Index.open(tmp_path / "i")
    assert index.maxsim_only and index.pooled is None
    pooled_model = ColBERT.from_pretrained(checkpoint, device="cpu", dense_weight=1.0)   # a model with a pooled head
    with pytest.warns(UserWarning, match="scoring by MaxSim alone"):
        searcher = Searcher(index, pooled_model)
    query = " ".join(corpus[ids[3]].split()[:5])
    got = searcher.search(query, k=5, exact=True)
    q = model.encode_queries([query], show_progress=False)
    want = exact_search(index, q, 5)[0]
    assert [d for d, _ in got] == [d for d, _ in want]
    assert main(["search", "--index", str(tmp_path / "i"), "--model", str(checkpoint), "--query", query, "--k", "3"]) == 0


def test_shards_can_carry_pooled_vectors_for_a_pooled_head_model(built, tmp_path):
    import numpy as np
    import torch

    from medcolbert import ColBERT
    from medcolbert.search.plaid import Searcher

    root, checkpoint, _ = built
    model = ColBERT.from_pretrained(checkpoint, device="cpu", dense_weight=1.0)   # scores with its pooled head
    corpus = make_corpus(30, seed=5)
    ids = list(corpus)
    docs, pooled = model.encode_documents([corpus[d] for d in ids], pooled=True, show_progress=False)
    shard = _write_shard(tmp_path, "s", torch.cat(docs).numpy(), [len(d) for d in docs], ids)
    np.save(tmp_path / "s.pooled.npy", pooled.numpy())
    index = Index.build_from_vectors(tmp_path / "v", [shard], "tiny", model_fingerprint=model.fingerprint(weights_only=True),
                                     pooled_dim=model.hidden_size, num_centroids=16, show_progress=False)
    assert index.pooled is not None and not index.maxsim_only
    from_texts = Index.build(tmp_path / "t", model, corpus, num_centroids=16, show_progress=False)
    for d in ids[:8]:
        query = " ".join(corpus[d].split()[:5])
        got = Searcher(index, model).search(query, k=5, exact=True)
        want = Searcher(from_texts, model).search(query, k=5, exact=True)
        assert [h for h, _ in got] == [h for h, _ in want]
    # Pooled vectors of the wrong width, or on some shards only, are refused with one line.
    np.save(tmp_path / "s.pooled.npy", pooled.numpy()[:, :8])
    with pytest.raises(MedColbertError, match="pooled vectors are"):
        Index.build_from_vectors(tmp_path / "w", [shard], "tiny", pooled_dim=model.hidden_size, num_centroids=16,
                                 show_progress=False)
