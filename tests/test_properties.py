"""Property-based tests of every public entry point: a clean error or a correct answer, never a traceback, a 5xx
or a silent wrong answer. Inputs: unicode texts of every category, numbers at and past each limit."""

from __future__ import annotations

import os

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcolbert.cli import main
from medcolbert.errors import DataError, MedColbertError
from medcolbert.experiment import ExperimentConfig
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
from medcolbert.search.rerank import rerank
from medcolbert.service import Limits, create_app
from medcolbert.validation import is_blank
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus

EXAMPLES = int(os.environ.get("MEDCOLBERT_PROPERTY_EXAMPLES", "30"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Texts from every Unicode category (surrogates included: the JSON and Python layers must refuse them cleanly).
TEXT = st.text(st.characters(), max_size=40) | st.sampled_from(["\u200b", "\x00\x01", "\ufeff", "\u00ad", "\ufe0f", "\t"])
K = st.integers(min_value=-2, max_value=1_100) | st.sampled_from([0, 1, 1_000, 1_001])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("props")
    model = make_tiny_model(seed=11)
    checkpoint = model.save_pretrained(root / "ckpt")
    corpus = make_corpus(30, seed=6)
    index = Index.build(root / "index", model, corpus, show_progress=False)
    app = create_app(root / "index", str(checkpoint), api_key=None, limits=Limits(max_candidates=20, max_k=1_000),
                     load_in_background=False)
    with TestClient(app) as client:
        yield {"root": root, "model": model, "corpus": corpus, "index": index, "client": client,
               "checkpoint": checkpoint, "searcher": Searcher(index, model)}


def _post(client, path: str, body: dict):  # type: ignore[no-untyped-def]
    """POST a JSON body as a client would send it: ASCII JSON, so lone surrogates travel as \\ud800 escapes."""
    import json

    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def _ranked(scores: list[float]) -> bool:
    return all(a >= b for a, b in zip(scores, scores[1:]))


@SETTINGS
@given(query=TEXT, k=K)
def test_service_search(world, query, k):
    r = _post(world["client"], "/search", {"query": query, "k": k})
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        hits = r.json()["results"]
        assert not is_blank(query) and 1 <= k <= 1_000
        assert len(hits) == min(k, len(world["corpus"])) and {h["id"] for h in hits} <= set(world["corpus"])
        assert _ranked([h["score"] for h in hits])
    else:
        assert r.json().get("detail"), r.text
        assert is_blank(query) or not 1 <= k <= 1_000 or any(0xD800 <= ord(c) <= 0xDFFF for c in query) \
            or len(query) > 2_000, (query, k, r.text)


@SETTINGS
@given(query=TEXT, candidates=st.lists(TEXT, max_size=22), k=st.none() | K)
def test_service_rerank(world, query, candidates, k):
    body = {"query": query, "candidates": candidates} | ({} if k is None else {"k": k})
    r = _post(world["client"], "/rerank", body)
    assert r.status_code < 500, r.text
    surrogate = any(0xD800 <= ord(c) <= 0xDFFF for t in [query, *candidates] for c in t)
    valid = (not is_blank(query) and candidates and all(not is_blank(c) for c in candidates)
             and len(candidates) <= 20 and (k is None or 1 <= k <= 1_000) and not surrogate)
    assert (r.status_code == 200) == bool(valid), (body, r.text)
    if r.status_code == 200:
        results = r.json()["results"]
        assert len(results) == min(k or len(candidates), len(candidates))
        assert len({x["index"] for x in results}) == len(results) <= len(candidates)
        assert _ranked([x["score"] for x in results])


@SETTINGS
@given(query=TEXT, candidates=st.lists(TEXT, min_size=1, max_size=6), k=st.none() | st.integers(-1, 8))
def test_python_rerank(world, query, candidates, k):
    try:
        out = rerank(world["model"], query, candidates, k=k)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        assert is_blank(query) or any(is_blank(c) for c in candidates) or (k is not None and k < 1) \
            or any(0xD800 <= ord(ch) <= 0xDFFF for t in [query, *candidates] for ch in t), (query, candidates, k)
        return
    assert not is_blank(query) and all(not is_blank(c) for c in candidates)
    assert len(out) == min(k or len(candidates), len(candidates))
    assert sorted(i for i, _ in out) == sorted(set(i for i, _ in out)) and _ranked([s for _, s in out])


@SETTINGS
@given(query=TEXT, k=K, ncells=st.none() | st.integers(-1, 5), threshold=st.none() | st.floats(-2, 2))
def test_python_search(world, query, k, ncells, threshold):
    knobs = {key: v for key, v in (("ncells", ncells), ("centroid_score_threshold", threshold)) if v is not None}
    try:
        hits = world["searcher"].search(query, k=k, **knobs)
    except (ValueError, MedColbertError) as exc:
        assert str(exc)
        assert (is_blank(query) or k < 1 or (ncells is not None and ncells < 1)
                or (threshold is not None and not -1 <= threshold <= 1) or k > 100_000
                or any(0xD800 <= ord(c) <= 0xDFFF for c in query)), (query, k, knobs, exc)
        return
    assert len(hits) == min(k, len(world["corpus"])) and _ranked([s for _, s in hits])


OPTION_VALUES = st.one_of(st.integers(-3, 200_000).map(str), st.floats(allow_nan=True).map(str),
                          st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))


@SETTINGS
@given(option=st.sampled_from(["--k", "--ncells", "--threshold", "--ndocs", "--preset"]), value=OPTION_VALUES,
       query=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20))
