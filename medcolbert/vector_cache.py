"""An on-disk cache of document vectors, keyed by model fingerprint, so a second run encodes nothing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .modeling.encoder import ColBERT, encode_documents_pooled, has_pooled_head

CHUNK_FILES = ("vectors", "lengths", "hashes", "ids")  # ids last: its presence marks a finished chunk


def default_cache_root() -> Path:
    """$MEDCOLBERT_CACHE, else ~/.cache/medcolbert/vectors."""
    env = os.environ.get("MEDCOLBERT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medcolbert" / "vectors"


def text_hash(text: str) -> str:
    """A short stable hash of a document's text, to notice when a cached id's text changed."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class VectorCache:
    """Document vectors of one model, stored as chunks of plain .npy arrays; resumable by construction.

    A model with a pooled single-vector head (dense_weight > 0) also stores each document's pooled vector.
    """

    def __init__(self, model: ColBERT, root: str | Path | None = None) -> None:
        self.model = model
        self.dir = Path(root or default_cache_root()) / model.fingerprint()
        self.pooled = has_pooled_head(model)
        self._entries: dict[str, tuple[str, np.ndarray]] = {}
        self._pooled: dict[str, np.ndarray] = {}
        self._next_chunk = 0
        self._load()

    def _chunk_path(self, n: int, part: str) -> Path:
        return self.dir / f"chunk-{n:05d}.{part}.npy"

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        numbers = sorted(int(p.name.split(".")[0].split("-")[1]) for p in self.dir.glob("chunk-*.ids.npy"))
        for n in numbers:
            try:
                ids = np.load(self._chunk_path(n, "ids"), allow_pickle=False)
                hashes = np.load(self._chunk_path(n, "hashes"), allow_pickle=False)
                lengths = np.load(self._chunk_path(n, "lengths"), allow_pickle=False)
                vectors = np.load(self._chunk_path(n, "vectors"), mmap_mode="r", allow_pickle=False)
                # A chunk written without pooled vectors is of no use to a model that needs them: encoded again.
                pooled = np.load(self._chunk_path(n, "pooled"), allow_pickle=False) if self.pooled else None
            except (OSError, ValueError):
                continue  # a damaged chunk is simply encoded again
            if not (len(ids) == len(hashes) == len(lengths)) or int(lengths.sum()) != vectors.shape[0]:
                continue
            if pooled is not None and pooled.shape != (len(ids), self.model.hidden_size):
                continue
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for i, doc_id in enumerate(ids.tolist()):
                self._entries[doc_id] = (str(hashes[i]), vectors[offsets[i]:offsets[i + 1]])
                if pooled is not None:
                    self._pooled[doc_id] = pooled[i]
            self._next_chunk = max(self._next_chunk, n + 1)

    def __len__(self) -> int:
        return len(self._entries)

    def missing(self, ids: Sequence[str], texts: Sequence[str]) -> list[int]:
        """Positions of the documents not cached (or cached with another text)."""
        return [i for i, (d, t) in enumerate(zip(ids, texts))
                if d not in self._entries or self._entries[d][0] != text_hash(t)]

    def get_or_encode(self, ids: Sequence[str], texts: Sequence[str], batch_size: int = 32,
                      chunk_size: int = 512, show_progress: bool | None = None) -> dict[str, torch.Tensor]:
        """Vectors of each document, encoding and storing those not cached yet (chunk by chunk)."""
        if len(ids) != len(texts):
            raise ValueError("ids and texts differ in length")
        todo = self.missing(ids, texts)
        if todo:
            from tqdm.auto import tqdm

            show = (len(todo) > batch_size) if show_progress is None else show_progress
            with tqdm(total=len(todo), desc="Encoding documents", unit="doc", disable=not show) as bar:
                for start in range(0, len(todo), chunk_size):
                    part = todo[start:start + chunk_size]
                    vecs, pooled = encode_documents_pooled(self.model, [texts[i] for i in part], batch_size=batch_size,
                                                           show_progress=False)
                    self._write_chunk([ids[i] for i in part], [texts[i] for i in part], vecs, pooled)
                    bar.update(len(part))
        # np.array copies out of the read-only memory map, which torch cannot wrap safely.
        return {d: torch.from_numpy(np.array(self._entries[d][1])) for d in ids}

    def pooled_vectors(self, ids: Sequence[str]) -> torch.Tensor:
        """The pooled single vectors [n, hidden] of documents cached already (by get_or_encode)."""
        if not self.pooled:
            raise ValueError("this cache's model has no pooled head (dense_weight is 0)")
        return torch.from_numpy(np.stack([self._pooled[d] for d in ids]).astype(np.float32)) if ids else \
            torch.empty(0, self.model.hidden_size)

    def _write_chunk(self, ids: list[str], texts: list[str], vectors: list[torch.Tensor],
                     pooled: torch.Tensor | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        n = self._next_chunk
        lengths = np.array([v.shape[0] for v in vectors], dtype=np.int64)
        flat = (torch.cat(vectors) if vectors else torch.empty(0, self.model.config.dim)).to(torch.float16).numpy()
        arrays = {"vectors": flat, "lengths": lengths,
                  "hashes": np.array([text_hash(t) for t in texts]), "ids": np.array(ids)}
        parts = CHUNK_FILES
        if pooled is not None:
            # float32: the pooled cosine is added at full weight to the score, and the array is small.
            arrays["pooled"] = pooled.float().numpy()
            parts = ("pooled", *CHUNK_FILES)
        for part in parts:  # each file lands whole; a chunk counts only once its ids file exists
            final = self._chunk_path(n, part)
            tmp = final.with_name(final.name + ".tmp")
            with open(tmp, "wb") as f:
                np.save(f, arrays[part], allow_pickle=False)
            os.replace(tmp, final)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for i, doc_id in enumerate(ids):
            self._entries[doc_id] = (text_hash(texts[i]), flat[offsets[i]:offsets[i + 1]])
            if pooled is not None:
                self._pooled[doc_id] = arrays["pooled"][i]
        self._next_chunk = n + 1


class CachedEncoder:
    """A model stand-in whose document vectors come from (and go to) a VectorCache, e.g. to index what was
    already encoded for reranking, or to build several indexes from one encoding."""

    def __init__(self, model: ColBERT, cache: VectorCache, corpus: dict[str, str]) -> None:
        self.model, self.cache = model, cache
        self.ids_by_text = {text: doc_id for doc_id, text in corpus.items()}

    def __getattr__(self, name: str):  # noqa: ANN204 - everything else is the model's
        return getattr(self.model, name)

    def encode_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None,
                         pooled: bool = False) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """Vectors of documents of the corpus, encoded only if the cache lacks them (and pooled ones if asked)."""
        ids = [self.ids_by_text[t] for t in texts]
        got = self.cache.get_or_encode(ids, list(texts), batch_size=batch_size, show_progress=show_progress)
        vectors = [got[i].float() for i in ids]
        return (vectors, self.cache.pooled_vectors(ids)) if pooled else vectors
