"""The torch engine on CUDA against the CPU result (runs only where CUDA is present)."""

import pytest
import torch

from medcolbert.indexing.index import Index
from medcolbert.search.plaid import Searcher
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
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


@pytest.mark.cuda
def test_encoders_agree_on_cuda_and_cpu(tmp_path):
    """The same checkpoint in every layout encodes on CUDA (float32) as on the CPU."""
    from medcolbert import ColBERT

    model = make_tiny_model(seed=22)
    texts = ["do statins cause muscle pain?", "Metformin (a biguanide) lowers hepatic glucose output; first-line."]
    for fmt in ("colbert-ai", "pylate", "sentence-transformers"):
        folder = model.save_pretrained(tmp_path / fmt, format=fmt)
        cpu = ColBERT.from_pretrained(folder, device="cpu", dtype="float32")
        gpu = ColBERT.from_pretrained(folder, device="cuda", dtype="float32")
        assert torch.allclose(cpu.encode_queries(texts), gpu.encode_queries(texts), atol=1e-4)
        for a, b in zip(cpu.encode_documents(texts), gpu.encode_documents(texts)):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


@pytest.mark.cuda
def test_training_runs_in_bfloat16_on_cuda_with_accumulation(tmp_path):
    """The recipe's path on a GPU: bf16 autocast, accumulated micro-batches, a save that loads."""
    from medcolbert import ColBERT
    from tests.test_training import config

    checkpoint = str(make_tiny_model(seed=23, dropout=0.0).save_pretrained(tmp_path / "start"))
    from medcolbert.training.trainer import train

    final = train(config(tmp_path, checkpoint, device="cuda", bf16=True, grad_accum=2, max_steps=3))
    tuned = ColBERT.from_pretrained(final, device="cuda")
    start = ColBERT.from_pretrained(checkpoint, device="cuda")
    assert not torch.equal(tuned.linear.weight, start.linear.weight)
    assert torch.isfinite(tuned.encode_queries(["statins"])).all()
