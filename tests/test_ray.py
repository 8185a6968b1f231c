"""The Ray backend on a local 2-worker cluster gives the single-process index (same arrays, same top-10)."""

import numpy as np
import pytest

from medcolbert import ColBERT
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus

ray = pytest.importorskip("ray")


def test_ray_build_equals_the_local_build(tmp_path):
    ckpt = make_tiny_model(seed=41).save_pretrained(tmp_path / "ckpt")
    model = ColBERT.from_pretrained(ckpt, device="cpu")
    corpus = make_corpus(90, seed=41)
    local = Index.build(tmp_path / "local", model, corpus, chunk_size=20, num_centroids=16, show_progress=False)
    distributed = Index.build(tmp_path / "ray", model, corpus, chunk_size=20, num_centroids=16, show_progress=False,
                              backend="ray", workers=2)
    assert distributed.doc_ids == local.doc_ids
    assert np.array_equal(distributed.codes, local.codes)
    assert np.array_equal(np.asarray(distributed._residual_parts[0]), np.asarray(local._residual_parts[0]))
    assert distributed.document("doc7") == local.document("doc7")
    assert distributed.manifest["build"]["backend"] == "ray"
    a, b = Searcher(local, model), Searcher(distributed, model)
    for d in list(corpus)[:10]:
        assert a.search(corpus[d], k=10) == b.search(corpus[d], k=10)
