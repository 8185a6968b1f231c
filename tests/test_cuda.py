"""The torch engine on CUDA against the CPU result (runs only where CUDA is present)."""

import pytest
import torch

from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_engine_returns_the_cpu_results(tmp_path):
    model = make_tiny_model(seed=21)
    corpus = make_corpus(300, seed=21)
    index = Index.build(tmp_path / "i", model, corpus, num_centroids=32, show_progress=False)
    cpu = Searcher(index, model, compiled=False)
    queries = [corpus[f"doc{i}"] for i in range(0, 300, 15)]
    cpu_hits = [cpu.search(q, k=10, ndocs=64) for q in queries]
    model.to_device("cuda", dtype="float32")
    gpu = Searcher(index, model)
    for q, expected in zip(queries, cpu_hits):
        got = gpu.search(q, k=10, ndocs=64)
        assert [d for d, _ in got] == [d for d, _ in expected]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-3)
