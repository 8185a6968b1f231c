"""Filtered search: the where syntax, the per-field columns in the index folder, pre-filtered PLAID against exact
MaxSim over the matching subset, and every interface that takes a filter."""

import json
import random

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcolbert.indexing.encoded import EncodedDocuments
from medcolbert.filters import FilterError, parse_where
from medcolbert.indexing.index import Index
from medcolbert.scoring import maxsim_one
from medcolbert.search.plaid import SearchConfig, Searcher
from tests.conftest import make_tiny_model
from tests.test_index import WORDS

SOURCES = ("medlineplus", "ghr", "cdc", "nih senior health")


def filtered_corpus(n: int, seed: int = 0) -> dict[str, dict]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        meta = {"source": SOURCES[i % len(SOURCES)], "year": 1990 + rng.randint(0, 30),
                "date": f"20{rng.randint(10, 23)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "patient": f"p{i % 7}"}
        if i % 11 == 0:
            del meta["year"]   # documents without a field never match a condition on it
        out[f"d{i}"] = {"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))), "metadata": meta}
    return out


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=5)


@pytest.fixture(scope="module")
def corpus():
    return filtered_corpus(300)


@pytest.fixture(scope="module")
def index(tmp_path_factory, model, corpus):
    return Index.build(tmp_path_factory.mktemp("flt") / "idx", model, corpus, nbits=2, show_progress=False)


def expected_ids(corpus: dict, index: Index, cond) -> set[str]:  # type: ignore[no-untyped-def]
    """The live documents whose metadata pass cond (a plain reference over the corpus)."""
    return {d for d, v in corpus.items() if d in index.position and cond(d, v["metadata"])}


CASES = [
    ("source = ghr", lambda d, m: m["source"] == "ghr"),
    ('source in {ghr, "nih senior health"}', lambda d, m: m["source"] in ("ghr", "nih senior health")),
    ("year >= 2015 and year < 2018", lambda d, m: "year" in m and 2015 <= m["year"] < 2018),
    ("date >= 2020-01-01 and source = cdc", lambda d, m: m["date"] >= "2020-01-01" and m["source"] == "cdc"),
    ("id in {d1, d2, d299, nope}", lambda d, m: d in ("d1", "d2", "d299")),
    ({"patient": "p3", "year": {"$lte": 2000}}, lambda d, m: m["patient"] == "p3" and "year" in m and m["year"] <= 2000),
    ({"source": ["cdc", "ghr"], "id": ["d2", "d3", "d6", "d7"]}, lambda d, m: d in ("d2", "d3", "d6", "d7")
     and m["source"] in ("cdc", "ghr")),
]


@pytest.mark.parametrize("where,cond", CASES)
def test_matching_equals_a_plain_scan_of_the_metadata(index, corpus, where, cond):
    mask = index.matching(where)
    assert {index.doc_ids[i] for i in np.flatnonzero(mask)} == expected_ids(corpus, index, cond)


def test_columns_are_written_with_the_segment_and_kept_by_updates_deletes_and_compaction(tmp_path, model, corpus):
    idx = Index.build(tmp_path / "i", model, dict(list(corpus.items())[:60]), nbits=2, show_progress=False)
    fields = idx.manifest["segments"][0]["fields"]
    assert {f: s["kind"] for f, s in fields.items()} == {"source": "text", "year": "integer", "date": "date",
                                                         "patient": "text"}
    for spec in fields.values():
        for part in spec["parts"]:
            assert f"segments/00000/{spec['file']}.{part}.npy" in idx.manifest["files"]
    idx.add(EncodedDocuments.encode(model, {"n1": "statin muscle pain", "n2": "asthma steroid"},
                                    {"n1": {"source": "ghr", "year": 2031}, "n2": {"source": "new site"}}, index=idx))
    idx.delete(["d1", "d5"])
    again = Index.open(tmp_path / "i")
    ghr = {again.doc_ids[i] for i in np.flatnonzero(again.matching("source = ghr"))}
    assert "n1" in ghr and "d1" not in ghr and ghr == {d for d, v in corpus.items() if d in again.position
                                                      and v["metadata"]["source"] == "ghr"} | {"n1"}
    assert [again.doc_ids[i] for i in np.flatnonzero(again.matching("year > 2030"))] == ["n1"]
    assert [again.doc_ids[i] for i in np.flatnonzero(again.matching("source = 'new site'"))] == ["n2"]
    again.compact()
    compacted = Index.open(tmp_path / "i")
    assert {compacted.doc_ids[i] for i in np.flatnonzero(compacted.matching("source = ghr"))} == ghr


@pytest.mark.parametrize("where,message", [
    ("colour = red", "unknown metadata field 'colour'"),
    ("source > ghr", "holds text: compare it with = or in"),
    ("year >= recent", "'recent' is not a number (field 'year' holds numbers)"),
    ("date < yesterday", "not a date YYYY-MM-DD"),
    ("source = ghr or year = 2000", "'or' is not supported"),
    ("source in ghr", "'in' takes a set of values in braces"),
    ("year >=", "a value is missing"),
    ("id >= d3", "document ids are compared with = or in"),
    ({"year": {"$near": 3}}, "unknown operator '$near'"),
    ({"source": []}, "non-empty list"),
    (42, "a filter is an expression string or a mapping"),
])
def test_bad_filters_get_one_line_naming_the_problem(index, where, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")) as err:
        index.matching(where)
    assert "\n" not in str(err.value)


def exact_subset(model, index: Index, query: str, mask: np.ndarray, k: int) -> list[str]:  # type: ignore[no-untyped-def]
    """The reference: MaxSim of the query with every matching document's stored vectors, top k."""
    q = model.encode_queries([query])[0]
    q = q[q.abs().sum(-1) > 0]
    docs = np.flatnonzero(mask)
    scores = maxsim_one(q, index.document_vectors(docs))
    order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
    return [index.doc_ids[docs[i]] for i in order]


@pytest.mark.parametrize("share", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("via", ["plaid", "subset"])
def test_filtered_search_equals_exact_maxsim_over_the_subset(index, model, share, via):
    rng = np.random.default_rng(int(share * 1000))
    searcher = Searcher(index, model)
    # "subset": the filter is small enough to score exactly; "plaid": PLAID's stages restricted to the filter.
    searcher.FILTER_EXACT_VECTORS = 10**9 if via == "subset" else 0
    for trial in range(3):
        ids = [d for d in index.doc_ids if rng.random() < share] or [index.doc_ids[0]]
        where = {"id": ids}
        mask = index.matching(where)
        for query in ("statin muscle pain", "insulin diabetes kidney"):
            k = 10
            hits = [d for d, _ in searcher.search(query, k=k, where=where)]
            assert set(hits) <= set(ids)
            assert len(hits) == min(k, len(ids))   # k hits whenever k documents match
            want = exact_subset(model, index, query, mask, k)
            # Same documents as exact MaxSim over the subset (PLAID's usual tolerance: one swap at the cut).
            assert len(set(hits) & set(want)) >= len(want) - 1, (share, via, query)
            assert hits[0] == want[0]


def test_filters_reach_the_hybrid_search(tmp_path, corpus):
    # A model with a pooled head: its pooled side's nearest documents must obey the filter too.
    m = make_tiny_model(seed=8).reconfigure(dense_weight=0.5)
    idx = Index.build(tmp_path / "h", m, corpus, nbits=2, show_progress=False)
    s = Searcher(idx, m)
    assert s.hybrid
    for where, field, value in [("source = cdc", "source", "cdc"), ({"patient": "p1"}, "patient", "p1")]:
        hits = s.search("statin", k=10, where=where)
        assert len(hits) == 10 and all(corpus[d]["metadata"][field] == value for d, _ in hits)


def test_exact_search_and_search_all_take_the_filter(index, model, corpus):
    s = Searcher(index, model)
    run = s.search_all({"a": "statin muscle pain", "b": "asthma"}, k=5, where="patient = p2")
    assert all(corpus[d]["metadata"]["patient"] == "p2" for hits in run.values() for d in hits)
    exact = s.search("statin muscle pain", k=5, where="patient = p2", exact=True)
    assert [d for d, _ in exact] == list(run["a"])[:5] or len(set(d for d, _ in exact) & set(run["a"])) >= 4
    assert s.search("statin", k=5, where="id in {nope}") == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_random_filters_and_updates(tmp_path_factory, model, data):
    corpus = filtered_corpus(80, seed=data.draw(st.integers(0, 3)))
    path = tmp_path_factory.mktemp("prop") / "i"
    idx = Index.build(path, model, corpus, nbits=2, show_progress=False)
    live = dict(corpus)
    for step in range(data.draw(st.integers(0, 2))):
        gone = data.draw(st.lists(st.sampled_from(sorted(live)), max_size=5, unique=True))
        idx.delete(gone)
        for d in gone:
            live.pop(d)
        new = {f"n{step}-{j}": {"text": " ".join(WORDS[j:j + 6]),
                                "metadata": {"source": data.draw(st.sampled_from(SOURCES)), "year": 2000 + j}}
               for j in range(data.draw(st.integers(0, 3)))}
        if new:
            idx.add(EncodedDocuments.encode(model, {d: v["text"] for d, v in new.items()},
                                            {d: v["metadata"] for d, v in new.items()}, index=idx))
            live.update(new)
    source = data.draw(st.sampled_from(SOURCES))
    year = data.draw(st.integers(1985, 2025))
    where = f'source = "{source}" and year >= {year}'
    want = {d for d, v in live.items() if v["metadata"]["source"] == source and v["metadata"].get("year", -1) >= year}
    reopened = Index.open(path)
    assert {reopened.doc_ids[i] for i in np.flatnonzero(reopened.matching(where))} == want
    hits = Searcher(reopened, model).search("statin muscle pain asthma", k=5, where=where)
    assert {d for d, _ in hits} <= want and len(hits) == min(5, len(want))


def test_cli_service_pyterrier_and_langchain_take_a_filter(tmp_path, model, corpus, capsys):
    from medcolbert.cli import main
    from medcolbert.service import Limits, create_app

    ckpt = model.save_pretrained(tmp_path / "ckpt")
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"_id": d, "text": v["text"], **v["metadata"]}) + "\n" for d, v in corpus.items()))
    assert main(["index", "--data", str(data), "--index", str(tmp_path / "i"), "--model", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "i"), "--query", "statin", "--k", "3", "--where",
                 "source = ghr and year >= 2000", "--json", "-"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and all(h["metadata"]["source"] == "ghr" and h["metadata"]["year"] >= 2000 for h in hits)
    assert main(["search", "--index", str(tmp_path / "i"), "--query", "statin", "--where", "colour = red"]) == 2
    err = capsys.readouterr().err
    assert "unknown metadata field 'colour'" in err and "Traceback" not in err

    app = create_app(tmp_path / "i", str(ckpt), api_key=None, limits=Limits(), load_in_background=False)
    with TestClient(app) as client:
        r = client.post("/search", json={"query": "statin", "k": 4, "where": {"source": ["cdc"]}, "return_documents": True})
        assert r.status_code == 200 and all(h["metadata"]["source"] == "cdc" for h in r.json()["results"])
        r = client.post("/search", json={"query": "statin", "where": "year >= soon"})
        assert r.status_code == 422 and "is not a number" in r.json()["detail"]
        ids = ["d0", "d1", "d2", "d3", "d4", "d5"]
        r = client.post("/rerank", json={"query": "statin", "ids": ids, "where": "source = ghr"})
        assert r.status_code == 200 and {h["id"] for h in r.json()["results"]} == \
            {d for d in ids if corpus[d]["metadata"]["source"] == "ghr"}
        r = client.post("/rerank", json={"query": "statin", "candidates": ["a text"], "where": "source = ghr"})
        assert r.status_code == 422 and "give their 'ids'" in r.json()["detail"]

    pytest.importorskip("pyterrier")
    import pandas as pd

    from medcolbert.pyterrier import ColBERTRetrieve

    frame = ColBERTRetrieve(tmp_path / "i", k=5, where="patient = p4").transform(
        pd.DataFrame({"qid": ["1"], "query": ["statin muscle pain"]}))
    assert len(frame) == 5 and all(corpus[d]["metadata"]["patient"] == "p4" for d in frame["docno"])

    pytest.importorskip("langchain_core")
    from medcolbert.langchain import MedColbertRetriever

    retriever = MedColbertRetriever.from_index(tmp_path / "i", k=4, filter={"source": "cdc"})
    docs = retriever.invoke("statin muscle pain")
    assert len(docs) == 4 and all(corpus[d.id]["metadata"]["source"] == "cdc" for d in docs)
    docs = retriever.invoke("statin muscle pain", filter="source = ghr")
    assert all(corpus[d.id]["metadata"]["source"] == "ghr" for d in docs)