def test_cli_search(world, capsys, option, value, query):
    if query.startswith("-"):
        query = "q" + query
    try:
        code = main(["search", "--index", str(world["root"] / "index"), "--model", str(world["checkpoint"]),
                     "--query", query, f"{option}={value}"])
    except SystemExit as exc:   # argparse: its usage line, then one line naming the option and its range
        code = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("medcolbert search: error: argument"), err
        return
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), (option, value, err)
    if code == 2:
        assert err and len(err.splitlines()) == 1, err
    else:
        assert not is_blank(query)


EXPERIMENT_KEYS = ["latency_queries", "tolerance", "alpha", "metrics", "test", "correction", "precision", "baseline",
                   "datasets.max_queries", "datasets.split", "datasets.bogus", "systems.k", "systems.depth",
                   "systems.dense_weight", "systems.nbits", "systems.trained_on", "systems.datasets"]
YAML_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False),
                        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10),
                        st.lists(st.text(max_size=5), max_size=3))


@SETTINGS
@given(key=st.sampled_from(EXPERIMENT_KEYS), value=YAML_VALUES)
def test_experiment_files(tmp_path_factory, key, value):
    spec = {"name": "p", "datasets": [{"name": "d", "path": "x", "split": "test"}], "metrics": ["ndcg@10"],
            "systems": [{"name": "b", "type": "bm25"}, {"name": "r", "type": "rerank", "first_stage": "b"}]}
    where, _, field = key.partition(".")
    if field:
        spec[where][-1 if where == "systems" else 0][field] = value
    else:
        spec[where] = value
    path = tmp_path_factory.mktemp("e") / "e.yaml"
    path.write_text(yaml.safe_dump(spec))
    try:
        cfg = ExperimentConfig.from_yaml(path)
    except DataError as exc:
        assert "e.yaml" in str(exc) and "\n" not in str(exc)
        return
    # Accepted: the value is one the run can use as it is.
    got = getattr(cfg, where) if not field else getattr(cfg, where)[-1 if where == "systems" else 0][field]
    assert got == value


@settings(max_examples=max(10, EXAMPLES // 4), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.dictionaries(st.text(st.characters(), min_size=0, max_size=6), TEXT, min_size=1, max_size=6))
def test_index_build(world, tmp_path_factory, docs):
    path = tmp_path_factory.mktemp("b") / "idx"
    try:
        index = Index.build(path, world["model"], docs, show_progress=False, num_centroids=4)
    except (ValueError, MedColbertError) as exc:
        assert str(exc) and not path.exists()
        return
    assert sorted(index.doc_ids) == sorted(docs) and all(not is_blank(t) for t in docs.values())
