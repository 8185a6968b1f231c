"""Triplet data sets in the Hugging Face datasets layout (MedEmbed's `abhinand/MedEmbed-training-triplets-v1`).

A spec is a hub data set id (fetched into, or reused from, the local Hugging Face cache), a folder holding its
files (parquet shards such as data/train-00000-of-00001.parquet, a `save_to_disk` folder of .arrow files, or JSONL),
or one such file. Rows need a query column and a positive column; negatives are optional. Column names follow
the common spellings: query / anchor / question, pos / positive / positives, neg / negative / negatives (a string
or a list of strings each).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from ..validation import is_blank
from .data import Triplet

QUERY_COLUMNS = ("query", "anchor", "question")
POS_COLUMNS = ("pos", "positive", "positives")
NEG_COLUMNS = ("neg", "negative", "negatives")
MEDEMBED_TRIPLETS = "abhinand/MedEmbed-training-triplets-v1"


def _files(spec: str) -> list[Path]:
    """The data files of a spec: local files, or the hub data set's files from the HF cache."""
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
            raise DataError(f"{spec}: no such file or folder, and not a hub data set id (owner/name)")
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(spec, repo_type="dataset",
                                          allow_patterns=["*.parquet", "*.arrow", "*.jsonl", "*.json"]))
        except Exception as exc:  # the hub client raises many types: offline, unknown repo, auth
            raise DataError(f"{spec}: not a local path and could not be fetched from the Hugging Face hub ({exc})") from None
    if path.is_file():
        return [path]
    # The default configuration's train split where the layout has several (MedEmbed's: data/, corpus/, queries/).
    for pattern in ("data/train-*.parquet", "default/train/*.parquet", "train-*.parquet", "*.parquet",
                    "train/*.arrow", "*.arrow", "*.jsonl", "**/*.parquet"):
        found = sorted(p for p in path.glob(pattern) if p.is_file())
        if found:
            return found
    raise DataError(f"{path}: no parquet, arrow or JSONL files of a triplet data set")


def _rows(file: Path) -> Iterator[tuple[int, dict]]:
    if file.suffix == ".jsonl":
        from ..evaluation.datasets import iter_jsonl

        yield from iter_jsonl(file)
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet / arrow triplet data sets needs pyarrow (pip install 'medcolbert[hub-data]')",
                        file) from None

    if file.suffix == ".parquet":
        table = pq.read_table(file)
    else:  # datasets' save_to_disk writes Arrow streams
        with pa.memory_map(str(file)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(source).read_all()
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row


def _column(row: dict, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in row), None)


def _texts(value: object, file: Path, line: int, column: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, str) for t in items):
        raise DataError(f"column '{column}' must hold a string or a list of strings", file, line)
    return tuple(t for t in items if not is_blank(t))


def read_triplet_set(spec: str, limit: int | None = None, source: str = "medembed-triplets") -> list[Triplet]:
    """The triplets of a data set spec (module docstring), at most `limit`, tagged with `source`."""
    out: list[Triplet] = []
    for file in _files(spec):
        for line, row in _rows(file):
            q, p, n = _column(row, QUERY_COLUMNS), _column(row, POS_COLUMNS), _column(row, NEG_COLUMNS)
            if q is None or p is None:
                raise DataError(f"a triplet row needs a query column ({' / '.join(QUERY_COLUMNS)}) and a positive "
                                f"column ({' / '.join(POS_COLUMNS)}); found {sorted(row)}", file, line)
            query = row[q]
            if not isinstance(query, str) or is_blank(query):
                raise DataError(f"column '{q}' is empty or not a string", file, line)
            pos = _texts(row[p], file, line, p)
            if not pos:
                raise DataError(f"column '{p}' has no text", file, line)
            neg = _texts(row.get(n), file, line, n) if n else ()
            out.append(Triplet(query, pos, neg, meta={"source": source}))
            if limit is not None and len(out) >= limit:
                return out
    if not out:
        raise DataError(f"{spec}: no triplets")
    return out
