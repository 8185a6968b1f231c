"""Sharded index build under torchrun: 2 CPU processes on the gloo backend build the same index as one."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from medcolbert.indexing.index import Index
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_build_equals_single_process(tmp_path):
    model = make_tiny_model(seed=21)
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    corpus = make_corpus(45, seed=3)
    (tmp_path / "corpus.json").write_text(json.dumps(corpus))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(Path(__file__).with_name("dist_build_worker.py")),
           str(checkpoint), str(tmp_path / "corpus.json"), str(tmp_path / "dist")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0/2 done" in result.stdout and "rank 1/2 done" in result.stdout
    dist = Index.open(tmp_path / "dist", verify=True)
    assert dist.manifest["build"]["world_size"] == 2
    from medcolbert import ColBERT

    single = Index.build(tmp_path / "single", ColBERT.from_pretrained(checkpoint, device="cpu"), corpus,
                         chunk_size=10, show_progress=False)
    assert dist.doc_ids == single.doc_ids == list(corpus)
    assert np.array_equal(dist.codes, single.codes)
    assert np.array_equal(dist.codec.centroids, single.codec.centroids)
