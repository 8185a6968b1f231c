"""Building an index from vectors encoded elsewhere (e.g. on a GPU cluster): shards of per-token vectors.

A shard is either three files with one stem, `NAME.vectors.npy` ([n_vectors, dim], float16 or float32),
`NAME.doclens.npy` ([n_docs], integers) and `NAME.ids.txt` (one document id per line), or one
`NAME.safetensors` with tensors `vectors` and `doclens` and the ids as a JSON list in its metadata field
`ids`. Optionally each shard also carries the documents' pooled single vectors for a model with a pooled head:
`NAME.pooled.npy` ([n_docs, hidden]) or a `pooled` tensor; every shard has them or none does. Shards are memory-mapped (npy) or read one at a time, so memory holds one chunk of documents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import DataError, MedColbertError


@dataclass
class VectorShard:
    """One shard: document ids, their vector counts, and the vectors (possibly memory-mapped)."""

    ids: list[str]
    doclens: np.ndarray
    vectors: np.ndarray
    source: str = "<memory>"
    pooled: np.ndarray | None = None   # [n_docs, hidden]: the pooled head's vectors, when the encoder has one

    def __post_init__(self) -> None:
        self.doclens = np.asarray(self.doclens, dtype=np.int64)
        if self.vectors.ndim != 2:
            raise DataError(f"vectors must be [n_vectors, dim], got shape {self.vectors.shape}", self.source)
        if len(self.ids) != len(self.doclens):
            raise DataError(f"{len(self.ids)} ids for {len(self.doclens)} document lengths", self.source)
        if (self.doclens < 1).any():
            raise DataError("every document needs at least one vector (doclens >= 1)", self.source)
        if int(self.doclens.sum()) != self.vectors.shape[0]:
            raise DataError(f"doclens sum to {int(self.doclens.sum())} but there are {self.vectors.shape[0]} vectors",
                            self.source)
        if self.pooled is not None and (self.pooled.ndim != 2 or len(self.pooled) != len(self.ids)):
            raise DataError(f"pooled vectors must be [n_docs={len(self.ids)}, hidden], got shape {self.pooled.shape}",
                            self.source)


def read_shards(paths: Sequence[str | Path]) -> list[VectorShard]:
    """Open shard files (or every shard in the given folders), in name order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.glob("*.vectors.npy")) + sorted(p.glob("*.safetensors"))
        elif p.is_file():
            found.append(p)
        else:
            raise DataError("no such shard file or folder", p)
    if not found:
        raise DataError(f"no vector shards (*.vectors.npy or *.safetensors) in {', '.join(map(str, paths))}")
    return [_read_shard(p) for p in found]


