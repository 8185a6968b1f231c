"""A collection as a shard set (issue 43): one codec for every shard, ids routed by a stable hash, searched in one
process or served by Ray actors with replicas, writes routed and acknowledged after commit, faults named."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from medcolbert import ColBERT
from medcolbert.errors import IndexFormatError, MedColbertError
from medcolbert.indexing.builder import codec_checksum
from medcolbert.indexing.index import Index
from medcolbert.indexing.shards import build_set, open_set, read_set, shard_of
from medcolbert.search.plaid import SearchConfig, Searcher
from medcolbert.search.sharded import ShardedSearcher
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("set")
    model = ColBERT.from_pretrained(make_tiny_model(seed=43).save_pretrained(root / "ckpt"), device="cpu")
    corpus = make_corpus(120, seed=43)
    set_path = build_set(root / "set", model, corpus, shards=3, num_centroids=16, show_progress=False)
    return root, model, corpus, set_path


def test_the_hash_is_stable_across_processes():
    ids = [f"doc{i}" for i in range(50)] + ["PMID:12345", "é-ü", ""]
    here = [shard_of(d, 7) for d in ids]
    code = f"from medcolbert.indexing.shards import shard_of; print([shard_of(d, 7) for d in {ids!r}])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", **__import__("os").environ}).stdout.strip()
    assert str(here) == there and len(set(here)) == 7


def test_one_codec_and_routing_make_the_set_equal_one_index(built):
    root, model, corpus, set_path = built
    manifest = read_set(set_path)
    indexes = open_set(set_path)
    assert manifest["count"] == 3 and sum(len(ix) for ix in indexes) == len(corpus)
    assert len({codec_checksum(ix.codec) for ix in indexes}) == 1
    for s, ix in enumerate(indexes):
        assert all(shard_of(d, 3) == s for d in ix.doc_ids)
    # One index over the same documents with the same codec: exact search gives the same ranking and scores.
    one = Index.build(root / "one", model, corpus, codec=indexes[0].codec, show_progress=False)
    sharded = ShardedSearcher.from_set(set_path, model, SearchConfig(exact=True))
    single = Searcher(one, model, SearchConfig(exact=True))
    for d in ("doc3", "doc40", "doc77"):
        a, b = sharded.search(corpus[d], k=10), single.search(corpus[d], k=10)
        assert [x for x, _ in a] == [x for x, _ in b] and np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
    # A rerun with the same settings keeps every shard (nothing is rebuilt).
    stamps = [(set_path / e["name"] / "manifest.json").stat().st_mtime_ns for e in manifest["shards"]]
    build_set(set_path, model, corpus, shards=3, num_centroids=16, show_progress=False, overwrite=True)
    assert stamps == [(set_path / e["name"] / "manifest.json").stat().st_mtime_ns for e in manifest["shards"]]
    sharded.close()


def test_writes_go_to_the_owning_shard_and_bad_sets_are_refused(built, tmp_path):
    import shutil

    root, model, corpus, set_path = built
    copy = tmp_path / "set"
    shutil.copytree(set_path, copy)
    searcher = ShardedSearcher.from_set(copy, model)
    new = {f"new{i}": f"statin therapy muscle pain case {i}" for i in range(6)}
    added = searcher.add(new)
    assert sum(added.values()) == 6
    for d in new:
        assert d in searcher.searchers[shard_of(d, 3)].index.position
    assert searcher.search(new["new2"], k=3)[0][0] in new
    with pytest.raises(MedColbertError, match="already in the set"):
        searcher.add({"new1": "again"})
    with pytest.raises(MedColbertError, match="not in the set"):
        searcher.delete(["new1", "nope"])
    assert sum(searcher.delete(["new1", "doc5"]).values()) == 2
    assert {"new1", "doc5"}.isdisjoint(d for d, _ in searcher.search(new["new1"], k=50))
    searcher.close()
    with pytest.raises(MedColbertError, match="no routing"):
        ShardedSearcher([Index.open(copy / "shard-000")], model).add({"x": "y"})
    # A set whose manifest names a missing shard, or a shard built with another codec, is refused.
    bad = json.loads((copy / "shards.json").read_text())
    bad["shards"][1]["name"] = "shard-009"
    (copy / "shards.json").write_text(json.dumps(bad))
    with pytest.raises(IndexFormatError, match="not an index folder"):
        open_set(copy)
    bad["shards"][1]["name"] = "shard-001"
    bad["codec"] = "0" * 24
    (copy / "shards.json").write_text(json.dumps(bad))
    with pytest.raises(IndexFormatError, match="is not the set's"):
        open_set(copy)


ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    except Exception as exc:  # noqa: BLE001 - any reason Ray cannot start here is a skip, said in one line
        pytest.skip(f"a local Ray cluster cannot start here: {type(exc).__name__}: {exc}")
    yield
    ray.shutdown()


def test_ray_served_shards_answer_as_the_in_process_set(built, cluster):
    from medcolbert.search.ray_shards import RayShardedSearcher

    root, model, corpus, set_path = built
    served = RayShardedSearcher(set_path, model)
    local = ShardedSearcher.from_set(set_path, model)
    for d in ("doc1", "doc60", "doc99"):
        assert served.search(corpus[d], k=10) == local.search(corpus[d], k=10)
        q = model.encode_queries([corpus[d]])
        assert served.search_hits(q[0], 5) == local.search_hits(q[0], 5)
    docs = served.search(corpus["doc7"], k=2, return_documents=True)
    assert docs[0]["id"] == "doc7" and docs[0]["text"] == corpus["doc7"]
    assert [h["documents"] for h in served.health()] == [len(ix) for ix in open_set(set_path)]
    served.close()
    local.close()


def test_writes_are_routed_acknowledged_after_commit_and_repeatable(built, cluster, tmp_path):
    import shutil

    from medcolbert.search.ray_shards import RayShardedSearcher

    root, model, corpus, set_path = built
    copy = tmp_path / "set"
    shutil.copytree(set_path, copy)
    served = RayShardedSearcher(copy, model, replicas=2)
    new = {f"w{i}": f"insulin pump night glucose {i}" for i in range(5)}
    assert served.add(new) == {"added": 5, "present": 0}
    assert served.add(new) == {"added": 0, "present": 5}   # a repeated write adds nothing twice
    # Every replica, including those that did not take the write, sees it at the next search.
    for _ in range(4):
        assert served.search(new["w3"], k=1)[0][0] == "w3"
    assert served.delete(["w3", "absent"]) == {"deleted": 1, "absent": 1}
    for _ in range(4):
        assert "w3" not in [d for d, _ in served.search(new["w3"], k=20)]
    on_disk = open_set(copy)
    assert sum("w0" in ix.position for ix in on_disk) == 1
    served.close()


def test_a_killed_shard_is_answered_by_its_replica_or_named_missing(built, cluster):
    from medcolbert.search.ray_shards import RayShardedSearcher, ShardsUnavailable

    root, model, corpus, set_path = built
    q = model.encode_queries([corpus["doc12"]])[0]
    want = ShardedSearcher.from_set(set_path, model).search_hits(q, 10)
    served = RayShardedSearcher(set_path, model, replicas=2, timeout_s=20)
    ray.kill(served.actors[1][0], no_restart=False)   # Ray restarts it; meanwhile its replica answers
    for _ in range(3):
        assert served.search_hits(q, 10) == want
    served.close()
    # No replica left: the caller chooses between an error naming the shard and a short answer that says so.
    lone = RayShardedSearcher(set_path, model, replicas=1, timeout_s=20)
    ray.kill(lone.actors[2][0], no_restart=True)
    with pytest.raises(ShardsUnavailable, match="shards 2 did not answer"):
        lone.search_hits(q, 10)
    hits, missing = lone.search_hits_partial(q, 10)
    others = ShardedSearcher(open_set(set_path)[:2], model).search_hits(q, 10)   # the answer of shards 0 and 1
    assert missing == [2] and hits == others
    lone.on_missing = "partial"
    assert lone.search_hits(q, 10) == others and lone.last_missing == [2]
    assert not any(h["ok"] for h in lone.health() if h["shard"] == 2)
    lone.close()


def test_a_restarted_actor_reopens_its_shard_from_disk_with_acknowledged_writes(built, cluster, tmp_path):
    import shutil

    from medcolbert.search.ray_shards import RayShardedSearcher

    root, model, corpus, set_path = built
    copy = tmp_path / "set"
    shutil.copytree(set_path, copy)
    served = RayShardedSearcher(copy, model, replicas=1, timeout_s=60)
    acknowledged = []
    for round_ in range(3):
        batch = {f"r{round_}-{i}": f"asthma inhaler steroid dose {round_} {i}" for i in range(3)}
        served.add(batch)
        acknowledged += list(batch)
        owner = shard_of(acknowledged[-1], 3)
        pid = next(h["pid"] for h in served.health() if h["shard"] == owner)
        ray.kill(served.actors[owner][0], no_restart=False)   # killed right after an acknowledged write
        deadline = __import__("time").monotonic() + 60
        # Ray restarts it: a new process that reopened the shard from disk.
        while not any(h["ok"] and h["shard"] == owner and h["pid"] != pid for h in served.health()):
            assert __import__("time").monotonic() < deadline, "the actor did not come back"
    held = {d for ix in open_set(copy) for d in ix.doc_ids}
    assert set(acknowledged) <= held
    hits = served.search("asthma inhaler steroid dose 2 1", k=30)
    assert "r2-1" in [d for d, _ in hits]
    served.close()


def test_filters_and_the_service_front_over_a_set(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medcolbert.shard_service import create_shard_app

    model = ColBERT.from_pretrained(make_tiny_model(seed=44).save_pretrained(tmp_path / "ckpt"), device="cpu")
    texts = make_corpus(60, seed=44)
    # A field only some documents hold ("trial"): a shard without it answers nothing for it, not an error.
    corpus = {d: {"text": t, "metadata": {"part": i % 3, **({"trial": "yes"} if i < 6 else {})}}
              for i, (d, t) in enumerate(texts.items())}
    set_path = build_set(tmp_path / "set", model, corpus, shards=3, num_centroids=8, show_progress=False)
    local = ShardedSearcher.from_set(set_path, model)
    hits = local.search(texts["doc4"], k=10, where="trial = yes")
    assert {d for d, _ in hits} == {f"doc{i}" for i in range(6)}
    with pytest.raises(MedColbertError, match="unknown metadata field"):
        local.search(texts["doc4"], k=10, where="nope = 1")
    client = TestClient(create_shard_app(set_path, api_key="k", load_in_background=False))
    head = {"x-api-key": "k"}
    health = client.get("/health").json()
    assert health["status"] == "ready" and health["documents"] == 60 and len(health["shards"]) == 3
    got = client.post("/search", json={"query": texts["doc7"], "k": 5, "where": "part = 1"}, headers=head).json()
    assert [h["id"] for h in got["results"]] == [d for d, _ in local.search(texts["doc7"], k=5, where="part = 1")]
    assert client.post("/search", json={"query": "x", "k": 5}).status_code == 401
    bad = client.post("/search", json={"query": "x", "where": "part >"}, headers=head)
    assert bad.status_code == 422 and "filter" in bad.json()["detail"]
    assert client.post("/search", json={"query": "x", "mode": "lexical"}, headers=head).status_code == 422
    added = client.post("/documents", json={"documents": {"n1": "statin myopathy"}}, headers=head)
    assert added.status_code == 200 and added.json()["added"] == 1
    assert client.post("/documents", json={"documents": {"n1": "again"}}, headers=head).status_code == 409
    found = client.post("/search", json={"query": "statin myopathy", "k": 61}, headers=head).json()["results"]
    assert "n1" in [h["id"] for h in found]   # committed and visible to the next search
    assert client.post("/documents/delete", json={"ids": ["n1"]}, headers=head).json()["deleted"] == 1
    assert client.post("/documents/delete", json={"ids": ["n1"]}, headers=head).status_code == 404
    text = client.get("/metrics", headers=head).text
    assert 'medcolbert_shard_up{replica="0",shard="2"} 1.0' in text or 'medcolbert_shard_up{shard="2",replica="0"} 1.0' in text
    assert 'medcolbert_shard_documents{shard="0"}' in text


def test_the_service_front_on_ray_names_a_missing_shard(built, cluster):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medcolbert.shard_service import create_shard_app

    root, model, corpus, set_path = built
    app = create_shard_app(set_path, ray=True, load_in_background=False)
    client = TestClient(app)
    assert client.get("/health").json()["status"] == "ready"
    full = client.post("/search", json={"query": corpus["doc8"], "k": 10}).json()
    assert "partial" not in full and len(full["results"]) == 10
    searcher = app.state.service.searcher
    ray.kill(searcher.actors[0][0], no_restart=True)
    failed = client.post("/search", json={"query": corpus["doc8"], "k": 10})
    assert failed.status_code == 503 and "shards 0 did not answer" in failed.json()["detail"]
    app.state.service.allow_partial = True
    partial = client.post("/search", json={"query": corpus["doc8"], "k": 10}).json()
    assert partial["partial"] is True and partial["missing_shards"] == [0]
    assert all(shard_of(h["id"], 3) != 0 for h in partial["results"])
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["missing_shards"] == [0]
    searcher.close()


FRONT = """
import sys, os, ray
from medcolbert import ColBERT
from medcolbert.search.ray_shards import RayShardedSearcher
address, set_path, model_path, ack, prefix = sys.argv[1:6]
ray.init(address=address, log_to_driver=False)
front = RayShardedSearcher(set_path, ColBERT.from_pretrained(model_path, device="cpu"), timeout_s=60)
with open(ack, "a") as out:
    for i in range(1000):
        doc = f"{prefix}-{i}"
        front.add({doc: f"warfarin dose check {prefix} {i}"})
        out.write(doc + "\\n"); out.flush(); os.fsync(out.fileno())   # acknowledged: the shard committed it
