"""Streaming, resumable, optionally distributed index construction."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError, MedColbertError
from ..filters import check_metadata, flatten_metadata
from ..evaluation.datasets import iter_jsonl, require_str
from ..fsutil import failpoint, recover_replaced, replace_folder
from ..modeling.encoder import encode_documents_pooled, has_pooled_head
from ..validation import check_id, check_int, check_text, is_blank
from ..passages import PassageSource, PassageSplitter
from .codec import ASSIGNMENTS, ResidualCodec, resolve_assignment
from .index import new_manifest
from .kmeans import KMEANS_METHODS, default_num_centroids, resolve_kmeans, train_centroids
from ..lexical import TOKENIZER as LEXICAL_TOKENIZER
from ..lexical import write_postings
from .storage import (decode_ids, encode_ids, encode_store, load_array, save_array, sha256_file, store_metadata,
                      StoredTexts, write_fields, write_manifest, write_segment)

SAMPLE_POINTS_PER_CENTROID = 48


class CorpusSource:
    """A collection to index, read in order: a dict {id: text}, a list of texts (ids are positions), a list of
    (id, text) pairs or of records {"id", "text", "metadata"}, a dict {id: {"text", "metadata"}}, or a BEIR
    corpus.jsonl streamed from disk (its title and any extra fields become metadata)."""

    def __init__(self, corpus: Mapping[str, Any] | Sequence[Any] | str | Path) -> None:
        self.path: Path | None = None
        self._items: list[tuple[str, str, dict | None]] | None = None
        content = hashlib.sha256()
        if isinstance(corpus, (str, Path)):
            path = Path(corpus)
            self.path = path / "corpus.jsonl" if path.is_dir() else path
            self.ids = []
            for doc_id, text, meta in self._stream():
                self.ids.append(doc_id)
                content.update(_hash_item(doc_id, text, meta))
        else:
            self._items = _records(corpus)
            self.ids = [d for d, _, _ in self._items]
            for i, (d, t, meta) in enumerate(self._items):
                try:
                    check_id(d, f"document id (entry {i + 1})")
                    check_text(t, f"text of document '{d}'")
                    check_metadata(meta, d)
                except ValueError as exc:
                    raise MedColbertError(str(exc)) from None
                content.update(_hash_item(d, t, meta))
        self._content = content.hexdigest()
        if not self.ids:
            raise MedColbertError("the corpus is empty: nothing to index")
        seen: set[str] = set()
        for i, d in enumerate(self.ids):
            if d in seen:
                raise DataError(f"duplicate document id '{d}' (entry {i + 1})", self.path)
            seen.add(d)

    def _stream(self) -> Iterator[tuple[str, str, dict | None]]:
        assert self.path is not None
        for line, obj in iter_jsonl(self.path):
            doc_id = require_str(obj, "_id", self.path, line)
            text = require_str(obj, "text", self.path, line, allow_empty=True)
            title = obj.get("title") or ""
            full = f"{title} {text}".strip() if isinstance(title, str) and title else text
            if is_blank(full):
                raise DataError(f"document '{doc_id}' has empty 'text' and 'title'", self.path, line)
            meta = {k: v for k, v in obj.items() if k not in ("_id", "text")}
            try:
                meta = flatten_metadata(meta)
                check_metadata(meta, doc_id)
            except ValueError as exc:
                raise DataError(str(exc), self.path, line) from None
            yield doc_id, full, (meta or None)

    def __len__(self) -> int:
        return len(self.ids)

    def iter_records(self) -> Iterator[tuple[str, str, dict | None]]:
        """Every (id, text, metadata) in order."""
        return iter(self._items) if self._items is not None else self._stream()

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        """Every (id, text) in order."""
        return ((d, t) for d, t, _ in self.iter_records())

    def texts_at(self, positions: set[int]) -> dict[int, str]:
        """The texts at some positions, in one pass."""
        return {i: t for i, (_, t) in enumerate(self.iter_texts()) if i in positions}

    def fingerprint(self) -> str:
        """A hash of every id, text and metadata, in order: a resumed build reuses chunks only of the same collection."""
        return self._content[:24]


def _records(corpus: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, str, dict | None]]:
    """(id, text, metadata) of an in-memory corpus, in any of the accepted shapes."""
    bad = MedColbertError("a corpus is a dict {id: text} or {id: {'text', 'metadata'}}, a list of texts, of (id, text) "
                          "pairs or of {'id', 'text', 'metadata'} records, or a corpus.jsonl path")
    if corpus is None or isinstance(corpus, (bytes, int, float, bool)) or not isinstance(corpus, (Mapping, Sequence)) \
            and not hasattr(corpus, "__iter__"):
        raise MedColbertError(f"corpus: {bad} (got {type(corpus).__name__})")
    if isinstance(corpus, Mapping):
        out = []
        for d, v in corpus.items():
            if isinstance(v, Mapping):
                if "text" not in v:
                    raise MedColbertError(f"document '{d}': a record needs a 'text'")
                out.append((str(d), v["text"], v.get("metadata")))
            else:
                out.append((str(d), v, None))
        return out
    items = list(corpus)
    if all(isinstance(x, str) for x in items):   # plain texts: their positions are their ids
        return [(str(i), t, None) for i, t in enumerate(items)]
    if all(isinstance(x, Mapping) for x in items):
        try:
            return [(str(x["id"]), x["text"], x.get("metadata")) for x in items]
        except KeyError:
            raise MedColbertError("records need 'id' and 'text' (and may have 'metadata')") from None
    try:
        return [(str(d), t, None) for d, t in items]
    except (TypeError, ValueError):
        raise bad from None


def _hash_item(doc_id: str, text: str, meta: dict | None = None) -> bytes:
    """One document's bytes for the content hash; lengths first, so no two documents run together."""
    a, b = doc_id.encode("utf-8"), text.encode("utf-8")
    c = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8") if meta else b""
    return f"{len(a)}:{len(b)}:{len(c)}:".encode() + a + b + c


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group if launched under torchrun; returns (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return _dist()


def build_index(path: str | Path, model, corpus, nbits: int = 2, num_centroids: int | None = None,  # type: ignore[no-untyped-def]
                kmeans_niters: int = 10, chunk_size: int = 2048, batch_size: int = 32,
                overwrite: bool = False, seed: int = 0, show_progress: bool | None = None,
                use_gpu: bool | None = None, store_documents: bool = True, backend: str = "local",
                workers: int | None = None, ray_address: str | None = None, split_documents: bool = False,
                passage_tokens: int | None = None, passage_overlap: int | None = None,
                assignment: str = "auto", kmeans: str = "auto", codec: ResidualCodec | None = None) -> Path:
    """Encode, cluster, compress and store a collection; resumes an interrupted build of the same settings.

    store_documents keeps every document's text and metadata in the index, so searches can return them.
    backend "ray" encodes and compresses the chunks on `workers` Ray actors (GPU actors where the cluster has
    GPUs) against the codec trained here, then commits one index here; ray_address (or $RAY_ADDRESS) names
    an existing cluster, whose nodes must see the index's parent folder (a shared filesystem).
    split_documents indexes each document as passages of passage_tokens word pieces (default: what fits
    doc_maxlen) sharing passage_overlap tokens; searches then rank documents by their best passage. Without
    it, documents longer than doc_maxlen are truncated, and the build warns with their count.
    assignment: how each vector finds its centroid, "exact", "hnsw" (approximate, for tens of thousands of
    centroids) or "auto" (by the number of centroids; see indexing.codec.resolve_assignment).
    kmeans: how the centroids are trained, "flat", "two-level" (sqrt(centroids) groups first; for tens of
    thousands of centroids) or "auto" (by the number of centroids; see indexing.kmeans.resolve_kmeans).
    codec: a codec trained elsewhere (a shard set's, trained once on the whole collection) used as it is instead of
    training one here; num_centroids, kmeans_niters and kmeans are then unused.
    """
    if backend not in ("local", "ray"):
        raise MedColbertError(f"backend must be 'local' or 'ray', got {backend!r}")
    path = Path(path)
    rank, world = _dist()
    if nbits not in (1, 2, 4):
        raise MedColbertError(f"nbits must be 1, 2 or 4, got {nbits}")
    if assignment not in ("auto", *ASSIGNMENTS):
        raise MedColbertError(f"assignment must be auto, exact or hnsw, got {assignment!r}")
    if kmeans not in ("auto", *KMEANS_METHODS):
        raise MedColbertError(f"kmeans must be auto, flat or two-level, got {kmeans!r}")
    try:  # checked before anything is written, so a bad setting leaves no work folder behind
        check_int("chunk_size", chunk_size, 1)
        check_int("batch_size", batch_size, 1, 65536)
        check_int("kmeans_niters", kmeans_niters, 1, 10_000)
        if num_centroids is not None:
            check_int("num_centroids", num_centroids, 1, 1 << 24)
    except ValueError as exc:
        raise MedColbertError(str(exc)) from None
    if path.exists() and not path.is_dir():
        raise MedColbertError(f"{path} is a file, not an index folder")
    recover_replaced(path)   # an earlier overwrite cut off between its renames: the old index comes back first
    if (path / "manifest.json").exists() and not overwrite:
        raise MedColbertError(f"{path} already holds an index; pass overwrite=True (--overwrite) to replace it")
    if path.exists() and not (path / "manifest.json").exists() and any(path.iterdir()):
        raise MedColbertError(f"{path} exists and is not an index; refusing to overwrite it")
    source = corpus if isinstance(corpus, (CorpusSource, PassageSource)) else CorpusSource(corpus)
    if split_documents and not isinstance(source, PassageSource):
        source = PassageSource(source, PassageSplitter.for_model(model, passage_tokens, passage_overlap))
    show = (rank == 0) if show_progress is None else (show_progress and rank == 0)
    work = path.with_name(f".{path.name}.building")
    settings = {"model": model.fingerprint(), "corpus": source.fingerprint(), "nbits": nbits,
                "num_centroids": num_centroids, "kmeans_niters": kmeans_niters, "chunk_size": chunk_size,
                "seed": seed, "store_documents": store_documents, "assignment": assignment,
                "kmeans": kmeans,
                "passages": source.splitter.settings() if isinstance(source, PassageSource) else None,
                "codec": None if codec is None else codec_checksum(codec)}
    t_start = time.perf_counter()
    if rank == 0:
        _prepare_workdir(work, settings)
    _barrier()

    timings: dict[str, float] = {}
    if rank == 0 and codec is not None and not (work / "codec" / "done").exists():
        if codec.nbits != nbits:
            raise MedColbertError(f"the given codec has nbits {codec.nbits}, not {nbits}")
        _write_codec(work, codec, {"shared_codec": codec_checksum(codec), "avg_doclen_estimate": None,
                                   "assignment": resolve_assignment(assignment, codec.num_centroids)})
    if rank == 0 and not (work / "codec" / "done").exists():
        t0 = time.perf_counter()
        _train_codec(work, model, source, nbits, num_centroids, kmeans_niters, seed, batch_size, show, use_gpu,
                     assignment, kmeans)
        timings["train_codec_s"] = time.perf_counter() - t0
    _barrier()
    codec = _read_codec(work, nbits)

    # Each rank compresses its share of chunks; finished chunks are folders that a rerun skips.
    t0 = time.perf_counter()
    n_chunks = math.ceil(len(source) / chunk_size)
    if backend == "ray":
        from .distributed import compress_chunks_on_ray

        todo = [c for c in range(n_chunks) if not (work / "chunks" / f"{c:05d}" / "done").exists()]
        compress_chunks_on_ray(work, model, source, todo, chunk_size, nbits, batch_size, store_documents,
                               workers, ray_address, show)
        timings["encode_compress_s"] = time.perf_counter() - t0
        _finalize(work, path, model, codec, n_chunks, overwrite, {**timings, "backend": "ray"}, t_start, source)
        return path
    sample = _SampleVectors(work)
    mine = [c for c in range(n_chunks) if c % world == rank]
    todo = [c for c in mine if not (work / "chunks" / f"{c:05d}" / "done").exists()]
    bar = tqdm(total=len(source), desc="Indexing", unit="doc", disable=not show,
               initial=sum(min(chunk_size, len(source) - c * chunk_size) for c in mine if c not in todo))
    for chunk in iter_chunks(source, chunk_size, set(todo)):
        _compress_chunk(work, chunk.index, model, codec, chunk.ids, chunk.texts, chunk.positions, sample,
                        batch_size, bar.update, chunk.metas if store_documents else None)
    bar.close()
    timings["encode_compress_s"] = time.perf_counter() - t0
    _barrier()

    if rank == 0:
        _finalize(work, path, model, codec, n_chunks, overwrite, timings, t_start, source)
    _barrier()
    return path


@dataclass
class Chunk:
    """The documents of one build chunk: ids, texts, metadata and their positions in the collection."""

    index: int
    ids: list[str]
    texts: list[str]
    metas: list[dict | None]
    positions: list[int]


def iter_chunks(source: CorpusSource, chunk_size: int, wanted: set[int]) -> Iterator[Chunk]:
    """The wanted chunks of a collection, in one pass over it (memory holds one chunk)."""
    current: Chunk | None = None
    for pos, (doc_id, text, meta) in enumerate(source.iter_records()):
        c = pos // chunk_size
        if c not in wanted:
            continue
        if current is None:
            current = Chunk(c, [], [], [], [])
        current.ids.append(doc_id)
        current.texts.append(text)
        current.metas.append(meta)
        current.positions.append(pos)
        if len(current.ids) == min(chunk_size, len(source) - c * chunk_size):
            yield current
            current = None


def _prepare_workdir(work: Path, settings: dict) -> None:
    state = work / "settings.json"
    if work.exists():
        try:
            same = json.loads(state.read_text()) == settings
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:  # another model, corpus or setting: nothing there can be reused
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not state.exists():
        state.write_text(json.dumps(settings, indent=2))


class _SampleVectors:
    """Vectors of the documents encoded for k-means, reused so no document is encoded twice."""

    def __init__(self, work: Path) -> None:
        folder = work / "sample"
        self.by_position: dict[int, tuple[int, int, int]] = {}   # position -> (sample row, first vector, end)
        self.pooled: np.ndarray | None = None
        if not (folder / "done").exists():
            self.vectors = np.zeros((0, 1), np.float16)
            return
        positions = np.load(folder / "positions.npy", allow_pickle=False)
        lens = np.load(folder / "doclens.npy", allow_pickle=False)
        self.vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
        pooled = folder / "pooled.npy"
        self.pooled = np.load(pooled, allow_pickle=False) if pooled.exists() else None
        offsets = np.concatenate([[0], np.cumsum(lens)])
        self.by_position = {int(p): (i, int(offsets[i]), int(offsets[i + 1])) for i, p in enumerate(positions)}

    def get_pooled(self, position: int) -> torch.Tensor | None:
        """The pooled single vector of a sampled document (None: not sampled, or no pooled head)."""
        span = self.by_position.get(position)
        if self.pooled is None or span is None:
            return None
        return torch.from_numpy(self.pooled[span[0]].astype(np.float32))

    def get(self, position: int) -> torch.Tensor | None:
        """The token vectors of a sampled document (None: not sampled)."""
        span = self.by_position.get(position)
        if span is None:
            return None
        return torch.from_numpy(np.array(self.vectors[span[1]:span[2]], dtype=np.float32))


def _train_codec(work: Path, model, source: CorpusSource, nbits: int, num_centroids: int | None,  # type: ignore[no-untyped-def]
                 niters: int, seed: int, batch_size: int, show: bool, use_gpu: bool | None,
                 assignment: str = "auto", kmeans: str = "auto") -> None:
    rng = random.Random(seed)
    n = len(source)
    # Estimate the collection's token count from a small tokenized sample, to size the centroids.
    probe = sorted(rng.sample(range(n), min(n, 256)))
    probe_texts = source.texts_at(set(probe))
    avg_len = float(np.mean(model.tokenizer.document_lengths([probe_texts[i] for i in probe])))
    k = num_centroids or default_num_centroids(int(avg_len * n))
    n_sample = min(n, max(16, math.ceil(k * SAMPLE_POINTS_PER_CENTROID / max(avg_len, 1.0))))
    positions = sorted(rng.sample(range(n), n_sample))
    texts = source.texts_at(set(positions))
    vectors, pooled = encode_documents_pooled(model, [texts[p] for p in positions], batch_size=batch_size,
                                              show_progress=show)
    lens = np.array([v.shape[0] for v in vectors], dtype=np.int64)
    flat = torch.cat(vectors).numpy()
    # The sample is the build's largest allocation (48 vectors per centroid): hold one copy at a time.
    del vectors
    folder = work / "sample"
    folder.mkdir(exist_ok=True)
    np.save(folder / "vectors.npy", flat.astype(np.float16), allow_pickle=False)
    np.save(folder / "doclens.npy", lens, allow_pickle=False)
    np.save(folder / "positions.npy", np.array(positions, dtype=np.int64), allow_pickle=False)
    if pooled is not None:
        np.save(folder / "pooled.npy", pooled.numpy().astype(np.float16), allow_pickle=False)
    (folder / "done").touch()
    # 5% of the sampled vectors are held out of k-means to fit the residual buckets on unseen data.
    perm = np.random.default_rng(seed).permutation(flat.shape[0])
    n_held = max(1, min(flat.shape[0] // 20, 50_000))
    held, train = flat[perm[:n_held]], flat[perm[n_held:]] if flat.shape[0] > n_held else flat
    sample_embeddings = int(flat.shape[0])
    del flat, perm
    k = min(k, train.shape[0])
    method = resolve_kmeans(kmeans, k)
    centroids = train_centroids(train, k, niter=niters, seed=seed, use_gpu=use_gpu, method=method)
    codec = ResidualCodec.fit(centroids, held, nbits)
    _write_codec(work, codec, {"avg_doclen_estimate": avg_len, "sample_documents": n_sample,
                               "sample_embeddings": sample_embeddings, "kmeans": method,
                               "assignment": resolve_assignment(assignment, codec.num_centroids)})


def _write_codec(work: Path, codec: ResidualCodec, info: dict) -> None:
    """A build's codec (its arrays and how it was made) in its work folder, marked done last."""
    folder = work / "codec"
    folder.mkdir(exist_ok=True)
    for name, array in codec.arrays().items():
        save_array(folder / f"{name}.npy", array)
    (folder / "info.json").write_text(json.dumps(info))
    (folder / "done").touch()


def codec_checksum(codec: ResidualCodec) -> str:
    """A digest of a codec's arrays: shards built with one codec carry the same one."""
    h = hashlib.sha256()
    for name, array in sorted(codec.arrays().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:24]


def _read_codec(work: Path, nbits: int) -> ResidualCodec:
    folder = work / "codec"
    codec = ResidualCodec.from_arrays(lambda name: np.load(folder / f"{name}.npy", allow_pickle=False), nbits)
    # Every process that compresses (this one, torchrun ranks, Ray workers) reads the same choice.
    info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").exists() else {}
    return codec.use_assignment(info.get("assignment", "exact"))


def _compress_chunk(work: Path, c: int, model, codec: ResidualCodec, ids: list[str], texts: list[str],  # type: ignore[no-untyped-def]
                    positions: list[int], sample: _SampleVectors, batch_size: int,
                    progress: Callable[[int], object] = lambda n: None,
                    metas: list[dict | None] | None = None) -> None:
    hybrid = has_pooled_head(model)
    vectors: list[torch.Tensor | None] = [sample.get(p) for p in positions]
    pooled: list[torch.Tensor | None] = [sample.get_pooled(p) for p in positions] if hybrid else []
    missing = [i for i, v in enumerate(vectors) if v is None or (hybrid and pooled[i] is None)]
    progress(len(ids) - len(missing))
    step = batch_size * 8  # progress moves every few batches, not once per chunk
    for start in range(0, len(missing), step):
        part = missing[start:start + step]
        fresh, fresh_pooled = encode_documents_pooled(model, [texts[i] for i in part], batch_size=batch_size,
                                                      show_progress=False)
        for j, (i, v) in enumerate(zip(part, fresh)):
            vectors[i] = v
            if fresh_pooled is not None:
                pooled[i] = fresh_pooled[j]
        progress(len(part))
    doclens = np.array([v.shape[0] for v in vectors], dtype=np.int64)  # type: ignore[union-attr]
    codes, residuals = codec.compress(torch.cat(vectors))  # type: ignore[arg-type]
    # Counted here, from the texts, so that the build can say how many documents lost their ends.
    # (Vectors encoded elsewhere come with no tokenizer: nothing to count.)
    count = getattr(getattr(model, "tokenizer", None), "untruncated_document_lengths", None)
    full = count(texts) if count is not None else []
    cut = [n for n in full if n > model.config.doc_maxlen]
    tmp = work / "chunks" / f".{c:05d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    store = encode_store(texts, metas) if metas is not None else None
    entry, files = write_segment(tmp, "s", ids, doclens, codes, residuals, store,
                                 pooled=torch.stack(pooled).numpy() if hybrid else None)  # type: ignore[arg-type]
    (tmp / "entry.json").write_text(json.dumps({"entry": entry, "files": files, "truncated": len(cut),
                                                "longest": max(full, default=0)}))
    (tmp / "done").touch()
    failpoint("build-chunk-written")
    final = work / "chunks" / f"{c:05d}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _finalize(work: Path, path: Path, model, codec: ResidualCodec, n_chunks: int, overwrite: bool,  # type: ignore[no-untyped-def]
              timings: dict, t_start: float, source: CorpusSource) -> None:
    out = work / "final"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    # One segment for the whole collection, written a chunk at a time: each chunk's vectors are already
    # sorted by centroid inside each document and its code deltas restart at every document, so the
    # segment is the chunks' arrays one after another. Memory holds one chunk, never the collection.
    entries = []
    for c in range(n_chunks):
        root = work / "chunks" / f"{c:05d}"
        if not (root / "done").exists():
            raise MedColbertError(f"chunk {c} of the build is missing; rerun the build to finish it")
        entries.append((root, json.loads((root / "entry.json").read_text())))
    info_path = work / "codec" / "info.json"
    build_info = {"seconds_total": round(time.perf_counter() - t_start, 2),
                  **{k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()},
                  **json.loads(info_path.read_text()), "chunks": n_chunks, "world_size": _dist()[1]}
    truncated = sum(int(e.get("truncated", 0)) for _, e in entries)
    if isinstance(source, PassageSource):
        build_info["passages"] = len(source)
        build_info["documents"] = source.num_documents
    else:
        build_info["truncated_documents"] = truncated
        if truncated:
            longest = max(int(e.get("longest", 0)) for _, e in entries)
            warnings.warn(f"{truncated} of {len(source)} documents are longer than doc_maxlen="
                          f"{model.config.doc_maxlen} tokens (longest {longest}) and were truncated; index with "
                          "split_documents=True (--split-documents) to keep their ends as passages", stacklevel=3)
    manifest = new_manifest(model, codec, build_info)
    if getattr(model, "maxsim_only", False):   # vectors from elsewhere, without pooled vectors
        manifest["scoring"] = "maxsim"
    if isinstance(source, PassageSource):
        manifest["passages"] = source.splitter.settings()
    files = {f"codec/{name}.npy": save_array(out / "codec" / f"{name}.npy", arr)
             for name, arr in codec.arrays().items()}
    entry, seg_files = _concatenate_chunks(out, "00000", entries)
    manifest["segments"] = [entry]
    manifest["files"] = {**files, **seg_files}
    manifest["num_documents"] = entry["num_documents"]
    write_manifest(out, manifest)
    failpoint("build-before-rename")
    # The finished index replaces the old one (if any) by renames only: never a half index at `path`.
    replace_folder(out, path)
    shutil.rmtree(work, ignore_errors=True)


def _concatenate_chunks(root: Path, name: str, entries: list[tuple[Path, dict]]) -> tuple[dict, dict]:
    """Write segment `name` under root as the concatenation of finished chunk segments, streaming."""
    rel = f"segments/{name}"
    folder = root / rel
    folder.mkdir(parents=True, exist_ok=True)
    parts = [(chunk, info["files"], info["entry"]) for chunk, info in entries]

    def arrays(kind: str, mmap: bool = True) -> Iterator[np.ndarray]:
        for chunk, files, _ in parts:
            yield load_array(chunk, f"segments/s/{kind}.npy", files, mmap=mmap)

    files: dict[str, dict] = {}
    # Small per-document arrays: ids (re-encoded at the widest id) and lengths.
    ids = [d for a in arrays("doc_ids", mmap=False) for d in decode_ids(a)]
    files[f"{rel}/doc_ids.npy"] = save_array(folder / "doc_ids.npy", encode_ids(ids))
    files[f"{rel}/doclens.npy"] = save_array(folder / "doclens.npy",
                                             np.concatenate(list(arrays("doclens", mmap=False))).astype(np.int32))
    if all("segments/s/pooled.npy" in files_ for _, files_, _ in parts):
        files[f"{rel}/pooled.npy"] = save_array(folder / "pooled.npy", np.concatenate(list(arrays("pooled", mmap=False))))
        files[f"{rel}/pooled_scale.npy"] = save_array(folder / "pooled_scale.npy",
                                                      np.concatenate(list(arrays("pooled_scale", mmap=False))))
    escapes = list(arrays("code_escapes", mmap=False))
    wide = any(e.dtype == np.int32 for e in escapes)
    files[f"{rel}/code_escapes.npy"] = save_array(
        folder / "code_escapes.npy",
        np.concatenate([e.astype(np.int32 if wide else np.uint16) for e in escapes]) if escapes else np.zeros(0, np.uint16))
    # Per-vector arrays, the large ones: copied chunk by chunk into a memory-mapped output file.
    for kind in ("code_deltas", "residuals"):
        shapes = [a.shape for a in arrays(kind)]
        total = sum(s[0] for s in shapes)
        first = next(arrays(kind))
        target = np.lib.format.open_memmap(folder / f"{kind}.npy", mode="w+", dtype=first.dtype,
                                           shape=(total, *first.shape[1:]))
        at = 0
        for a in arrays(kind):
            target[at:at + len(a)] = a
            at += len(a)
        target.flush()
        del target
        with open(folder / f"{kind}.npy", "rb+") as f:
            os.fsync(f.fileno())
        path = folder / f"{kind}.npy"
        files[f"{rel}/{kind}.npy"] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if all("segments/s/texts.npy" in files_ for _, files_, _ in parts):
        for kind, offsets_kind in (("texts", "text_offsets"), ("meta", "meta_offsets")):
            sizes = [len(a) for a in arrays(kind, mmap=False)]
            offsets = [np.zeros(1, dtype=np.int64)]
            path = folder / f"{kind}.npy"
            if sum(sizes) == 0:   # no document has metadata: an empty array (a memory map cannot be empty)
                files[f"{rel}/{kind}.npy"] = save_array(path, np.zeros(0, dtype=np.uint8))
                offsets += [np.zeros(n, dtype=np.int64) for n in (len(o) - 1 for o in arrays(offsets_kind, mmap=False))]
            else:
                target = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(sum(sizes),))
                at = 0
                for a, o in zip(arrays(kind, mmap=False), arrays(offsets_kind, mmap=False)):
                    target[at:at + len(a)] = a
                    offsets.append(o[1:].astype(np.int64) + at)
                    at += len(a)
                target.flush()
                del target
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
                files[f"{rel}/{kind}.npy"] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
            files[f"{rel}/{offsets_kind}.npy"] = save_array(folder / f"{offsets_kind}.npy", np.concatenate(offsets))
    entry = {"name": name, "num_documents": len(ids),
             "num_embeddings": int(sum(e["num_embeddings"] for _, _, e in parts)),
             "num_escapes": int(sum(len(e) for e in escapes))}
    if f"{rel}/meta.npy" in files:
        # The metadata columns of the whole segment (a text column's codes are per segment, not per chunk).
        metas = store_metadata({"meta": load_array(root, f"{rel}/meta.npy", files),
                                "meta_offsets": load_array(root, f"{rel}/meta_offsets.npy", files)})
        entry["fields"], field_files = write_fields(root, rel, metas)
        files.update(field_files)
    if f"{rel}/texts.npy" in files:
        # The segment's BM25 postings, from its stored texts (the lexical side of hybrid search).
        # Read batch by batch from the memory-mapped store, so the pass holds one batch of texts at a time.
        texts = StoredTexts({"texts": load_array(root, f"{rel}/texts.npy", files),
                             "text_offsets": load_array(root, f"{rel}/text_offsets.npy", files)})
        files.update(write_postings(root, rel, texts))
        entry["lexical"] = LEXICAL_TOKENIZER
    return entry, files
