"""The index on disk: a folder of plain .npy arrays plus manifest.json; segments, checksums, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexFormatError
from ..filters import KINDS, FieldColumn, columns_from, field_columns
from ..packing import pack_strings  # noqa: F401 - re-exported: callers import it from here
from ..lexical import LEXICAL_FILES, LexicalSegment, write_postings
from ..lexical import TOKENIZER as LEXICAL_TOKENIZER

FORMAT_NAME = "medcolbert-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ESCAPE = 255  # a code delta of 255 means: the absolute code is the next entry of code_escapes
# np.load parses .npy headers with ast.literal_eval, which is not thread-safe in CPython (a search
# thread and a reload thread once collided in the service); one lock makes header reads one at a time.
_NPY_LOCK = threading.Lock()
_SEGMENT_NAME = re.compile(r"^[0-9]{5}$")


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def save_array(path: Path, array: np.ndarray) -> dict:
    """Write one .npy (no pickle) and return its size and checksum for the manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        # On disk before any manifest names it: an acknowledged update must survive a crash.
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def load_array(root: Path, rel: str, files: dict, mmap: bool = False) -> np.ndarray:
    """Read one array named in the manifest, with a clear error if it is missing or truncated."""
    path = root / rel
    if not path.is_file():
        raise IndexFormatError(f"{root}: the index is missing {rel}")
    expected = files.get(rel, {}).get("bytes")
    if expected is not None and path.stat().st_size != expected:
        raise IndexFormatError(f"{root}: {rel} has {path.stat().st_size} bytes, the manifest says {expected} "
                               "(truncated or overwritten)")
    try:
        with _NPY_LOCK:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFormatError(f"{root}: {rel} is not a readable .npy array ({exc})") from None


def encode_ids(ids: list[str]) -> np.ndarray:
    """Document ids as a fixed-width UTF-8 bytes array (compact, and loadable without pickle)."""
    encoded = [i.encode("utf-8") for i in ids]
    width = max((len(e) for e in encoded), default=1) or 1
    return np.array(encoded, dtype=f"S{width}")


def decode_ids(array: np.ndarray) -> list[str]:
    """The inverse of encode_ids."""
    return [b.decode("utf-8") for b in array.tolist()]


def sort_within_documents(codes: np.ndarray, doclens: np.ndarray) -> np.ndarray:
    """The order that sorts each document's vectors by centroid (MaxSim ignores token order)."""
    doc_of = np.repeat(np.arange(len(doclens), dtype=np.int64), doclens)
    return np.lexsort((codes, doc_of))


