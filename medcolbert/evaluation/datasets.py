"""Readers and writers for BEIR folders, TREC run files and qrels; bad input names its file and line."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..validation import id_problem, is_blank, text_problem

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Document:
    """One corpus entry."""

    doc_id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and body as the models see them."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass
class BeirDataset:
    """A corpus, the queries of one split and their relevance judgments."""

    name: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: Qrels
    split: str = "test"
    path: Path | None = field(default=None)

    def texts(self, doc_ids: list[str]) -> list[str]:
        """The full texts of some documents, in order."""
        return [self.corpus[d].full_text for d in doc_ids]


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a UTF-8 file; bad bytes are a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror})", path) from None
    with f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                                path, line_no) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file."""
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})", path, line_no) from None
        except RecursionError:
            raise DataError("invalid JSON (nested too deeply)", path, line_no) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path, line_no)
        yield line_no, obj


def check_row_id(value: str, what: str, path: Path | str, line: int) -> str:
    """An id read from a file, or a DataError naming the file, line and the problem."""
    bad = id_problem(value)
    if bad:
        raise DataError(f"{what} {value[:40]!r} {bad}", path, line)
    return value


def read_yaml_mapping(path: str | Path, known: set[str], section: str | None = None) -> dict:
    """A YAML file's mapping (or its `section` when present); a missing file, bad YAML or unknown key names the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DataError(f"invalid YAML ({problem})", path, mark.line + 1 if mark is not None else None) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 (byte at offset {exc.start})", path) from None
    if isinstance(raw, dict) and section is not None:
        raw = raw.get(section, raw)
    if not isinstance(raw, dict):
        raise DataError("expected a mapping of settings", path)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataError(f"unknown key(s) {unknown}; known: {sorted(known)}", path)
    return dict(raw)


def require_str(obj: Mapping, key: str, path: Path | str, line: int, allow_empty: bool = False) -> str:
    """obj[key] as a string, or a DataError naming the field."""
    if key not in obj:
        raise DataError(f"missing field '{key}'", path, line)
    value = obj[key]
    if isinstance(value, int) and not isinstance(value, bool) and key.endswith("id"):
        value = str(value)  # numeric ids are common in BEIR exports
    if not isinstance(value, str):
        raise DataError(f"field '{key}' must be a string, got {type(value).__name__}", path, line)
    if not allow_empty and is_blank(value):
        raise DataError(f"field '{key}' is empty", path, line)
    bad = id_problem(value) if key.endswith("id") else text_problem(value)
    if bad:
        raise DataError(f"field '{key}' {bad}", path, line)
    return value


def load_corpus(path: str | Path) -> dict[str, Document]:
    """A BEIR corpus.jsonl: {"_id", "title"?, "text"}."""
    corpus: dict[str, Document] = {}
    for line, obj in iter_jsonl(path):
        doc_id = require_str(obj, "_id", path, line)
        text = require_str(obj, "text", path, line, allow_empty=True)
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise DataError(f"field 'title' must be a string, got {type(title).__name__}", path, line)
        if text_problem(title):
            raise DataError(f"field 'title' {text_problem(title)}", path, line)
        if is_blank(text) and is_blank(title):
            raise DataError(f"document '{doc_id}' has empty 'text' and 'title'", path, line)
        if doc_id in corpus:
            raise DataError(f"duplicate document id '{doc_id}'", path, line)
        corpus[doc_id] = Document(doc_id, text, title)
    if not corpus:
        raise DataError("the corpus is empty", path)
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    """A BEIR queries.jsonl: {"_id", "text"}."""
    queries: dict[str, str] = {}
    for line, obj in iter_jsonl(path):
        qid = require_str(obj, "_id", path, line)
        text = require_str(obj, "text", path, line)
        if qid in queries:
            raise DataError(f"duplicate query id '{qid}'", path, line)
        queries[qid] = text
    return queries


def _qrels_rows(path: Path) -> Iterator[tuple[int, str, str, int]]:
    for line_no, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if line_no == 1 and parts[0].lower() in ("query-id", "query_id", "qid"):
            continue  # BEIR TSV header
        if len(parts) == 3:  # BEIR: query-id corpus-id score
            qid, did, rel = parts
        elif len(parts) == 4:  # TREC: qid iteration docid relevance
            qid, _, did, rel = parts
        else:
            raise DataError(f"expected 3 (BEIR) or 4 (TREC) fields, found {len(parts)}", path, line_no)
        try:
            value = float(rel)
        except ValueError:
            raise DataError(f"relevance '{rel[:20]}' is not a number", path, line_no) from None
        # A grade is a whole number; 1.5 or nan would be rounded or crash deep inside the metrics.
        if not value.is_integer() or abs(value) > 1_000_000:
            raise DataError(f"relevance '{rel[:20]}' is not an integer grade", path, line_no)
        check_row_id(qid, "query id", path, line_no)
        check_row_id(did, "document id", path, line_no)
        yield line_no, qid, did, int(value)


def load_qrels(path: str | Path, queries: Mapping[str, str] | None = None,
               corpus: Mapping[str, object] | None = None) -> Qrels:
    """Relevance judgments from a BEIR qrels TSV or a TREC qrels file; ids are checked when given."""
    path = Path(path)
    qrels: Qrels = {}
    for line, qid, did, rel in _qrels_rows(path):
        if queries is not None and qid not in queries:
            raise DataError(f"unknown query id '{qid}'", path, line)
        if corpus is not None and did not in corpus:
            raise DataError(f"unknown document id '{did}'", path, line)
        qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise DataError("no judgments", path)
    return qrels


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), keeping the split's queries.

    `split` may join several splits with '+' (e.g. 'alexa+validation'): their judgments are pooled.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder (expected a BEIR dataset folder)", folder)
    parts = split.split("+")
    for part in parts:
        qrels_path = folder / "qrels" / f"{part}.tsv"
        if not part or not qrels_path.is_file():
            available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
            raise DataError(f"no qrels for split '{part}' (available: {', '.join(available) or 'none'})", qrels_path)
    corpus = load_corpus(folder / "corpus.jsonl")
    all_queries = load_queries(folder / "queries.jsonl")
    qrels: Qrels = {}
    for part in parts:
        for qid, rels in load_qrels(folder / "qrels" / f"{part}.tsv", all_queries, corpus).items():
            if qid in qrels:
                raise DataError(f"query '{qid}' is judged in more than one of the splits {split!r}", folder / "qrels")
            qrels[qid] = rels
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(folder.name, corpus, queries, qrels, split=split, path=folder)


def read_run(path: str | Path, queries: Mapping[str, object] | None = None,
             corpus: Mapping[str, object] | None = None) -> Run:
    """A TREC run file (qid Q0 docid rank score tag); ids are checked when given."""
    path = Path(path)
    run: Run = {}
    for line_no, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DataError(f"expected 6 fields 'qid Q0 docid rank score tag', found {len(parts)}", path, line_no)
        qid, _, did, rank, score, _ = parts
        try:
            int(rank)
        except ValueError:
            raise DataError(f"rank '{rank[:20]}' is not an integer", path, line_no) from None
        try:
            value = float(score)
        except ValueError:
            raise DataError(f"score '{score[:20]}' is not a number", path, line_no) from None
        if not math.isfinite(value):
            # NaN compares false with everything: ir-measures would rank such a run arbitrarily.
            raise DataError(f"score '{score}' is not finite", path, line_no)
        check_row_id(qid, "query id", path, line_no)
        check_row_id(did, "document id", path, line_no)
        if queries is not None and qid not in queries:
            raise DataError(f"unknown query id '{qid}'", path, line_no)
        if corpus is not None and did not in corpus:
            raise DataError(f"unknown document id '{did}'", path, line_no)
        docs = run.setdefault(qid, {})
        if did in docs:
            raise DataError(f"document '{did}' listed twice for query '{qid}'", path, line_no)
        docs[did] = value
    if not run:
        raise DataError("the run is empty", path)
    return run


def write_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str = "medcolbert") -> Path:
    """Write a run in TREC format, ranked by score, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for qid in run:
                bad = [d for d, v in run[qid].items() if not math.isfinite(v)]
                if bad:
                    raise ValueError(f"query '{qid}': document '{bad[0]}' has a non-finite score; refusing to write {path.name}")
                ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
                for rank, (did, score) in enumerate(ranked, start=1):
                    f.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