"""


def test_no_acknowledged_write_is_lost_when_the_front_is_killed(built, cluster, tmp_path):
    import os
    import shutil
    import signal
    import time

    root, model, corpus, set_path = built
    copy = tmp_path / "set"
    shutil.copytree(set_path, copy)
    script = tmp_path / "front.py"
    script.write_text(FRONT)
    ack = tmp_path / "acked.txt"
    ack.touch()
    address = ray.get_runtime_context().gcs_address
    for attempt in range(2):   # kill -9 of the front in the middle of its writes, twice
        before = len(ack.read_text().split())
        proc = subprocess.Popen([sys.executable, str(script), address, str(copy), str(root / "ckpt"), str(ack),
                                 f"k{attempt}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(ack.read_text().split()) < before + 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the front acknowledged nothing"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    acknowledged = set(ack.read_text().split())
    held = {d for ix in open_set(copy) for d in ix.doc_ids}
    assert len(acknowledged) >= 6 and acknowledged <= held, sorted(acknowledged - held)
    assert Index.open(copy / "shard-000", verify=True)   # every shard still checks out


def test_one_actor_can_hold_several_shards(built, cluster, tmp_path):
    import shutil

    from medcolbert.search.ray_shards import RayShardedSearcher

    root, model, corpus, set_path = built
    copy = tmp_path / "set"
    shutil.copytree(set_path, copy)
    grouped = RayShardedSearcher(copy, model, shards_per_actor=2)   # shards 0-1 on one actor, shard 2 on another
    assert grouped.units == [[0, 1], [2]] and len(grouped.actors) == 2
    local = ShardedSearcher.from_set(copy, model)
    for d in ("doc2", "doc50"):
        assert grouped.search(corpus[d], k=10) == local.search(corpus[d], k=10)
    assert grouped.search(corpus["doc9"], k=2, return_documents=True)[0]["text"] == corpus["doc9"]
    assert grouped.add({f"g{i}": f"kidney stone pain {i}" for i in range(4)}) == {"added": 4, "present": 0}
    assert grouped.delete(["g1", "nope"]) == {"deleted": 1, "absent": 1}
    assert [h["shard"] for h in grouped.health()] == [0, 1, 2]
    ray.kill(grouped.actors[0][0], no_restart=True)
    hits, missing = grouped.search_hits_partial(model.encode_queries([corpus["doc2"]])[0], 5)
    assert missing == [0, 1] and all(shard_of(d, 3) == 2 for d, _, _ in hits)
    grouped.close()
    local.close()