def encode_code_deltas(codes: np.ndarray, doclens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes sorted within documents as uint8 deltas (escape 255 -> absolute value in the second array)."""
    codes = codes.astype(np.int64)
    starts = np.zeros(len(codes), dtype=bool)
    offsets = np.concatenate([[0], np.cumsum(doclens)])[:-1]
    starts[offsets[doclens > 0]] = True
    prev = np.concatenate([[0], codes[:-1]])
    prev[starts] = 0
    delta = codes - prev
    if (delta < 0).any():
        raise ValueError("codes must be sorted within each document")
    escape = delta >= ESCAPE
    deltas = np.where(escape, ESCAPE, delta).astype(np.uint8)
    escapes = codes[escape].astype(np.uint16 if codes.max(initial=0) < 65536 else np.int32)
    return deltas, escapes


def document_blocks(doclens: np.ndarray, block: int = 1 << 22) -> list[tuple[int, int, int, int]]:
    """(first doc, end doc, first row, end row) of consecutive document runs of about `block` vectors each.

    Index opening works block by block so that its int64 temporaries are bounded by the block, not the corpus.
    """
    offsets = np.concatenate([[0], np.cumsum(doclens, dtype=np.int64)])
    n, ndocs = int(offsets[-1]), len(doclens)
    cuts = np.unique(np.searchsorted(offsets, np.arange(0, n, block, dtype=np.int64), side="right") - 1)
    docs = [int(d) for d in cuts if d < ndocs] + [ndocs]
    if docs[0] != 0:
        docs.insert(0, 0)
    return [(a, b, int(offsets[a]), int(offsets[b])) for a, b in zip(docs[:-1], docs[1:])]


def decode_code_deltas(deltas: np.ndarray, escapes: np.ndarray, doclens: np.ndarray,
                       out: np.ndarray | None = None, block: int = 1 << 22) -> np.ndarray:
    """Centroid id of every vector, int32, from the delta encoding (written into `out` when given)."""
    n = len(deltas)
    out = np.empty(n, dtype=np.int32) if out is None else out
    if n == 0:
        if len(escapes):
            raise IndexFormatError(f"code escapes: 0 markers but {len(escapes)} values")
        return out
    doclens = np.asarray(doclens, dtype=np.int64)
    used = 0
    for d0, d1, r0, r1 in document_blocks(doclens, block):
        d = np.asarray(deltas[r0:r1])
        escape = d == ESCAPE
        k = int(escape.sum())
        if used + k > len(escapes):
            raise IndexFormatError(f"code escapes: more markers than the {len(escapes)} values")
        values = d.astype(np.int64)
        values[escape] = escapes[used:used + k].astype(np.int64)
        used += k
        reset = escape
        lens = doclens[d0:d1]
        starts_local = np.concatenate([[0], np.cumsum(lens)])[:-1]
        reset[starts_local[lens > 0]] = True
        # Running sum that restarts at every document start and at every escape (absolute value).
        csum = np.cumsum(values)
        group = np.cumsum(reset) - 1
        starts = np.flatnonzero(reset)
        out[r0:r1] = csum - (csum[starts] - values[starts])[group]
    if used != len(escapes):
        raise IndexFormatError(f"code escapes: {used} markers but {len(escapes)} values")
    return out


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each pair, without a Python loop."""
    lens = ends - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(total)


@dataclass
class SegmentData:
    """The arrays of one segment as read back: ids, lengths, decoded codes, memory-mapped residuals, and the
    document store (texts and metadata) when the segment has one."""

    doc_ids: list[str]
    doclens: np.ndarray
    codes: np.ndarray
    residuals: np.ndarray
    store: "DocumentStore | None" = None
    pooled: np.ndarray | None = None   # [documents, hidden]: the model's pooled single vectors, if it has that head;
                                       # int8 (times pooled_scale per row) or, in indexes written before, float16
    pooled_scale: np.ndarray | None = None  # [documents] float32, with int8 pooled vectors


class DocumentStore:
    """Texts and metadata of a segment's documents: UTF-8 bytes in one memory-mapped uint8 array, offsets beside.

    Plain arrays like the rest of the index (no database): reading a document is two offsets and a slice.
    """

    def __init__(self, texts: np.ndarray, text_offsets: np.ndarray, meta: np.ndarray, meta_offsets: np.ndarray) -> None:
        n = len(text_offsets) - 1
        if n < 0 or len(meta_offsets) != n + 1 or int(text_offsets[-1]) != len(texts) or int(meta_offsets[-1]) != len(meta):
            raise IndexFormatError("document store arrays disagree in size (damaged index)")
        self.texts, self.text_offsets, self.meta, self.meta_offsets = texts, text_offsets, meta, meta_offsets

    def __len__(self) -> int:
        return len(self.text_offsets) - 1

    def text(self, i: int) -> str:
        """The text of the segment's i-th document."""
        return bytes(self.texts[int(self.text_offsets[i]):int(self.text_offsets[i + 1])]).decode("utf-8")

    def metadata(self, i: int) -> dict:
        """The metadata of the segment's i-th document ({} when it has none)."""
        raw = bytes(self.meta[int(self.meta_offsets[i]):int(self.meta_offsets[i + 1])])
        return json.loads(raw) if raw else {}


def encode_store(texts: list[str], metas: list[dict | None] | None = None) -> dict[str, np.ndarray]:
    """The four document store arrays of some documents."""
    text_bytes, text_offsets = pack_strings([t.encode("utf-8") for t in texts])
    metas = metas or [None] * len(texts)
    meta_bytes, meta_offsets = pack_strings([json.dumps(m, ensure_ascii=False, sort_keys=True).encode("utf-8")
                                             if m else b"" for m in metas])
    return {"texts": text_bytes, "text_offsets": text_offsets, "meta": meta_bytes, "meta_offsets": meta_offsets}


STORE_FILES = ("texts", "text_offsets", "meta", "meta_offsets")


def read_segment(root: Path, rel: str, files: dict, codes_out: np.ndarray | None = None) -> SegmentData:
    """Read the segment written by write_segment under root/rel, decoding its centroid ids (into codes_out
    when given, so that the caller's array of all segments' codes is filled without a concatenated copy)."""
    lens = load_array(root, f"{rel}/doclens.npy", files).astype(np.int64)
    deltas = load_array(root, f"{rel}/code_deltas.npy", files, mmap=True)
    escapes = load_array(root, f"{rel}/code_escapes.npy", files)
    residuals = load_array(root, f"{rel}/residuals.npy", files, mmap=True)
    ids = decode_ids(load_array(root, f"{rel}/doc_ids.npy", files))
    if deltas.shape[0] != int(lens.sum()) or len(ids) != len(lens):
        raise IndexFormatError(f"{root}: {rel} arrays disagree in size (damaged index)")
    store = None
    if f"{rel}/texts.npy" in files:
        arrays = [load_array(root, f"{rel}/{name}.npy", files, mmap=name in ("texts", "meta")) for name in STORE_FILES]
        try:
            store = DocumentStore(*arrays)
        except IndexFormatError as exc:
            raise IndexFormatError(f"{root}: {rel}: {exc}") from None
        if len(store) != len(ids):
            raise IndexFormatError(f"{root}: {rel} stores {len(store)} texts for {len(ids)} documents")
    if codes_out is not None and len(codes_out) != deltas.shape[0]:
        raise IndexFormatError(f"{root}: {rel} holds {deltas.shape[0]} vectors, the manifest says {len(codes_out)}")
    pooled, scale = None, None
    if f"{rel}/pooled.npy" in files:
        pooled = load_array(root, f"{rel}/pooled.npy", files, mmap=True)
        if pooled.ndim != 2 or pooled.shape[0] != len(ids) or pooled.dtype not in (np.int8, np.float16):
            raise IndexFormatError(f"{root}: {rel}/pooled.npy has shape {pooled.shape} ({pooled.dtype}) for "
                                   f"{len(ids)} documents; expected int8 or float16 [{len(ids)}, hidden]")
        if pooled.dtype == np.int8:
            if f"{rel}/pooled_scale.npy" not in files:
                raise IndexFormatError(f"{root}: {rel} holds int8 pooled vectors but no pooled_scale.npy (damaged index)")
            scale = load_array(root, f"{rel}/pooled_scale.npy", files, mmap=False)
            if scale.shape != (len(ids),) or scale.dtype != np.float32 or not np.isfinite(scale).all():
                raise IndexFormatError(f"{root}: {rel}/pooled_scale.npy has shape {scale.shape} ({scale.dtype}); "
                                       f"expected {len(ids)} finite float32 values")
    return SegmentData(ids, lens, decode_code_deltas(deltas, escapes, lens, out=codes_out), residuals, store, pooled,
                       scale)


def quantize_pooled(pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pooled vectors [n, hidden] as int8 rows and one float32 scale per row (value = int8 x scale)."""
    pooled = np.asarray(pooled, dtype=np.float32)
    if not np.isfinite(pooled).all():
        raise ValueError("pooled vectors hold non-finite values")
    # One scale per row, from its largest component: half float16's bytes, and v3 reranking consumer-health dev
    # moves by at most 0.0025 nDCG@10 either way (experiments/releases/recipe-studies/v3-weights/).
    scale = (np.abs(pooled).max(axis=1) / 127.0).astype(np.float32) if pooled.size else np.zeros(len(pooled), np.float32)
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    return np.clip(np.rint(pooled / safe), -127, 127).astype(np.int8), scale


def write_segment(root: Path, name: str, doc_ids: list[str], doclens: np.ndarray, codes: np.ndarray,
                  residuals: np.ndarray, store: dict[str, np.ndarray] | None = None,
                  pooled: np.ndarray | None = None) -> tuple[dict, dict]:
    """Write a segment's arrays (its document store and pooled single vectors, if given) under
    root/segments/name; returns (segment entry, file entries)."""
    doclens = np.asarray(doclens, dtype=np.int64)
    order = sort_within_documents(codes, doclens)
    codes, residuals = codes[order], residuals[order]
    deltas, escapes = encode_code_deltas(codes, doclens)
    rel = f"segments/{name}"
    files = {
        f"{rel}/doc_ids.npy": save_array(root / rel / "doc_ids.npy", encode_ids(doc_ids)),
        f"{rel}/doclens.npy": save_array(root / rel / "doclens.npy", doclens.astype(np.int32)),
        f"{rel}/code_deltas.npy": save_array(root / rel / "code_deltas.npy", deltas),
        f"{rel}/code_escapes.npy": save_array(root / rel / "code_escapes.npy", escapes),
        f"{rel}/residuals.npy": save_array(root / rel / "residuals.npy", residuals),
    }
    for key, array in (store or {}).items():
        files[f"{rel}/{key}.npy"] = save_array(root / rel / f"{key}.npy", array)
    fields: dict[str, dict] = {}
    if store is not None:
        fields, field_files = write_fields(root, rel, store_metadata(store))
        files.update(field_files)
        files.update(write_postings(root, rel, StoredTexts(store)))
    if pooled is not None:
        if pooled.shape[0] != len(doc_ids):
            raise ValueError(f"{pooled.shape[0]} pooled vectors for {len(doc_ids)} documents")
        q8, scale = quantize_pooled(pooled)
        files[f"{rel}/pooled.npy"] = save_array(root / rel / "pooled.npy", q8)
        files[f"{rel}/pooled_scale.npy"] = save_array(root / rel / "pooled_scale.npy", scale)
    entry = {"name": name, "num_documents": len(doc_ids), "num_embeddings": int(doclens.sum()),
             "num_escapes": int(len(escapes))}
    if store is not None:
        entry["fields"] = fields
        entry["lexical"] = LEXICAL_TOKENIZER
    return entry, files


def write_fields(root: Path, rel: str, metas: list[dict | None]) -> tuple[dict[str, dict], dict]:
    """One column per metadata field under root/rel, the per-field index filtered searches read (filters.py);
    returns (the segment entry's "fields", file entries)."""
    fields, files = {}, {}
    columns = field_columns(metas)
    counts: dict[str, int] = {}
    for field, _, _ in columns:
        counts[field] = counts.get(field, 0) + 1
    for i, (field, kind, arrays) in enumerate(columns):
        for part, array in arrays.items():
            files[f"{rel}/field-{i}.{part}.npy"] = save_array(root / rel / f"field-{i}.{part}.npy", array)
        # A field of one kind is keyed by its name (as before mixed kinds were kept apart); a mixed one has a
        # column per kind, keyed name#kind, each naming its field.
        key = field if counts[field] == 1 else f"{field}#{kind}"
        fields[key] = {"kind": kind, "file": f"field-{i}", "parts": sorted(arrays), "field": field}
    return fields, files


class StoredTexts(Sequence):
    """A store's texts as a sequence decoded on access (a slice decodes only its own bytes), so that a pass over a
    large memory-mapped segment (its BM25 postings) holds one batch of texts at a time, not all of them."""

    def __init__(self, store: dict[str, np.ndarray]) -> None:
        self.raw, self.offsets = store["texts"], store["text_offsets"]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            if start >= stop:
                return []
            o = self.offsets[start:stop + 1]
            chunk = bytes(self.raw[o[0]:o[-1]])
            return [chunk[a - o[0]:b - o[0]].decode("utf-8") for a, b in zip(o[:-1].tolist(), o[1:].tolist())]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"text {i} of {len(self)}")
        return bytes(self.raw[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8")


def read_lexical(root: Path, rel: str, files: dict, entry: dict, n: int) -> "LexicalSegment | None":
    """A segment's BM25 postings (memory-mapped), or None for a segment written without them."""
    if entry.get("lexical") is None:
        return None
    if entry["lexical"] != LEXICAL_TOKENIZER:
        raise IndexFormatError(f"{root}: {rel}: lexical postings made by {entry['lexical']!r}, which this version "
                               f"does not read (it makes {LEXICAL_TOKENIZER!r}); rebuild them with "
                               "`medcolbert update --index PATH --lexical`")
    arrays = {name: load_array(root, f"{rel}/{name}.npy", files, mmap=name in ("lex_docs", "lex_tf"))
              for name in LEXICAL_FILES}
    if len(arrays["lex_doclens"]) != n:
        raise IndexFormatError(f"{root}: {rel}: lexical postings for {len(arrays['lex_doclens'])} documents, "
                               f"the segment has {n}")
    return LexicalSegment(arrays)


def store_metadata(store: dict[str, np.ndarray]) -> list[dict | None]:
    """Every document's metadata in a store's arrays (as encode_store wrote them)."""
    raw, offsets = bytes(store["meta"]), store["meta_offsets"]
    return [json.loads(raw[offsets[i]:offsets[i + 1]]) if offsets[i + 1] > offsets[i] else None
            for i in range(len(offsets) - 1)]


def read_fields(root: Path, rel: str, files: dict, entry: dict, store: "DocumentStore | None",
                n: int) -> dict[str, list[FieldColumn]] | None:
    """A segment's metadata columns (memory-mapped): as written with it, or made now from its document store
    (a segment written before columns existed); None for a segment that keeps no documents."""
    if "fields" in entry:
        out: dict[str, list[FieldColumn]] = {}
        for key, spec in entry["fields"].items():
            field = spec.get("field", key) if isinstance(spec, dict) else key
            if not isinstance(spec, dict) or spec.get("kind") not in KINDS or not isinstance(spec.get("file"), str):
                raise IndexFormatError(f"{root}: {rel}: field {key!r} has a damaged entry in the manifest (kinds this "
                                       f"version reads: {', '.join(KINDS)})")
            arrays = {part: load_array(root, f"{rel}/{spec['file']}.{part}.npy", files, mmap=part == "data")
                      for part in spec.get("parts", ["data"])}
            if len(arrays["data"]) != n:
                raise IndexFormatError(f"{root}: {rel}: field {field!r} has {len(arrays['data'])} rows for {n} documents")
            out.setdefault(field, []).append(FieldColumn(spec["kind"], arrays["data"], arrays.get("values"),
                                                         arrays.get("value_offsets")))
        return out
    if store is None:
        return None
    return columns_from(field_columns(store_metadata({"meta": store.meta, "meta_offsets": store.meta_offsets})))


def read_manifest(root: Path, format_name: str = FORMAT_NAME, format_version: int = FORMAT_VERSION) -> dict:
    """The manifest of an index folder, checked for format, version, keys and value ranges."""
    if root.exists() and not root.is_dir():
        raise IndexFormatError(f"{root}: is a file, not an index folder")
    if not root.is_dir():
        raise IndexFormatError(f"{root}: no index folder there")
    path = root / MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{root}: no {MANIFEST}; not a medcolbert index (or an unfinished build)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{path}: expected a JSON object")
    if manifest.get("format") != format_name:
        raise IndexFormatError(f"{path}: not a {format_name} folder (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != format_version:
        raise IndexFormatError(f"{path}: {format_name} format version {version}, this medcolbert reads version "
                               f"{format_version}; rebuild it with this version")
    if format_name == FORMAT_NAME:
        validate_manifest(manifest, path)
    return manifest


def validate_manifest(m: dict, where: object) -> None:
    """Refuse a manifest with missing keys, wrong types or out-of-range values (one line naming the key)."""
    def bad(key: str, what: str) -> IndexFormatError:
        return IndexFormatError(f"{where}: '{key}' {what}")

    def whole(key: str, value: object, lo: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise bad(key, f"must be an integer >= {lo}, got {value!r}")
        return value

    for key in ("model", "dim", "nbits", "num_centroids", "segments", "files"):
        if key not in m:
            raise bad(key, "is missing")
    if not isinstance(m["model"], dict):
        raise bad("model", "must be an object")
    whole("dim", m["dim"], 1)
    whole("num_centroids", m["num_centroids"], 1)
    whole("generation", m.get("generation", 0))
    if m["nbits"] not in (1, 2, 4) or isinstance(m["nbits"], bool):
        raise bad("nbits", f"must be 1, 2 or 4, got {m['nbits']!r}")
    if not isinstance(m["files"], dict):
        raise bad("files", "must be an object of file entries")
    for rel, info in m["files"].items():
        parts = Path(rel).parts
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in parts or not parts:
            raise bad("files", f"names a path outside the index: {rel!r}")
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise bad(f"files.{rel}", "must have 'bytes' and 'sha256'")
        whole(f"files.{rel}.bytes", info.get("bytes"))
    if not isinstance(m["segments"], list):
        raise bad("segments", "must be a list")
    for i, seg in enumerate(m["segments"]):
        if not isinstance(seg, dict) or not isinstance(seg.get("name"), str) or not _SEGMENT_NAME.match(seg["name"]):
            raise bad(f"segments[{i}]", "must have a five-digit 'name'")
        whole(f"segments[{i}].num_documents", seg.get("num_documents"))
        whole(f"segments[{i}].num_embeddings", seg.get("num_embeddings"))
    if "num_documents" in m and whole("num_documents", m["num_documents"]) != sum(
            seg["num_documents"] for seg in m["segments"]):
        raise bad("num_documents", "disagrees with the segments' document counts")
    deleted = m.get("deleted")
    if deleted is not None and (not isinstance(deleted, str) or deleted not in m["files"]):
        raise bad("deleted", f"must be null or a file the manifest lists, got {deleted!r}")


def write_manifest(root: Path, manifest: dict) -> None:
    """Replace the manifest atomically: it is the commit point of every change to the index."""
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=root)
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