def _read_shard(path: Path) -> VectorShard:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                vectors, doclens = f.get_tensor("vectors"), f.get_tensor("doclens")
                pooled = f.get_tensor("pooled") if "pooled" in f.keys() else None
        except Exception as exc:  # safetensors raises its own types for damaged files or missing tensors
            raise DataError(f"not a readable vector shard ({str(exc)[:200]})", path) from None
        try:
            ids = json.loads(meta["ids"])
        except (KeyError, json.JSONDecodeError):
            raise DataError("the safetensors metadata needs 'ids', a JSON list of document ids", path) from None
        return VectorShard([str(i) for i in ids], doclens, vectors, str(path), pooled)
    stem = str(path)[: -len(".vectors.npy")] if str(path).endswith(".vectors.npy") else str(path.with_suffix(""))
    try:
        vectors = np.load(f"{stem}.vectors.npy", mmap_mode="r", allow_pickle=False)
        doclens = np.load(f"{stem}.doclens.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the shard's .npy files ({exc})", path) from None
    ids_path = Path(f"{stem}.ids.txt")
    if not ids_path.is_file():
        raise DataError("missing its ids file", ids_path)
    ids = [line.rstrip("\n") for line in ids_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    pooled = None
    if Path(f"{stem}.pooled.npy").is_file():
        try:
            pooled = np.load(f"{stem}.pooled.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the shard's pooled vectors ({exc})", f"{stem}.pooled.npy") from None
    return VectorShard(ids, doclens, vectors, str(path), pooled)


class PrecomputedEncoder:
    """Stands where a ColBERT model stands in the builder: 'encodes' a document id by reading its vectors."""

    def __init__(self, shards: Sequence[VectorShard], name: str, fingerprint: str | None = None,
                 config: ModelConfig | None = None, source: str | None = None, pooled_dim: int | None = None) -> None:
        self.shards = list(shards)
        dims = {s.vectors.shape[1] for s in self.shards}
        if len(dims) != 1:
            raise MedColbertError(f"shards disagree on the vector size: {sorted(dims)}")
        self.dim = dims.pop()
        self.where: dict[str, tuple[int, int, int]] = {}
        self.row: dict[str, int] = {}   # a document's row in its shard (for its pooled vector)
        for si, shard in enumerate(self.shards):
            offsets = np.concatenate([[0], np.cumsum(shard.doclens)])
            for i, doc_id in enumerate(shard.ids):
                if doc_id in self.where:
                    raise DataError(f"document id '{doc_id}' is in two shards", shard.source)
                self.where[doc_id] = (si, int(offsets[i]), int(offsets[i + 1]))
                self.row[doc_id] = i
        self.name, self.source = name, source
        if config is not None and config.dim != self.dim:
            raise MedColbertError(f"the shards hold {self.dim}-dim vectors but the model makes {config.dim}-dim "
                                  "vectors: they were not encoded by this model")
        self.config = (config or ModelConfig()).replace(dim=self.dim)
        with_pooled = {s.pooled is not None for s in self.shards}
        if len(with_pooled) > 1:
            raise MedColbertError("some shards carry pooled vectors and others do not: give them to every shard or none")
        # Shards with pooled vectors build an index a pooled-head model searches as usual; without them the index
        # records MaxSim-alone scoring.
        self.has_dense_head = with_pooled == {True}
        self.maxsim_only = not self.has_dense_head
        if self.has_dense_head:
            widths = {s.pooled.shape[1] for s in self.shards}  # type: ignore[union-attr]
            if len(widths) != 1 or (pooled_dim is not None and widths != {pooled_dim}):
                raise MedColbertError(f"the shards' pooled vectors are {sorted(widths)}-wide but the model's pooled head "
                                      f"makes {pooled_dim}-wide vectors")
            self.hidden_size = widths.pop()
        self._fingerprint = fingerprint or self._content_hash()
        self.tokenizer = self   # the builder asks tokenizer.document_lengths

    def _content_hash(self) -> str:
        h = hashlib.sha256()
        for shard in self.shards:
            h.update("\n".join(shard.ids).encode())
            h.update(np.asarray(shard.doclens).tobytes())
            h.update(str(shard.vectors.shape).encode())
        return h.hexdigest()[:24]

    def fingerprint(self, weights_only: bool = False) -> str:
        """The encoding model's fingerprint as given (checked against the model used to search), else a hash
        of the shards' layout."""
        return self._fingerprint

    def document_lengths(self, doc_ids: Sequence[str]) -> list[int]:
        """Vector counts of some documents."""
        return [self.where[d][2] - self.where[d][1] for d in doc_ids]

    def encode_documents(self, doc_ids: Sequence[str], batch_size: int = 32, show_progress: bool | None = None,
                         pooled: bool = False) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """The stored vectors of some documents, unit length (float32); pooled=True adds their pooled vectors."""
        out, touched = [], set()
        for d in doc_ids:
            si, a, b = self.where[d]
            v = torch.from_numpy(np.asarray(self.shards[si].vectors[a:b], dtype=np.float32))
            if not torch.isfinite(v).all():
                raise DataError(f"document '{d}' has non-finite vectors", self.shards[si].source)
            if len(v) and bool((v.abs().sum(dim=-1) == 0).any()):
                raise DataError(f"document '{d}' has an all-zero vector (no direction to score by)", self.shards[si].source)
            out.append(torch.nn.functional.normalize(v, dim=-1))
            touched.add(si)
        for si in touched:
            _release(self.shards[si].vectors)
        if not pooled:
            return out
        rows = []
        for d in doc_ids:
            si, _, _ = self.where[d]
            shard = self.shards[si]
            rows.append(torch.from_numpy(np.asarray(shard.pooled[self.row[d]], dtype=np.float32)))  # type: ignore[index]
        stacked = torch.stack(rows) if rows else torch.zeros((0, getattr(self, "hidden_size", 0)))
        if not torch.isfinite(stacked).all():
            raise DataError("a document's pooled vector is not finite", self.shards[0].source)
        return out, torch.nn.functional.normalize(stacked, dim=-1)

    def corpus(self) -> list[tuple[str, str]]:
        """(id, id) pairs: the builder's 'texts' are the ids this encoder looks up."""
        return [(d, d) for s in self.shards for d in s.ids]


def _release(vectors: np.ndarray) -> None:
    """Drop a memory-mapped shard's pages from this process's resident set once a chunk has been copied out.

    Pages read through a file mapping count in RSS until the kernel reclaims them, so without this a build
    over 10M vectors showed the shards it had read (2.5 GB) in its peak RSS although it held one chunk."""
    import mmap

    base = getattr(vectors, "_mmap", None)   # set on np.load(..., mmap_mode="r") arrays; absent in memory
    if base is not None and hasattr(base, "madvise"):
        base.madvise(mmap.MADV_DONTNEED)


def build_from_vectors(path: str | Path, shards: Iterable[VectorShard] | Sequence[str | Path], model_name: str,
                       model_fingerprint: str | None = None, model_source: str | None = None,
                       config: ModelConfig | None = None, pooled_dim: int | None = None, **options: Any) -> Path:
    """Compress precomputed token vectors into an index at `path` (options as for build_index).

    model_name / model_fingerprint / model_source name the encoder, so that a searcher can check it uses the
    same model (pass `model.fingerprint(weights_only=True)` of the ColBERT that encoded the shards).
    """
    from .builder import build_index

    items = list(shards)
    opened = [s if isinstance(s, VectorShard) else None for s in items]
    if any(s is None for s in opened):
        opened = read_shards([str(s) for s in items])
    encoder = PrecomputedEncoder(opened, model_name, model_fingerprint, config, model_source, pooled_dim)  # type: ignore[arg-type]
    try:
        return build_index(path, encoder, encoder.corpus(), store_documents=False, **options)
    except DataError:
        # Bad vectors will be as bad on a rerun: the staging folder (kept to resume interrupted builds) goes.
        import shutil

        target = Path(path)
        shutil.rmtree(target.with_name(f".{target.name}.building"), ignore_errors=True)
        raise
