"""A collection split into shards: one index folder per shard under one set folder, every shard compressed with
one codec trained once on a sample of the whole collection, documents assigned by a stable hash of their id.

    SET/shards.json        the set's manifest: format, shard count, hash rule, the shared codec's checksum,
                           the model's fingerprint, each shard's folder and document count
    SET/shard-000/ ...     ordinary index folders (Index.open reads each one alone)

Why one codec: shards that train their own centroids prune on different cells and score the residuals of different
buckets, so their PLAID answers drift apart from one index's (experiments/scale/sharded/: overlap@10 0.69-0.76
with per-shard codecs); with one codec a shard's candidate stages are the one index's restricted to its documents,
and the set answers as the one index does whatever the shard count. (Own codecs are not less faithful to
uncompressed MaxSim: N of them hold about sqrt(N) times the centroids; docs/engine.md. A set that wants that
fidelity asks for more centroids.)

Adding a shard later changes `hash mod N` for most ids: documents move. That is a re-shard (build a new set; the
shared codec can be reused with `codec=`), not an in-place operation, and is not offered here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import IndexFormatError, MedColbertError
from ..fsutil import atomic_write_text
from ..validation import check_int
from .builder import CorpusSource, _read_codec, _train_codec, build_index, codec_checksum
from .index import Index

SET_FORMAT = "medcolbert-shard-set"
SET_VERSION = 1
HASH_RULE = "blake2b-64 of the UTF-8 id, little endian, mod shards"


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that owns a document id: the same in every process and on every machine (not Python's hash)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def route(doc_ids: Iterable[str], shards: int) -> dict[int, list[str]]:
    """Ids grouped by the shard that owns them (shards with none left out)."""
    out: dict[int, list[str]] = {}
    for d in doc_ids:
        out.setdefault(shard_of(d, shards), []).append(d)
    return out


def is_shard_set(path: str | Path) -> bool:
    """Whether a folder holds a shard set (its shards.json)."""
    return (Path(path) / "shards.json").is_file()


def read_set(path: str | Path) -> dict:
    """A shard set's manifest, checked: its format, version and shard folders."""
    path = Path(path)
    try:
        manifest = json.loads((path / "shards.json").read_text())
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is not a shard set (no shards.json)") from None
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}/shards.json cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SET_FORMAT:
        raise IndexFormatError(f"{path}/shards.json is not a {SET_FORMAT} manifest")
    if manifest.get("version") != SET_VERSION:
        raise IndexFormatError(f"{path}/shards.json has version {manifest.get('version')!r}; this medcolbert reads "
                               f"{SET_VERSION}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or len(shards) != manifest.get("count") or not shards:
        raise IndexFormatError(f"{path}/shards.json lists {len(shards) if isinstance(shards, list) else 'no'} shards "
                               f"for a count of {manifest.get('count')!r}")
    for entry in shards:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "/" in name or name.startswith(".") or \
                not (path / name / "manifest.json").is_file():
            raise IndexFormatError(f"{path}/shards.json names shard {name!r}, which is not an index folder there")
    return manifest


def open_set(path: str | Path, verify: bool = False) -> list[Index]:
    """Every shard of a set, opened, in shard order; refuses shards whose codec is not the set's."""
    path = Path(path)
    manifest = read_set(path)
    indexes = [Index.open(path / entry["name"], verify=verify) for entry in manifest["shards"]]
    for entry, index in zip(manifest["shards"], indexes):
        got = codec_checksum(index.codec)
        if got != manifest["codec"]:
            raise IndexFormatError(f"{index.path}: its codec ({got}) is not the set's ({manifest['codec']})")
    return indexes


def shard_name(s: int) -> str:
    """The folder name of shard s."""
    return f"shard-{s:03d}"


def build_set(path: str | Path, model: Any, corpus: Any, shards: int, nbits: int = 2, num_centroids: int | None = None,
              kmeans_niters: int = 10, seed: int = 0, show_progress: bool | None = None, batch_size: int = 32,
              overwrite: bool = False, use_gpu: bool | None = None, assignment: str = "auto", kmeans: str = "auto",
              **options: Any) -> Path:
    """Build a shard set at `path`: train one codec on a sample of the whole collection, then build each shard's
    index from the documents whose id hashes to it (shard_of), each with that codec. Resumable: the codec and each
    finished shard are kept, and a rerun with the same settings continues. options: as build_index (backend="ray"
    compresses each shard's chunks on Ray actors)."""
    check_int("shards", shards, 1, 4096)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MedColbertError(f"{path} is a file, not a shard set folder")
    if is_shard_set(path) and not overwrite:
        raise MedColbertError(f"{path} already holds a shard set; pass overwrite=True (--overwrite) to replace it")
    if path.exists() and not is_shard_set(path) and any(p.name != ".codec" for p in path.iterdir()):
        raise MedColbertError(f"{path} exists and is not a shard set; refusing to write into it")
    source = corpus if isinstance(corpus, CorpusSource) else CorpusSource(corpus)
    path.mkdir(parents=True, exist_ok=True)
    work = path / ".codec"
    settings = {"model": model.fingerprint(), "corpus": source.fingerprint(), "nbits": nbits,
                "num_centroids": num_centroids, "kmeans_niters": kmeans_niters, "seed": seed, "shards": shards}
    state = work / "settings.json"
    if work.exists() and (not state.is_file() or json.loads(state.read_text()) != settings):
        shutil.rmtree(work)   # another model, corpus or setting: the codec cannot be reused
    work.mkdir(exist_ok=True)
    if not state.exists():
        state.write_text(json.dumps(settings))
    if not (work / "codec" / "done").exists():
        # The codec's sample is drawn from the whole collection, sized by its whole token count.
        _train_codec(work, model, source, nbits, num_centroids, kmeans_niters, seed, batch_size,
                     bool(show_progress), use_gpu, assignment, kmeans)
    codec = _read_codec(work, nbits)
    checksum = codec_checksum(codec)
    entries = []
    for s in range(shards):
        target = path / shard_name(s)
        records = [r for r in source.iter_records() if shard_of(r[0], shards) == s]
        if not records:
            raise MedColbertError(f"shard {s} of {shards} would hold no documents ({len(source)} in the collection): "
                                  "use fewer shards")
        done = (target / "manifest.json").is_file() and _same_build(target, checksum, len(records))
        if not done:
            build_index(target, model, [{"id": i, "text": t, **({"metadata": m} if m else {})} for i, t, m in records],
                        nbits=nbits, seed=seed, show_progress=show_progress, batch_size=batch_size,
                        overwrite=True, use_gpu=use_gpu, assignment=assignment, codec=codec, **options)
        entries.append({"name": shard_name(s), "documents": len(records)})
    manifest = {"format": SET_FORMAT, "version": SET_VERSION, "count": shards, "hash": HASH_RULE,
                "codec": checksum, "model": model.fingerprint(), "nbits": nbits,
                "documents": sum(e["documents"] for e in entries), "shards": entries}
    atomic_write_text(path / "shards.json", json.dumps(manifest, indent=1) + "\n")
    # A set rebuilt with fewer shards: the old higher-numbered shard folders are no longer part of it.
    for old in path.glob("shard-[0-9][0-9][0-9]"):
        if int(old.name[6:]) >= shards:
            shutil.rmtree(old)
    shutil.rmtree(work / "sample", ignore_errors=True)   # the codec's k-means sample; the codec itself stays
    return path


def _same_build(target: Path, checksum: str, documents: int) -> bool:
    """Whether a shard folder is a finished build with this codec and document count (a rerun skips it)."""
    try:
        manifest = json.loads((target / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    info = manifest.get("build", {})
    return info.get("shared_codec") == checksum and manifest.get("num_documents") == documents
