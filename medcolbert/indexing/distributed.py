"""Distributed indexing on Ray: chunks are encoded and compressed by Ray actors against one shared codec.

The driver (`build_index(..., backend="ray")`) trains the codec, streams the corpus a chunk at a time to
the actors (at most two chunks in flight per actor, so its memory stays bounded), and commits the index
once every chunk folder is written. Each actor loads the model by name once and writes its chunks into
the build folder, which every node must see (a shared filesystem on a multi-node cluster). A rerun
resumes from the finished chunks, as a local build does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import MedColbertError
from .builder import iter_chunks


def _worker_class():  # type: ignore[no-untyped-def]
    import ray

    class ChunkWorker:
        """Holds the model and codec; compresses the chunks it is given into the build folder."""

        def __init__(self, source: str, overrides: dict, work: str, nbits: int, device: str) -> None:
            import torch

            from ..modeling.encoder import ColBERT
            from .builder import _read_codec, _SampleVectors

            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
            self.model = ColBERT.from_pretrained(source, device=device, **overrides)
            self.work = Path(work)
            self.codec = _read_codec(self.work, nbits)
            self.sample = _SampleVectors(self.work)

        def compress(self, c: int, ids: list, texts: list, positions: list, metas: list | None, batch_size: int) -> int:
            from .builder import _compress_chunk

            _compress_chunk(self.work, c, self.model, self.codec, ids, texts, positions, self.sample, batch_size,
                            metas=metas)
            return len(ids)

    return ray.remote(ChunkWorker)


def compress_chunks_on_ray(work: Path, model: Any, source: Any, todo: list[int], chunk_size: int, nbits: int,
                           batch_size: int, store_documents: bool, workers: int | None, address: str | None,
                           show: bool) -> None:
    """Compress the chunks `todo` of `source` on Ray actors; returns when every one is written."""
    try:
        import ray
    except ImportError as exc:
        raise MedColbertError("the Ray backend needs ray: pip install 'medcolbert[distributed]'") from exc
    if not todo:
        return
    if model.source is None:
        raise MedColbertError("the Ray backend loads the model by name on every worker; use a model loaded from a "
                              "checkpoint path or name (ColBERT.from_pretrained(...))")
    started_here = not ray.is_initialized()
    if started_here:
        # An existing cluster by address (or $RAY_ADDRESS); else a local one with as many CPUs as workers.
        address = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else max(1, workers or 2), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        gpus = ray.cluster_resources().get("GPU", 0) >= n
        overrides = {"doc_maxlen": model.config.doc_maxlen, "new_projection": getattr(model, "new_projection", False)}
        Worker = _worker_class()
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        actors = [Worker.options(**options).remote(str(model.source), overrides, str(work), nbits,
                                                   "cuda" if gpus else "cpu") for _ in range(n)]
        pending: dict = {}
        next_actor = 0
        bar = tqdm(total=sum(min(chunk_size, len(source) - c * chunk_size) for c in todo), desc="Indexing (Ray)",
                   unit="doc", disable=not show)

        def drain(limit: int) -> None:
            while len(pending) > limit:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    pending.pop(ref)
                    bar.update(ray.get(ref))

        for chunk in iter_chunks(source, chunk_size, set(todo)):
            drain(2 * n - 1)   # at most two chunks in flight per actor: the driver's memory stays bounded
            ref = actors[next_actor % n].compress.remote(chunk.index, chunk.ids, chunk.texts, chunk.positions,
                                                         chunk.metas if store_documents else None, batch_size)
            pending[ref] = chunk.index
            next_actor += 1
        drain(0)
        bar.close()
    finally:
        if started_here:
            ray.shutdown()
