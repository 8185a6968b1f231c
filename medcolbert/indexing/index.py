"""An opened index: memory-mapped residuals, decoded codes, inverted lists, and updates."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import IndexFormatError, MedColbertError
from ..filters import ID_FIELD, Condition, FilterError, WhereLike, check_fields, column_mask, parse_where
from ..fsutil import failpoint, recover_replaced
from ..modeling.encoder import has_pooled_head
from ..validation import check_id, check_id_list
from ..passages import SEPARATOR, SPAN_KEY, join_passages, parent_of
from .codec import ResidualCodec
from .encoded import EncodedDocuments, check_vectors
from .storage import (FORMAT_NAME, FORMAT_VERSION, document_blocks, load_array, ranges, read_fields, read_lexical,
                      read_manifest, read_segment, save_array, sha256_file, write_manifest, write_segment)


class Index:
    """A compressed late-interaction index folder, opened for search and updates."""

    def __init__(self, path: str | Path, verify: bool = False) -> None:
        self.path = Path(path)
        recover_replaced(self.path)   # an overwrite cut off between its two renames leaves the old index beside
        self.manifest = read_manifest(self.path)
        if verify:   # files first: a damaged array must not be loaded
            self._verify_files()
        self._load()
        if verify:
            self._verify_passages()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> "Index":
        """Open an index folder (checksums are checked too with verify=True)."""
        return cls(path, verify=verify)

    @classmethod
    def build(cls, path: str | Path, model, corpus, nbits: int = 2, **options) -> "Index":  # type: ignore[no-untyped-def]
        """Build an index of `corpus` with `model` at `path` (see indexing.builder.build_index)."""
        if not (callable(getattr(model, "encode_documents", None)) and hasattr(model, "config")):
            raise TypeError(f"model must be a ColBERT model (ColBERT.from_pretrained(...)), got {type(model).__name__}")
        from .builder import build_index

        return cls(build_index(path, model, corpus, nbits=nbits, **options))

    @classmethod
    def build_from_vectors(cls, path: str | Path, shards, model_name: str, **options) -> "Index":  # type: ignore[no-untyped-def]
        """Build an index from token vectors encoded elsewhere (see indexing.vectors.build_from_vectors)."""
        from .vectors import build_from_vectors

        return cls(build_from_vectors(path, shards, model_name, **options))

    def leftover_segments(self) -> list[str]:
        """Segment folders no manifest names (left by a writer killed mid-way; the next write removes them)."""
        named = {s["name"] for s in self.manifest["segments"]}
        folder = self.path / "segments"
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in named) if folder.is_dir() else []

    def verify(self) -> None:
        """Check every file against the sha256 in the manifest, and that split documents' passages keep their place."""
        self._verify_files()
        self._verify_passages()

    def _verify_files(self) -> None:
        for rel, info in self.manifest["files"].items():
            p = self.path / rel
            if not p.is_file():
                raise IndexFormatError(f"{self.path}: the index is missing {rel}")
            if p.stat().st_size != info["bytes"]:
                raise IndexFormatError(f"{self.path}: {rel} has {p.stat().st_size} bytes, the manifest says {info['bytes']}")
            if sha256_file(p) != info["sha256"]:
                raise IndexFormatError(f"{self.path}: {rel} does not match its checksum (damaged file)")

    def _verify_passages(self) -> None:
        if self.passages and self.has_documents:
            for unit, position in self.position.items():
                if SPAN_KEY not in self._stored(position)[2]:
                    raise IndexFormatError(f"{self.path}: passage '{unit}' has lost its place in its document "
                                           f"(no {SPAN_KEY!r} in its stored metadata)")

    def _load(self) -> None:
        m, files = self.manifest, self.manifest["files"]
        self.nbits = int(m["nbits"])
        try:
            self.codec = ResidualCodec.from_arrays(
                lambda name: load_array(self.path, f"codec/{name}.npy", files), self.nbits)
        except ValueError as exc:
            raise IndexFormatError(f"{self.path}: damaged codec ({exc})") from None
        if self.codec.dim != m["dim"]:
            raise IndexFormatError(f"{self.path}: centroids have dim {self.codec.dim}, manifest says {m['dim']}")
        ids: list[str] = []
        doclens, residuals = [], []
        self._stores: list = []
        lexical: list = []
        self._segment_fields: list = []
        self._fields: list | None = None
        self._matches: dict[str, np.ndarray] = {}
        pooled_parts: list = []
        scale_parts: list = []
        # One int32 array for every segment's codes, filled in place: no per-segment copies to concatenate.
        total = sum(int(seg["num_embeddings"]) for seg in m["segments"])
        self.codes = np.empty(total, dtype=np.int32)
        row = 0
        for seg in m["segments"]:
            n = int(seg["num_embeddings"])
            data = read_segment(self.path, f"segments/{seg['name']}", files, codes_out=self.codes[row:row + n])
            row += n
            if len(data.doc_ids) != seg["num_documents"] or int(data.doclens.sum()) != n \
                    or data.residuals.shape != (n, self.codec.bytes_per_residual):
                raise IndexFormatError(f"{self.path}: segment {seg['name']} arrays disagree in size (damaged index)")
            ids += data.doc_ids
            self._segment_fields.append((f"segments/{seg['name']}", seg, data.store, len(data.doc_ids)))
            lexical.append(read_lexical(self.path, f"segments/{seg['name']}", files, seg, len(data.doc_ids)))
            doclens.append(data.doclens)
            residuals.append(data.residuals)
            self._stores.append(data.store)
            pooled_parts.append(data.pooled)
            scale_parts.append(data.pooled_scale)
        # The BM25 side: every segment's postings, or None where any segment lacks them (built before they existed).
        self.lexical: list | None = lexical if lexical and all(x is not None for x in lexical) else None
        self.doc_ids: list[str] = ids
        # The pooled single vectors of a model with that head, one row per document: only when every segment
        # has them (an index built without them stays a plain ColBERT index).
        have = [p for p in pooled_parts if p is not None]
        if have and len(have) != len(pooled_parts):
            raise IndexFormatError(f"{self.path}: some segments hold pooled vectors and some do not (damaged index)")
        if len({p.dtype for p in have}) > 1:
            # A float16 segment (written before int8) beside int8 ones: widen the int8 rows to float16.
            have = [p if p.dtype == np.float16 else (p.astype(np.float32) * s[:, None]).astype(np.float16)
                    for p, s in zip(pooled_parts, scale_parts)]
            scale_parts = [None] * len(have)
        self.pooled: np.ndarray | None = (np.concatenate(have) if len(have) > 1 else have[0]) if have else None
        # int8 pooled rows are worth int8 x this scale (one per document); None: float16 rows, no scale.
        self.pooled_scale: np.ndarray | None = (np.concatenate(scale_parts) if self.pooled is not None
                                                and self.pooled.dtype == np.int8 else None)
        self._doc_segment_starts = np.concatenate([[0], np.cumsum([len(d) for d in doclens])]).astype(np.int64)
        self.doclens = np.concatenate(doclens) if doclens else np.zeros(0, np.int64)
        if self.codes.size and int(self.codes.max()) >= self.codec.num_centroids:
            raise IndexFormatError(f"{self.path}: a code points past the {self.codec.num_centroids} centroids")
        self._residual_parts = residuals
        self._segment_starts = np.concatenate([[0], np.cumsum([r.shape[0] for r in residuals])]).astype(np.int64)
        self.doc_offsets = np.concatenate([[0], np.cumsum(self.doclens)]).astype(np.int64)
        deleted = np.zeros(len(ids), dtype=bool)
        if m.get("deleted"):
            positions = load_array(self.path, m["deleted"], files).astype(np.int64)
            if positions.ndim != 1 or (positions.size and (positions.min() < 0 or positions.max() >= len(ids))):
                raise IndexFormatError(f"{self.path}: {m['deleted']} names positions outside the {len(ids)} documents")
            deleted[positions] = True
        self.deleted = deleted
        self._lexical_collection = None
        self.position = {d: i for i, d in enumerate(ids) if not deleted[i]}
        self._passages_of: dict[str, list[int]] | None = None
        self._build_inverted_lists()

    def _build_inverted_lists(self, block: int = 1 << 22) -> None:
        # Unique (document, centroid) pairs: vectors are sorted by centroid inside each document, so a
        # pair starts wherever the code or the document changes. The inverted lists are their transpose.
        # Built block by block of documents (two passes: count, then fill) so that the temporaries stay
        # bounded by the block; the results are int32 except the offsets (a 100M-vector index would otherwise
        # hold several int64 copies of its codes while opening).
        codes, lens, ndocs = self.codes, self.doclens, len(self.doclens)
        blocks = document_blocks(lens, block)

        def pair_starts(d0: int, d1: int, r0: int, r1: int) -> np.ndarray:
            c = codes[r0:r1]
            start = np.ones(len(c), dtype=bool)
            start[1:] = c[1:] != c[:-1]
            local = self.doc_offsets[d0:d1] - r0
            start[local[lens[d0:d1] > 0]] = True
            return start

        pair_counts = np.zeros(ndocs, dtype=np.int64)
        for d0, d1, r0, r1 in blocks:
            before = np.concatenate([[0], np.cumsum(pair_starts(d0, d1, r0, r1), dtype=np.int64)])
            pair_counts[d0:d1] = before[self.doc_offsets[d0 + 1:d1 + 1] - r0] - before[self.doc_offsets[d0:d1] - r0]
        self.pair_offsets = np.concatenate([[0], np.cumsum(pair_counts)]).astype(np.int64)
        self.pair_codes = np.empty(int(self.pair_offsets[-1]), dtype=np.int32)
        for d0, d1, r0, r1 in blocks:
            self.pair_codes[self.pair_offsets[d0]:self.pair_offsets[d1]] = codes[r0:r1][pair_starts(d0, d1, r0, r1)]
        counts = np.zeros(self.codec.num_centroids, dtype=np.int64)
        pair_blocks = [(d0, d1, int(self.pair_offsets[d0]), int(self.pair_offsets[d1])) for d0, d1, _, _ in blocks]
        for _, _, p0, p1 in pair_blocks:
            counts += np.bincount(self.pair_codes[p0:p1], minlength=self.codec.num_centroids)
        self.ivf_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # Stable counting sort of the pairs by centroid, a block at a time: each block's pairs go to the next
        # free places of their centroids' lists, so every list keeps documents in ascending order.
        self.ivf_docs = np.empty(len(self.pair_codes), dtype=np.int32)
        fill = self.ivf_offsets[:-1].copy()
        for d0, d1, p0, p1 in pair_blocks:
            c = self.pair_codes[p0:p1]
            order = np.argsort(c, kind="stable")
            sorted_codes = c[order]
            docs = np.repeat(np.arange(d0, d1, dtype=np.int32), pair_counts[d0:d1])[order]
            uniq, first, n = np.unique(sorted_codes, return_index=True, return_counts=True)
            rank = np.arange(len(sorted_codes)) - np.repeat(first, n)
            self.ivf_docs[fill[sorted_codes] + rank] = docs
            fill[uniq] += n

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.position)

    @property
    def passages(self) -> dict | None:
        """The passage settings when documents were split ({"max_tokens", "overlap"}), else None."""
        return self.manifest.get("passages")

    def passages_of(self, doc_id: str) -> list[int]:
        """Positions of a document's live passages, in order (its own position when documents are not split)."""
        if not self.passages:
            return [self.position[doc_id]] if doc_id in self.position else []
        return self._passage_groups().get(doc_id, [])

    # ------------------------------------------------------------------ metadata filters
    def field_columns(self) -> list[dict | None]:
        """Per segment, its metadata columns {field: [FieldColumn per kind]} (None for a segment without documents)."""
        if self._fields is None:
            self._fields = [read_fields(self.path, rel, self.manifest["files"], entry, store, n)
                            for rel, entry, store, n in self._segment_fields]
        return self._fields

    def field_kinds(self) -> dict[str, set[str]]:
        """Every metadata field and its kinds (integer, number, date, text; nested: not filterable) across segments."""
        kinds: dict[str, set[str]] = {}
        for cols in self.field_columns():
            for name, columns in (cols or {}).items():
                kinds.setdefault(name, set()).update(col.kind for col in columns)
        return kinds

    def mixed_fields(self) -> dict[str, list[str]]:
        """The fields whose values are of more than one kind (each condition then runs on the values that fit)."""
        return {name: sorted(k) for name, k in self.field_kinds().items() if len(k - {"nested"}) > 1}

    def matching(self, where: WhereLike, kinds: dict[str, set[str]] | None = None) -> np.ndarray | None:
        """The live index entries that a filter matches, as a boolean mask over positions (None: no filter).

        Raises FilterError for an unknown field, a value of the wrong type or a malformed expression. kinds: the
        fields and kinds the filter is checked against instead of this index's own (a shard set's union, so that a
        field some other shard holds is not an error here: it matches nothing here)."""
        parsed = parse_where(where)
        if parsed is None:
            return None
        key = str(parsed) if kinds is None else f"{parsed}|{sorted((k, sorted(v)) for k, v in kinds.items())}"
        cached = self._matches.get(key)
        if cached is not None:
            return cached
        kinds = self.field_kinds() if kinds is None else kinds
        check_fields(parsed, kinds)
        mask = ~self.deleted
        for c in parsed.conditions:
            mask &= self._id_mask(c) if c.field == ID_FIELD else self._field_mask(c, kinds)
        mask.flags.writeable = False
        if len(self._matches) >= 64:   # repeated filters (a service's tenants) cost one evaluation
            self._matches.pop(next(iter(self._matches)))
        self._matches[key] = mask
        return mask

    # ------------------------------------------------------------------ lexical (BM25) side
    def lexical_search(self, query: str, k: int, where: WhereLike | np.ndarray = None) -> list[tuple[int, float]]:
        """BM25's top k (index position, score) among the live documents a filter (or a mask matching() made of
        one) matches (lexical.py)."""
        from ..lexical import bm25, top_k

        allowed = where if isinstance(where, np.ndarray) else self.matching(where)
        positions, scores = bm25(self._lexical(), query, allowed)
        return top_k(positions, scores, k)

    def lexical_search_many(self, queries: Sequence[str], k: int,
                            where: WhereLike | np.ndarray = None) -> list[list[tuple[int, float]]]:
        """lexical_search for many queries, scored together (lexical.bm25_many: one sparse product)."""
        from ..lexical import bm25_many, top_k_rows

        allowed = where if isinstance(where, np.ndarray) else self.matching(where)
        return top_k_rows(bm25_many(self._lexical(), queries, allowed), k)

    def _lexical(self):  # type: ignore[no-untyped-def]
        """The lexical Collection of this commit (made on first use: every load of a new generation resets it)."""
        from ..lexical import Collection

        if self.lexical is None:
            raise MedColbertError(f"{self.path} has no lexical index (built before it was kept, or without stored "
                                  "texts); add one with `medcolbert update --index PATH --lexical`")
        if self._lexical_collection is None:
            self._lexical_collection = Collection(self.lexical, self._doc_segment_starts[:-1].tolist(), ~self.deleted)
        return self._lexical_collection

    def build_lexical(self) -> int:
        """Write BM25 postings for every segment that lacks them, from its stored texts; returns how many segments."""
        from ..lexical import TOKENIZER, write_postings
        from .storage import StoredTexts

        with self._writing():
            manifest = dict(self.manifest)
            manifest["files"] = dict(manifest["files"])
            segments, done = [], 0
            for seg, store in zip(manifest["segments"], self._stores):
                if seg.get("lexical") == TOKENIZER:
                    segments.append(seg)
                    continue
                if store is None:
                    raise MedColbertError(f"{self.path}: segment {seg['name']} stores no texts to index lexically")
                rel = f"segments/{seg['name']}"
                texts = StoredTexts({"texts": store.texts, "text_offsets": store.text_offsets})
                manifest["files"].update(write_postings(self.path, rel, texts))
                segments.append({**seg, "lexical": TOKENIZER})
                done += 1
            if done:
                manifest["segments"] = segments
                self._commit(manifest)
            return done

    def _field_mask(self, c: Condition, kinds: dict[str, set[str]] | None = None) -> np.ndarray:
        # Strings read as numbers only where no segment holds text in the field (then nothing is ambiguous).
        lenient = "text" not in (kinds if kinds is not None else self.field_kinds()).get(c.field, set())
        parts = []
        for (_, _, _, n), cols in zip(self._segment_fields, self.field_columns()):
            mask = np.zeros(n, dtype=bool)
            for col in (cols or {}).get(c.field, []):
                mask |= column_mask(col, c, lenient)
            parts.append(mask)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def _id_mask(self, c: Condition) -> np.ndarray:
        if c.op not in ("eq", "in"):
            raise FilterError(f"filter: document ids are compared with = or in, not {c.op}")
        mask = np.zeros(len(self.doc_ids), dtype=bool)
        for v in c.values:
            mask[self.passages_of(str(v))] = True
        return mask

    def _passage_groups(self) -> dict[str, list[int]]:
        """Document id -> positions of its live passages, built once per load of a split index."""
        if self._passages_of is None:
            groups: dict[str, list[int]] = {}
            for unit, pos in self.position.items():
                groups.setdefault(parent_of(unit), []).append(pos)
            self._passages_of = {d: sorted(p) for d, p in groups.items()}
        return self._passages_of

    @property
    def num_documents(self) -> int:
        """Live documents (with split documents: distinct documents, not passages)."""
        if not self.passages:
            return len(self.position)
        return len(self._passage_groups())

    @property
    def num_embeddings(self) -> int:
        """Token vectors stored (deleted documents included until compaction)."""
        return int(self.doc_offsets[-1])

    def residual_rows(self, rows: np.ndarray) -> np.ndarray:
        """Packed residuals of global embedding rows (sorted ascending for sequential reads)."""
        if len(self._residual_parts) == 1:
            return np.asarray(self._residual_parts[0][rows])
        seg = np.searchsorted(self._segment_starts, rows, side="right") - 1
        out = np.empty((len(rows), self.codec.bytes_per_residual), dtype=np.uint8)
        for s in np.unique(seg):
            mask = seg == s
            out[mask] = self._residual_parts[s][rows[mask] - self._segment_starts[s]]
        return out

    def embedding_rows(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global embedding rows of some documents, concatenated, and each document's count."""
        return ranges(self.doc_offsets[docs], self.doc_offsets[docs + 1]), self.doclens[docs]

    def document_vectors(self, docs: Sequence[int] | np.ndarray) -> list[torch.Tensor]:
        """Decompressed vectors of documents given by position, each [n_tokens, dim]."""
        docs = np.asarray(docs, dtype=np.int64)
        rows, lens = self.embedding_rows(docs)
        flat = self.codec.decompress(self.codes[rows], self.residual_rows(rows))
        return list(torch.split(flat, lens.tolist()))

    @property
    def has_documents(self) -> bool:
        """Whether every segment stores its documents' texts (search can return them)."""
        return bool(self._stores) and all(st is not None for st in self._stores)

    def document(self, doc: str | int) -> dict:
        """{"id", "text", "metadata"} of a document, by id or position (the index must store documents).

        With split documents, a document id gives the whole text; a passage id or position gives that passage,
        under its document's id, with "passage" (its number)."""
        if self.passages and isinstance(doc, str) and SEPARATOR not in doc:
            positions = self.passages_of(doc)
            if not positions:
                raise KeyError(f"document '{doc}' is not in the index")
            parts = [self._stored(p) for p in positions]
            text, meta = join_passages([(t, m) for _, t, m in parts])
            return {"id": doc, "text": text, "metadata": meta}
        position = self.position.get(doc) if isinstance(doc, str) else int(doc)
        if position is None:
            raise KeyError(f"document '{doc}' is not in the index")
        unit, text, meta = self._stored(position)
        if SPAN_KEY in meta:
            n = meta.pop(SPAN_KEY)[0]
            return {"id": parent_of(unit), "text": text, "metadata": meta, "passage": n}
        return {"id": unit, "text": text, "metadata": meta}

    def texts(self) -> dict[str, str]:
        """{stored id: text} of every live document (passage ids for a split index), for first stages over it."""
        return {unit: self._stored(position)[1] for unit, position in self.position.items()}

    def _stored(self, position: int) -> tuple[str, str, dict]:
        """(stored id, text, raw metadata) at a position."""
        seg = int(np.searchsorted(self._doc_segment_starts, position, side="right") - 1)
        store = self._stores[seg]
        if store is None:
            raise MedColbertError(f"{self.path} does not store document texts (built with store_documents=False "
                                  "or by medcolbert < 0.2); rebuild it to return documents")
        i = position - int(self._doc_segment_starts[seg])
        return self.doc_ids[position], store.text(i), store.metadata(i)

    def stats(self) -> dict:
        """Sizes on disk: the search structures (total and per vector, per file kind) and the document store."""
        from .storage import STORE_FILES

        all_files = self.manifest["files"]
        store_kinds = set(STORE_FILES)
        files = {rel: f for rel, f in all_files.items() if Path(rel).stem not in store_kinds}
        store_bytes = sum(f["bytes"] for rel, f in all_files.items() if Path(rel).stem in store_kinds)
        total = sum(f["bytes"] for f in files.values())
        by_kind: dict[str, int] = {}
        for rel, info in files.items():
            kind = Path(rel).stem
            by_kind[kind] = by_kind.get(kind, 0) + info["bytes"]
        n = max(1, self.num_embeddings)
        extra = {"passages": len(self)} if self.passages else {}
        return {"documents": self.num_documents, **extra, "embeddings": self.num_embeddings, "centroids": self.codec.num_centroids,
                "nbits": self.nbits, "dim": self.codec.dim, "bytes_total": total,
                "bytes_per_embedding": total / n,
                "bytes_per_embedding_by_file": {k: v / n for k, v in sorted(by_kind.items())},
                "document_store_bytes": store_bytes}

    def load_model(self, model: str | None = None, device: str | None = None,  # type: ignore[no-untyped-def]
                   query_encoder: str | None = None):
        """The model this index was built with (by the name its manifest records), or `model` instead.

        query_encoder: 'distilled' (or a folder) encodes queries with a distilled student; documents are unchanged.

        Fails naming the model and its weight fingerprint when it cannot be found here.
        """
        from ..errors import CheckpointError
        from ..modeling.encoder import ColBERT

        recorded = self.manifest["model"]
        source = model if model is not None else recorded.get("source")
        doc_maxlen = recorded.get("config", {}).get("doc_maxlen")
        overrides = {"doc_maxlen": doc_maxlen} if doc_maxlen else {}
        # A plain encoder's seeded projection is made again the same way (the fingerprint check then holds).
        fresh = model is None and bool(recorded.get("new_projection"))
        try:
            loaded = ColBERT.from_pretrained(source, device=device, new_projection=fresh, query_encoder=query_encoder,
                                             **overrides)
        except CheckpointError as exc:
            if model is not None or query_encoder not in (None, "full"):
                raise
            raise MedColbertError(f"{self.path} was built with model '{recorded.get('name')}' (source {source!r}, "
                                  f"weights {recorded.get('fingerprint')}), which cannot be loaded here ({exc}); pass "
                                  "that checkpoint with --model / load_model(model=...)") from None
        return loaded

    def pooled_vectors(self, docs: Sequence[int] | np.ndarray) -> torch.Tensor:
        """The pooled single vectors [n, hidden] (float32) of documents given by position."""
        if self.pooled is None:
            raise MedColbertError(f"{self.path} holds no pooled vectors (built with a model without a pooled head)")
        rows = np.asarray(docs, dtype=np.int64)
        out = np.asarray(self.pooled[rows], dtype=np.float32)
        return torch.from_numpy(out * self.pooled_scale[rows, None] if self.pooled_scale is not None else out)

    def pooled_cosines(self, query_pooled: torch.Tensor, block: int = 1 << 16) -> torch.Tensor:
        """Cosine [documents] of one pooled query vector with every document's (int8 rows: a compiled loop on CPU)."""
        if self.pooled is None:
            raise MedColbertError(f"{self.path} holds no pooled vectors (built with a model without a pooled head)")
        q = np.ascontiguousarray(query_pooled.detach().float().cpu().numpy())
        kernel = _cpu_kernel()
        if kernel is not None and self.pooled.dtype == np.int8 and self.pooled.flags.c_contiguous:
            # int8 rows times the query in one compiled loop: numpy would widen every row to float32 first.
            return torch.from_numpy(kernel.int8_rows_dot(self.pooled, q, self.pooled_scale))
        out = np.empty(len(self.pooled), dtype=np.float32)
        # Blocks: the stored int8 (or float16) rows are widened a block at a time, never the whole array at once.
        for start in range(0, len(self.pooled), block):
            out[start:start + block] = np.asarray(self.pooled[start:start + block], dtype=np.float32) @ q
        if self.pooled_scale is not None:
            out *= self.pooled_scale
        return torch.from_numpy(out)

    @property
    def maxsim_only(self) -> bool:
        """Whether the index records that it is scored by MaxSim alone (built from vectors without pooled ones)."""
        return self.manifest.get("scoring") == "maxsim"

    def check_model(self, model) -> None:  # type: ignore[no-untyped-def]
        """Refuse a model whose vectors cannot be compared with this index's."""
        built_with = self.manifest["model"]
        if has_pooled_head(model) and self.pooled is None and len(self.doc_ids) and not self.maxsim_only:
            raise MedColbertError(f"the model scores with a pooled single-vector head (dense_weight "
                                  f"{model.config.dense_weight}) but {self.path} holds no pooled vectors; rebuild the "
                                  "index with this model, or use model.reconfigure(dense_weight=0) for MaxSim alone")
        if model.config.dim != self.codec.dim:
            raise MedColbertError(f"the model makes {model.config.dim}-dim vectors but the index {self.path} "
                                  f"holds {self.codec.dim}-dim vectors; use the model the index was built with "
                                  f"({built_with.get('name')})")
        if model.fingerprint(weights_only=True) != built_with.get("fingerprint"):
            warnings.warn(f"{self.path} was built with another model ({built_with.get('name')}, weights "
                          f"{built_with.get('fingerprint')}); scores will not be comparable", stacklevel=2)

    # ------------------------------------------------------------------ updates
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the index's write lock (across processes) with this object brought up to date first."""
        # Two writers that both read generation N would each commit an N+1 that drops the other's change;
        # the lock serializes them, and the reload makes each start from the latest commit.
        with open(self.path / ".write.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if read_manifest(self.path).get("generation") != self.manifest.get("generation"):
                    self.manifest = read_manifest(self.path)
                    self._load()
                # Segment folders of a writer killed after its commit (a compaction's old segments) or before it
                # are collected here, under the lock, where no other writer can be placing one.
                for name in self.leftover_segments():
                    shutil.rmtree(self.path / "segments" / name, ignore_errors=True)
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, documents: EncodedDocuments) -> int:
        """Append encoded documents (`EncodedDocuments.encode(model, texts, index=index)`) as a new segment;
        returns how many documents were added."""
        return self.update(add=documents)["added"]

    def update(self, add: EncodedDocuments | None = None, delete: Sequence[str] = ()) -> dict:
        """Delete and add documents in one commit: either both happen or neither does.

        add: documents encoded by the caller (`EncodedDocuments.encode(model, texts, metadata, index=self)`, which
        splits them into passages as this index was built); the index itself never runs a model."""
        if add is not None and not isinstance(add, EncodedDocuments):
            raise TypeError("Index.update(add=) takes EncodedDocuments: encode texts with "
                            "EncodedDocuments.encode(model, documents, metadata, index=index)")
        add = add or EncodedDocuments({}, [])
        delete = check_id_list(delete, "Index.update(delete=)")
        for d in delete:
            try:
                check_id(d, "document id to delete")
            except ValueError as exc:
                raise MedColbertError(str(exc)) from None
        if self.passages:
            if add.texts and not add.split:
                raise MedColbertError("this index splits documents into passages: encode the added documents with "
                                      "EncodedDocuments.encode(model, documents, index=index)")
            # Documents come and go whole: a delete removes every passage.
            delete = [p for d in delete for p in self._passage_ids(d)]
        elif add.split:
            raise MedColbertError("these documents were split into passages for another index; this one keeps "
                                  "documents whole")
        check_vectors(add, self.codec.dim, None if self.pooled is None else self.pooled.shape[1], bool(len(self.doc_ids)))
        vectors, pooled, metadata, add_texts = add.vectors, add.pooled, add.metadata, add.texts
        with self._writing():
            manifest = dict(self.manifest)
            if delete:
                manifest = self._tombstone_manifest(manifest, delete)
            if add:
                survivors = {d for d in self.position if d not in set(delete)}
                # Named by document: a split document's passage 0 clashes whenever the document does.
                clash = list(dict.fromkeys(parent_of(d) for d in add_texts if d in survivors))
                if clash:
                    raise MedColbertError(f"{len(clash)} document ids are already in the index, e.g. '{clash[0]}' "
                                          "(delete them first to replace them)")
                manifest = self._append_manifest(manifest, list(add_texts), vectors, list(add_texts.values()),
                                                 [metadata.get(d) for d in add_texts], pooled)
            if delete or add:
                self._commit(manifest)
        if self.passages:
            return {"added": len({parent_of(u) for u in add_texts}), "deleted": len({parent_of(u) for u in delete}),
                    "passages_added": len(add_texts), "passages_deleted": len(delete)}
        return {"added": len(add_texts), "deleted": len(delete)}

    def _passage_ids(self, doc_id: str) -> list[str]:
        """The ids of a document's live passages; refuses an unknown document."""
        positions = self.passages_of(doc_id)
        if not positions:
            raise MedColbertError(f"document '{doc_id}' is not in the index")
        return [self.doc_ids[p] for p in positions]

    def _append_manifest(self, manifest: dict, ids: list[str], vectors: list[torch.Tensor],
                         texts: list[str], metas: list[dict | None], pooled: torch.Tensor | None = None) -> dict:
        from .storage import encode_store

        doclens = np.array([v.shape[0] for v in vectors], dtype=np.int64)
        codes, residuals = self.codec.compress(torch.cat(vectors))
        # New documents keep their texts whenever the index keeps its others' (an empty index: always).
        store = encode_store(texts, metas) if self.has_documents or not self._stores else None
        entry, files = self._write_new_segment(ids, doclens, codes, residuals, store,
                                               pooled.numpy() if pooled is not None else None)
        manifest = dict(manifest)
        manifest["segments"] = [*manifest["segments"], entry]
        manifest["files"] = {**manifest["files"], **files}
        return manifest

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Mark documents deleted (they never come back in results); returns how many."""
        return self.update(delete=check_id_list(doc_ids, "Index.delete"))["deleted"]

    def _tombstone_manifest(self, manifest: dict, doc_ids: Sequence[str]) -> dict:
        unknown = [d for d in doc_ids if d not in self.position]
        if unknown:
            raise MedColbertError(f"{len(unknown)} document ids are not in the index, e.g. '{unknown[0]}'")
        positions = np.flatnonzero(self.deleted).tolist() + [self.position[d] for d in doc_ids]
        manifest = dict(manifest)
        gen = int(manifest.get("generation", 0)) + 1
        rel = f"deleted-{gen:06d}.npy"
        files = {k: v for k, v in manifest["files"].items() if k != manifest.get("deleted")}
        files[rel] = save_array(self.path / rel, np.array(sorted(set(positions)), dtype=np.int64))
        manifest["files"], manifest["deleted"] = files, rel
        return manifest

    def compact(self) -> dict:
        """Rewrite the live documents as one segment, reclaiming deleted space; returns stats before/after."""
        with self._writing():
            return self._compact()

    def _compact(self) -> dict:
        before = self.stats()
        from .storage import encode_store

        live = np.flatnonzero(~self.deleted)
        rows, lens = self.embedding_rows(live)
        store = None
        if self.has_documents:
            # The raw stored entries: a split document's passages keep their place (document() strips it).
            docs = [self._stored(int(i)) for i in live]
            store = encode_store([text for _, text, _ in docs], [meta or None for _, _, meta in docs])
        entry, files = self._write_new_segment([self.doc_ids[i] for i in live], lens, self.codes[rows],
                                               self.residual_rows(rows), store,
                                               self.pooled_vectors(live).numpy() if self.pooled is not None else None)
        failpoint("compact-before-commit")   # the new segment in place, no manifest naming it yet
        old = [s["name"] for s in self.manifest["segments"]]
        manifest = dict(self.manifest)
        manifest["segments"] = [entry]
        manifest["files"] = {k: v for k, v in manifest["files"].items()
                             if not k.startswith("segments/") and k != manifest.get("deleted")}
        manifest["files"].update(files)
        manifest["deleted"] = None
        self._commit(manifest)
        failpoint("compact-after-commit")
        for seg in old:  # only after the new manifest is in place
            shutil.rmtree(self.path / "segments" / seg, ignore_errors=True)
        for stale in self.path.glob("deleted-*.npy"):
            stale.unlink(missing_ok=True)
        return {"before": before, "after": self.stats()}

    def _write_new_segment(self, ids: list[str], doclens: np.ndarray, codes: np.ndarray,
                           residuals: np.ndarray, store: dict | None = None,
                           pooled: np.ndarray | None = None) -> tuple[dict, dict]:
        """Write a segment beside the index, then move it in; it counts once a manifest names it."""
        name = _next_segment_name(self.manifest)
        # Leftovers of a writer killed before its commit: a temp folder, or a segment no manifest names.
        for stale in self.path.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        target = self.path / "segments" / name
        if target.exists():
            shutil.rmtree(target)
        tmp_root = self.path / f".tmp-{name}-{os.getpid()}"
        entry, files = write_segment(tmp_root, name, ids, doclens, codes, residuals, store, pooled)
        (self.path / "segments").mkdir(exist_ok=True)
        os.replace(tmp_root / "segments" / name, target)
        shutil.rmtree(tmp_root, ignore_errors=True)
        return entry, files

    def _commit(self, manifest: dict) -> None:
        failpoint("update-before-commit")   # new files written, manifest not yet replaced
        manifest["generation"] = int(manifest.get("generation", 0)) + 1
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest["num_documents"] = sum(s["num_documents"] for s in manifest["segments"])
        write_manifest(self.path, manifest)
        self.manifest = read_manifest(self.path)
        self._load()
        # Delete files the new manifest no longer names (superseded tombstones), now that it is committed.
        for stale in self.path.glob("deleted-*.npy"):
            if stale.name not in self.manifest["files"]:
                stale.unlink(missing_ok=True)


def _next_segment_name(manifest: dict) -> str:
    used = [int(s["name"]) for s in manifest["segments"]]
    return f"{max(used, default=-1) + 1:05d}"


def new_manifest(model, codec: ResidualCodec, build_info: dict) -> dict:  # type: ignore[no-untyped-def]
    """The manifest of a fresh index, before its segments are added."""
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "generation": 0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"name": model.name, "source": model.source, "fingerprint": model.fingerprint(weights_only=True),
                      "config": model.config.to_dict(),
                      **({"new_projection": True} if getattr(model, "new_projection", False) else {})},
            "dim": codec.dim, "nbits": codec.nbits, "num_centroids": codec.num_centroids,
            "segments": [], "files": {}, "deleted": None, "build": build_info}


def _cpu_kernel():  # type: ignore[no-untyped-def]
    """The compiled CPU loops (search/_plaid_cpu.c), or None where they are not built or are turned off."""
    from ..search import cpu_kernel   # here, not at import: the search package imports this module

    return cpu_kernel.load()
