"""Reproducible experiments from a YAML file: systems x data sets, metrics, significance, plots, drift checks.

`medcolbert experiment experiments/NAME.yaml` writes under the output folder (default experiments/NAME/):
results.md and results.json (the table), runs/DATASET.SYSTEM.trec, perquery/DATASET.SYSTEM.json, paired
significance of every system against the baseline, and plots/*.png. Expected scores recorded in the YAML
are checked after the run: any drift past the tolerance fails the command, after everything is written.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, MedColbertError
from .evaluation.datasets import BeirDataset, Run, load_beir, read_yaml_mapping, write_run
from .evaluation.metrics import parse_metrics, per_query
from .fsutil import replace_folder

SYSTEM_TYPES = ("bm25", "dense", "colbert", "rerank", "rrf", "run")
TESTS = ("paired-t", "bootstrap")
CORRECTIONS = ("holm", "bonferroni", "none")
# The keys each system type reads: any other key is a typo that would silently change nothing, so it is refused.
_COMMON_KEYS = {"name", "type", "k", "trained_on", "datasets"}   # datasets: run only on these (default: all)
# A ColBERT system's settings that override the checkpoint's config (the weights stay), one list for the keys
# accepted, the model cache's key and the overrides passed on.
# query_encoder is not a config setting but a loading choice (full / distilled / a folder); it rides along.
_COLBERT_OVERRIDES = ("doc_maxlen", "query_maxlen", "query_augment_len", "dense_weight", "dense_length_power",
                      "query_encoder")
_COLBERT_KEYS = {"model", *_COLBERT_OVERRIDES}
SYSTEM_KEYS = {"bm25": _COMMON_KEYS | {"tokenizer"},
               "dense": _COMMON_KEYS | {"model", "pooling", "query_prefix", "doc_maxlen", "index"},
               "colbert": _COMMON_KEYS | _COLBERT_KEYS | {"nbits", "ncells", "centroid_score_threshold", "ndocs", "exact_docs",
                                                          "hybrid_depth", "exact", "preset", "num_centroids", "assignment", "kmeans"},
               # kind: dense reranks by a single-vector model's cosine (model, pooling, query_prefix, doc_maxlen)
               "rerank": _COMMON_KEYS | _COLBERT_KEYS | {"first_stage", "depth", "split_documents", "kind", "pooling",
                                                         "query_prefix"},
               "rrf": _COMMON_KEYS | {"runs", "rrf_k", "weights", "fusion"},
               # a stored first stage (e.g. a data set's own candidate lists): a TREC run file per split,
               # '{split}' in the path standing for each split of the data set
               "run": _COMMON_KEYS | {"path"}}


# The schema of an experiment file: each key's check (a type, a range), at every level. A check returns an error
# phrase or None; the error names the key's path and its line in the file.
def _is_int(lo: int, hi: int | None = None) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
        return None if ok else f"must be an integer {'in [%d, %d]' % (lo, hi) if hi is not None else '>= %d' % lo}"
    return check


def _is_num(lo: float, hi: float) -> Callable[[object], str | None]:
    def check(v: object) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"must be a number in [{lo}, {hi}]"
    return check


def _is_str(v: object) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def _is_bool(v: object) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _is_str_list(v: object) -> str | None:
    return None if isinstance(v, list) and all(isinstance(x, str) for x in v) else "must be a list of names"


def _one_of(*options: object) -> Callable[[object], str | None]:
    return lambda v: None if v in options else f"must be one of {list(options)}"


def _is_metrics(v: object) -> str | None:
    from .evaluation.metrics import parse_metrics

    try:
        parse_metrics(v)
    except ValueError as exc:
        return str(exc)
    return None


def _or_null(check: Callable[[object], str | None]) -> Callable[[object], str | None]:
    return lambda v: None if v is None else check(v)


TOP_SCHEMA: dict[str, Callable[[object], str | None]] = {
    "name": _is_str, "metrics": _is_metrics, "baseline": _is_str, "test": _one_of(*TESTS), "alpha": _is_num(1e-9, 0.5),
    "correction": _one_of(*CORRECTIONS), "tolerance": _is_num(0.0, 1.0), "latency_queries": _is_int(0, 100_000),
    "output_dir": _is_str, "work_dir": _is_str, "precision": _one_of("auto", "float32", "bfloat16", "float16"),
    "compare_reports": _is_int(0, 100_000),
    "expected": lambda v: None if isinstance(v, dict) else "must be a mapping {data set: {system: {metric: value}}}",
    "datasets": lambda v: None if isinstance(v, list) and v else "must be a non-empty list",
    "systems": lambda v: None if isinstance(v, list) and v else "must be a non-empty list"}
DATASET_SCHEMA: dict[str, Callable[[object], str | None]] = {
    "name": _is_str, "path": _is_str, "split": _is_str, "max_queries": _is_int(1)}
SYSTEM_SCHEMA: dict[str, Callable[[object], str | None]] = {
    "name": _is_str, "type": _one_of(*SYSTEM_TYPES), "k": _is_int(1, 100_000), "trained_on": _is_str_list,
    "datasets": _is_str_list, "model": _is_str, "doc_maxlen": _is_int(3, 8192), "query_maxlen": _is_int(3, 8192),
    "query_augment_len": _or_null(_is_int(3, 8192)), "dense_weight": _is_num(0, 100), "dense_length_power": _is_num(0, 10),
    "query_encoder": _is_str, "nbits": _one_of(1, 2, 4), "ncells": _is_int(1), "centroid_score_threshold": _is_num(-1.0, 1.0), "ndocs": _is_int(1),
    "exact_docs": _is_int(1), "hybrid_depth": _is_int(1),
    "exact": _is_bool, "preset": _one_of("quality", "colbert-ai"), "num_centroids": _or_null(_is_int(1)),
    "assignment": _one_of("auto", "exact", "hnsw"), "kmeans": _one_of("auto", "flat", "two-level"),
    "first_stage": _is_str, "depth": _is_int(1, 100_000), "split_documents": _is_bool, "kind": _one_of("colbert", "dense"),
    "pooling": _one_of("mean", "cls"), "query_prefix": lambda v: None if isinstance(v, str) else "must be a string",
    "index": _one_of("flat", "hnsw"),
    "runs": _is_str_list, "rrf_k": _is_int(1), "path": _is_str, "tokenizer": _one_of("default", "medical"),
    "fusion": _one_of("rrf", "score"),
    "weights": lambda v: None if isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                             and x >= 0 for x in v) else "must be a list of numbers >= 0"}


def _key_lines(path: Path) -> dict[tuple, int]:
    """The line of every key (and list item) of a YAML file, by its path of keys and indexes."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node: Any, at: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[at + (key.value,)] = key.start_mark.line + 1
                walk(value, at + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[at + (i,)] = item.start_mark.line + 1
                walk(item, at + (i,))

    try:
        walk(yaml.compose(path.read_text(encoding="utf-8")), ())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        pass   # the reader already reported what is wrong with the file
    return lines


def system_inputs(spec: dict) -> list[str]:
    """The systems a system reads: a rerank's first stage, an rrf's runs (none for the others)."""
    return [spec.get("first_stage")] if spec.get("type") == "rerank" else list(spec.get("runs", [])) if spec.get("type") == "rrf" else []


def validate_schema(raw: dict, path: Path | None = None) -> None:
    """Check every key of an experiment against the schema: required and unknown keys, types and ranges, naming the
    file's line when read from one."""
    lines = _key_lines(path) if isinstance(path, Path) and path.is_file() else {}

    def fail(at: tuple, message: str) -> None:
        name = ".".join(f"[{k}]" if isinstance(k, int) else str(k) for k in at).replace(".[", "[")
        raise DataError(f"{name} {message}", path, lines.get(at))

    def check(mapping: object, schema: dict, at: tuple, what: str) -> None:
        if not isinstance(mapping, dict):
            fail(at, f"must be a mapping ({what})")
        for key, value in mapping.items():  # type: ignore[union-attr]
            if key not in schema:
                fail(at + (key,), f"is not a known key of {what}; known: {sorted(schema)}")
            problem = schema[key](value)
            if problem:
                fail(at + (key,), f"{problem}, got {value!r}")

    check(raw, TOP_SCHEMA, (), "an experiment file")
    for i, d in enumerate(raw.get("datasets") or []):
        check(d, DATASET_SCHEMA, ("datasets", i), "a data set")
        if not {"name", "path"} <= set(d):
            fail(("datasets", i), "needs a name and a path (and a split)")
    for i, s in enumerate(raw.get("systems") or []):
        check(s, SYSTEM_SCHEMA, ("systems", i), "a system")
        if not {"name", "type"} <= set(s):
            fail(("systems", i), "needs a name and a type")
        if s["type"] == "run" and "path" not in s:
            fail(("systems", i), "is a run system and needs a path (a TREC run file)")
        if s["type"] in ("rerank", "rrf") and not all(system_inputs(s)):
            fail(("systems", i), f"is a {s['type']} and names its input system(s)")
        if isinstance(s, dict) and s.get("type") in SYSTEM_KEYS:
            extra = sorted(set(s) - SYSTEM_KEYS[s["type"]])
            if extra:
                fail(("systems", i, extra[0]), f"is not a key of a {s['type']} system; accepted: "
                                               f"{sorted(SYSTEM_KEYS[s['type']])}")


# A temporary run folder untouched this long belongs to a run that died (a live run writes into it as it goes).
STALE_RUN_SECONDS = 6 * 3600


class MissingPlotting(MedColbertError):
    """matplotlib is not installed: the run's tables stand, without plots."""


class ExperimentDrift(MedColbertError):
    """A result moved past the tolerance from the score the experiment file records."""


@dataclass
class ExperimentConfig:
    """What to run: data sets, systems, metrics, the baseline and the scores to expect."""

    name: str
    datasets: list[dict]
    systems: list[dict]
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "map@100", "recall@100", "mrr@10"])
    baseline: str | None = None          # default: the first system
    test: str = "paired-t"               # paired-t | bootstrap
    alpha: float = 0.05
    correction: str = "holm"             # holm | bonferroni | none: over the systems compared with the baseline
    expected: dict = field(default_factory=dict)   # {dataset: {system: {metric: value}}}
    tolerance: float = 0.002
    latency_queries: int = 50            # queries timed one at a time per system (0: no timing)
    output_dir: str | None = None
    work_dir: str | None = None          # caches: vectors, indexes (default .cache/experiments/NAME)
    precision: str = "auto"              # encoding precision of every model: auto (fp32 on CPU) | float32 | bfloat16 | float16
    compare_reports: int = 20            # per system and data set, an HTML report against the baseline showing this
                                         # many most-different queries side by side (0: no reports)
    source: Path | None = None
    dense_vectors: dict = field(default_factory=dict, repr=False)   # {model fingerprint: {text: vector}}, per run

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ExperimentConfig":
        """Read and check an experiment file; errors name the file and the entry."""
        path = Path(path)
        raw = read_yaml_mapping(path, set(TOP_SCHEMA))
        raw.setdefault("name", path.stem)
        for key in ("datasets", "systems"):
            if not isinstance(raw.get(key), list) or not raw[key]:
                raise DataError(f"'{key}' must be a non-empty list", path)
        cfg = cls(**raw, source=path)
        cfg.check(path)   # the schema (with the file's lines), then names and references
        return cfg

    def check(self, where: object = None) -> None:
        """Validate keys, values, names and references before any work is done."""
        fields = {"name": self.name, "datasets": self.datasets, "systems": self.systems, "metrics": self.metrics,
                  "test": self.test, "alpha": self.alpha, "correction": self.correction, "tolerance": self.tolerance,
                  "latency_queries": self.latency_queries, "precision": self.precision, "expected": self.expected,
                  "compare_reports": self.compare_reports}
        fields.update({key: getattr(self, key) for key in ("baseline", "output_dir", "work_dir")
                       if getattr(self, key) is not None})
        validate_schema(fields, where if isinstance(where, Path) else None)   # types, ranges, required and unknown keys
        names: list[str] = []
        for i, s in enumerate(self.systems):
            for ref in system_inputs(s):
                if ref not in names:
                    raise DataError(f"systems[{i}] ({s['name']}) uses '{ref}', which is not a system listed before it", where)
            if s["name"] in names:
                raise DataError(f"systems[{i}]: duplicate system name '{s['name']}'", where)
            names.append(s["name"])
        sets = [d.get("name") for d in self.datasets]
        for i, s in enumerate(self.systems):
            only = s.get("datasets")
            if only is not None and (not isinstance(only, list) or not set(only) <= set(sets)):
                raise DataError(f"systems[{i}] ({s['name']}): datasets must list data set names of this file {sets}, "
                                f"got {only!r}", where)
            for ref in system_inputs(s):
                inner = next(x for x in self.systems if x["name"] == ref).get("datasets")
                if inner is not None and (only is None or not set(only) <= set(inner)):
                    raise DataError(f"systems[{i}] ({s['name']}) runs where '{ref}' does not: give it datasets "
                                    f"within {inner}", where)
        if self.baseline is not None and self.baseline not in names:
            raise DataError(f"baseline '{self.baseline}' is not a system", where)
        self.metrics = parse_metrics(self.metrics)   # 'ndcg@10,mrr@10' is a list of two, not of characters
        self._check_expected(sets, names, where)

    def _check_expected(self, sets: list, names: list[str], where: object) -> None:
        """`expected` as {data set of this file: {system of this file: {metric measured: number}}}."""
        for ds, systems in (self.expected or {}).items():
            if ds not in sets:
                raise DataError(f"expected: {ds!r} is not a data set of this file {sets}", where)
            if not isinstance(systems, dict):
                raise DataError(f"expected.{ds} must be a mapping {{system: {{metric: value}}}}, got {systems!r}", where)
            for system, metrics in systems.items():
                if system not in names:
                    raise DataError(f"expected.{ds}: {system!r} is not a system of this file", where)
                if not isinstance(metrics, dict):
                    raise DataError(f"expected.{ds}.{system} must be a mapping {{metric: value}}, got {metrics!r}", where)
                for metric, value in metrics.items():
                    if metric not in self.metrics:
                        raise DataError(f"expected.{ds}.{system}: {metric!r} is not one of the metrics {self.metrics}",
                                        where)
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                        raise DataError(f"expected.{ds}.{system}.{metric} must be a number in [0, 1], got {value!r}",
                                        where)

    def check_inputs(self) -> None:
        """What can be checked before any work: data folders and splits, run files, local model folders."""
        for i, ds in enumerate(self.datasets):
            folder = Path(ds["path"])
            split = ds.get("split", "test")
            if not (folder / "corpus.jsonl").is_file() or not (folder / "queries.jsonl").is_file():
                raise DataError(f"datasets[{i}] ({ds['name']}): {folder} is not a BEIR folder (corpus.jsonl and "
                                "queries.jsonl)", self.source)
            for part in split.split("+"):
                if not (folder / "qrels" / f"{part}.tsv").is_file():
                    raise DataError(f"datasets[{i}] ({ds['name']}): no qrels/{part}.tsv in {folder}", self.source)
            for s in self.systems:
                if s.get("type") == "run" and (s.get("datasets") is None or ds["name"] in s["datasets"]):
                    for part in split.split("+"):
                        run = Path(str(s["path"]).replace("{split}", part))
                        base = self.source.parent if self.source is not None else Path(".")
                        run = run if run.is_absolute() or run.exists() else base / run
                        if not run.is_file():
                            raise DataError(f"system {s['name']!r}: run file {run} does not exist", self.source)
        for s in self.systems:
            model = _model_source(s)
            if model is None or not isinstance(model, str):
                continue
            looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or Path(model).exists() or \
                model.startswith("checkpoints/")
            if looks_local and not Path(model).expanduser().exists():
                raise DataError(f"system {s['name']!r}: model folder {model} does not exist", self.source)

    @property
    def out(self) -> Path:
        """The output folder."""
        return Path(self.output_dir or f"experiments/{self.name}")

    @property
    def work(self) -> Path:
        """The cache folder."""
        return Path(self.work_dir or f".cache/experiments/{self.name}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _corpus_key(corpus: dict[str, str]) -> str:
    """A short hash of a corpus's ids and texts, naming the index folders built over it."""
    import hashlib

    h = hashlib.sha256()
    for doc_id, text in corpus.items():
        h.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:12]


def _model_source(spec: dict) -> str | None:
    value = spec.get("model")
    return None if value in (None, "default") else str(value)


# --------------------------------------------------------------------------------------------- systems
class _Context:
    """One data set's state while its systems run: runs so far, per-query latencies, shared models."""

    def __init__(self, cfg: ExperimentConfig, name: str, data: BeirDataset, show_progress: bool | None) -> None:
        self.cfg, self.name, self.data, self.show = cfg, name, data, show_progress
        self.corpus = {d: doc.full_text for d, doc in data.corpus.items()}
        self.corpus_key = _corpus_key(self.corpus)
        self.runs: dict[str, Run] = {}
        self.latency_ms: dict[str, float | None] = {}
        self.stages: dict[str, Any] = {}   # per system: its Retriever
        self.timed_at: dict[str, str] = {}
        self.extra: dict[str, dict] = {}   # per system: index size and the like
        self.timed_qids = sorted(data.queries)[: cfg.latency_queries]
        self._models: dict[tuple, Any] = {}

    def model(self, kind: str, spec: dict):  # type: ignore[no-untyped-def]
        """A model, loaded once per data set and shared by the systems that name it."""
        # "unset" and None differ: query_augment_len None is a setting (pad every query to query_maxlen).
        key = (kind, _model_source(spec), spec.get("pooling"), spec.get("query_prefix"),
               *(spec.get(name, "unset") for name in _COLBERT_OVERRIDES))
        if key not in self._models:
            if kind == "dense":
                from .baselines.dense import BiEncoder

                self._models[key] = BiEncoder.from_pretrained(_model_source(spec), pooling=spec.get("pooling"),
                                                              query_prefix=spec.get("query_prefix"),
                                                              max_length=spec.get("doc_maxlen", 300),
                                                              dtype=self.cfg.precision)
            else:
                from .modeling.encoder import ColBERT

                # Tokenization settings may be overridden per system (the weights stay): e.g. the query
                # length and [MASK] augmentation rule, to measure them on one model.
                overrides = {name: spec[name] for name in _COLBERT_OVERRIDES if name in spec}
                self._models[key] = ColBERT.from_pretrained(_model_source(spec), dtype=self.cfg.precision, **overrides)
        return self._models[key]

    def time_queries(self, search_one: Callable[[str], object]) -> float | None:
        """Median milliseconds of search_one over the timed queries, one at a time, after a warm-up."""
        if not self.timed_qids:
            return None
        from .bench import percentiles, time_each

        texts = [self.data.queries[q] for q in self.timed_qids]
        return percentiles(time_each(search_one, texts), (50,))["p50_ms"]


def _run_system(ctx: _Context, spec: dict) -> Run:
    """Run one system on one data set; records in ctx its stage (a Retriever) and its latency.

    Every system type is built by one function of STAGES into a `medcolbert.retrievers.Retriever`; a rerank
    system rescores its first stage's stored run, and its timed function is the whole pipeline
    (first stage >> reranker) for one query, as deployed.
    """
    from .retrievers import Pipeline

    k, queries, name = int(spec.get("k", 100)), ctx.data.queries, spec["name"]
    if spec["type"] == "run":
        run = _stored_run(ctx, spec)
        ctx.stages[name], ctx.latency_ms[name], ctx.timed_at[name] = None, None, None
        return run
    if spec["type"] == "rerank":
        reranker = _rerank_stage(ctx, spec)
        run = reranker.rerank(queries, ctx.runs[spec["first_stage"]], k=k)
        first = ctx.stages[spec["first_stage"]]
        # A stored first stage cannot run for a new query: only the reranking itself is timed then.
        stage = Pipeline(first, reranker) if first is not None else None
    elif spec["type"] == "rrf":
        from .retrievers import RRF
        from .search.fusion import rrf

        rrf_k, weights = int(spec.get("rrf_k", 60)), spec.get("weights")
        parts = [ctx.stages[n] for n in spec["runs"]]
        if spec.get("fusion", "rrf") == "score":   # normalised score combination of the runs' top k
            from .search.fusion import combine

            run = {q: dict(list(hits.items())[:k]) for q, hits in combine([ctx.runs[n] for n in spec["runs"]],
                                                                         weights=weights).items()}
            stage = None
        else:
            run = rrf([ctx.runs[n] for n in spec["runs"]], k=rrf_k, depth=k, weights=weights)
            stage = None if None in parts else RRF(*parts, k=rrf_k, depth=k, weights=weights)
    else:
        stage = STAGES[spec["type"]](ctx, spec)
        run = stage.retrieve(queries, k=k)
    ctx.stages[name] = stage
    ctx.latency_ms[name] = None if stage is None else ctx.time_queries(lambda text: stage.search(text, k=k))
    ctx.timed_at[name] = f"k={k}" + (f", top {spec.get('depth', 100)} reranked" if spec["type"] == "rerank" else "")
    return run


def _bm25_stage(ctx: _Context, spec: dict):  # type: ignore[no-untyped-def]
    from .retrievers import BM25Retriever

    return BM25Retriever(ctx.corpus, tokenizer=spec.get("tokenizer", "default"))


def _dense_stage(ctx: _Context, spec: dict):  # type: ignore[no-untyped-def]
    from .baselines.dense import DenseIndex
    from .retrievers import DenseRetriever

    model = ctx.model("dense", spec)
    folder = ctx.cfg.work / f"dense-{ctx.corpus_key}-{spec.get('index', 'flat')}-{model.fingerprint()}"
    # Data sets that share documents (consumer-health's corpus holds MedQuAD dev's) share their vectors.
    known = ctx.cfg.dense_vectors.setdefault(model.fingerprint(), {})
    if (folder / "manifest.json").is_file():
        index = DenseIndex.load(folder, model)
    else:
        index = DenseIndex(model, kind=spec.get("index", "flat")).index(ctx.corpus, show_progress=ctx.show, known=known)
        index.save(folder)
    known.update({ctx.corpus[d]: index.vectors[i] for i, d in enumerate(index.doc_ids)})
    return DenseRetriever(index, name=spec["name"])


def _plaid_stage(ctx: _Context, spec: dict):  # type: ignore[no-untyped-def]
    from .retrievers import PlaidRetriever

    index, model = _colbert_index(ctx, spec)
    stats = index.stats()
    ctx.extra[spec["name"]] = {"bytes_per_vector": stats["bytes_per_embedding"], "index_mb": stats["bytes_total"] / 1e6}
    knobs = {key: spec[key] for key in ("ncells", "centroid_score_threshold", "ndocs", "exact_docs", "hybrid_depth",
                                        "exact", "preset")
             if key in spec}
    return PlaidRetriever.from_index(index, model, name=spec["name"], **knobs)


def _rerank_stage(ctx: _Context, spec: dict):  # type: ignore[no-untyped-def]
    from .retrievers import MaxSimReranker
    from .vector_cache import VectorCache

    if spec.get("kind", "colbert") == "dense":
        from .retrievers import CosineReranker

        model = ctx.model("dense", spec)
        return CosineReranker(model, ctx.corpus, depth=int(spec.get("depth", 100)), name=spec["name"],
                              known=ctx.cfg.dense_vectors.setdefault(model.fingerprint(), {}))
    # A reranker in production keeps its documents' vectors (as this cache does): the timed pipeline reads
    # them, and encodes the query.
    model = ctx.model("colbert", spec)
    return MaxSimReranker(model, ctx.corpus, depth=int(spec.get("depth", 100)),
                          cache=VectorCache(model, ctx.cfg.work / "vectors"), name=spec["name"],
                          split_documents=bool(spec.get("split_documents", False)), show_progress=ctx.show)


def _stored_run(ctx: _Context, spec: dict) -> Run:
    """A stored run (TREC files, one per split of the data set), kept to the data set's queries."""
    from .evaluation.datasets import read_run

    run: Run = {}
    base = ctx.cfg.source.parent if ctx.cfg.source is not None else Path(".")
    for split in ctx.data.split.split("+"):
        path = Path(spec["path"].replace("{split}", split))
        path = path if path.is_absolute() or path.exists() else base / path
        run.update(read_run(path, corpus=ctx.data.corpus))
    return {q: docs for q, docs in run.items() if q in ctx.data.queries}


# How each retrieval system type of an experiment file becomes a stage; rerank and rrf systems compose
# the stages of the systems they name (a Pipeline, an RRF).
STAGES: dict[str, Callable[[_Context, dict], Any]] = {"bm25": _bm25_stage, "dense": _dense_stage, "colbert": _plaid_stage}


def _in_domain(cfg: "ExperimentConfig", spec: dict, dataset: str) -> bool | None:
    """Whether a system saw this data set's training split: its own `trained_on`, or its stages' (None: unstated)."""
    names = {s["name"]: s for s in cfg.systems}
    own = spec.get("trained_on")
    parts = [names[n] for n in system_inputs(spec)]
    if own is None and spec["type"] not in ("rerank", "rrf"):
        return None
    seen = [dataset in (own or [])] + [_in_domain(cfg, p, dataset) for p in parts]
    if any(x is True for x in seen):
        return True
    return None if any(x is None for x in seen[1:]) or (own is None and spec["type"] == "rerank") else False


def _colbert_index(ctx: _Context, spec: dict):  # type: ignore[no-untyped-def]
    """The ColBERT model a system names and its index over the data set's corpus (built on first use)."""
    from .indexing.index import Index
    from .indexing.kmeans import CENTROIDS_PER_SQRT
    from .modeling.encoder import has_pooled_head
    from .vector_cache import CachedEncoder, VectorCache

    model = ctx.model("colbert", spec)
    nbits = int(spec.get("nbits", 2))
    # Build options other than the defaults name their own index folder (the default one is shared by systems).
    build = {k: spec[k] for k in ("num_centroids", "assignment", "kmeans") if spec.get(k) not in (None, "auto")}
    suffix = "".join(f"-{k}{v}" for k, v in sorted(build.items()))
    if "num_centroids" not in build:
        # The default count follows a rule that has changed (8 sqrt(vectors) until 2026-12-03): the rule names the
        # folder, so that an index built under an older rule is never reused as today's default.
        suffix += f"-centroids{CENTROIDS_PER_SQRT}sqrt"
    # Keyed by the corpus, not the data set's name: two splits of one corpus (consumer-health dev and dev-medquad)
    # share one index.
    folder = ctx.cfg.work / f"plaid-{ctx.corpus_key}-nbits{nbits}{suffix}-{model.fingerprint()}"
    index = Index.open(folder) if (folder / "manifest.json").is_file() else None
    if index is not None and has_pooled_head(model) and index.pooled is None:
        # The fingerprint covers the document side only: a system with dense_weight 0 may have built this folder
        # without pooled vectors. A system that scores with the pooled head gets its own folder.
        folder = folder.with_name(folder.name + "-pooled")
        index = Index.open(folder) if (folder / "manifest.json").is_file() else None
    if index is None:
        cached = CachedEncoder(model, VectorCache(model, ctx.cfg.work / "vectors"), ctx.corpus)
        index = Index.build(folder, cached, ctx.corpus, nbits=nbits, show_progress=ctx.show, **build)
    return index, model


# --------------------------------------------------------------------------------------------- statistics
def paired_test(a: np.ndarray, b: np.ndarray, test: str = "paired-t", seed: int = 0,
                resamples: int = 10_000) -> float:
    """Two-sided p-value that per-query scores a and b (same queries) have the same mean."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2 or np.allclose(d, 0):
        return 1.0
    if test == "paired-t":
        from scipy import stats

        return float(stats.ttest_rel(a, b).pvalue)
    # Paired bootstrap: resample queries, and count how often the mean difference crosses zero.
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the mean of per-query scores (queries resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))]


def adjust_pvalues(pvalues: list[float], method: str = "holm") -> list[float]:
    """p-values corrected for the number of comparisons: Holm's step-down, Bonferroni, or none."""
    n = len(pvalues)
    if method == "none" or n == 0:
        return list(pvalues)
    if method == "bonferroni":
        return [min(1.0, p * n) for p in pvalues]
    order = sorted(range(n), key=lambda i: pvalues[i])
    out, running = [0.0] * n, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (n - rank) * pvalues[i]))   # monotone: never below an earlier step
        out[i] = running
    return out


# --------------------------------------------------------------------------------------------- the run
def _sample_queries(data: BeirDataset, n: int | None) -> BeirDataset:
    """The data set with a fixed random sample of n judged queries (all of them when n is None)."""
    qids = sorted(q for q in data.qrels if q in data.queries)
    if n is None or n >= len(qids):
        return data
    keep = sorted(random.Random(0).sample(qids, n))
    return replace(data, queries={q: data.queries[q] for q in keep}, qrels={q: data.qrels[q] for q in keep})


def run_experiment(cfg: ExperimentConfig, show_progress: bool | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Run every system on every data set and write the outputs; raises ExperimentDrift after writing.

    Everything is written into a temporary folder beside the output folder and moved in only once the run is
    complete (each output file or folder by a rename; anything else in the folder, such as a README, stays): an
    error midway leaves the previous outputs as they were."""
    cfg.check_inputs()   # before anything is made or encoded
    final = cfg.out
    final.mkdir(parents=True, exist_ok=True)
    for stale in final.glob(".run-tmp-*"):   # the work of a run that was killed: never moved into place
        if time.time() - stale.stat().st_mtime > STALE_RUN_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    out = Path(tempfile.mkdtemp(prefix=".run-tmp-", dir=final))
    try:
        results = _run_into(cfg, out, show_progress, log)
        for item in sorted(out.iterdir()):
            if item.is_dir():
                replace_folder(item, final / item.name)
            else:
                os.replace(item, final / item.name)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    drift = check_expected(results, cfg.expected, cfg.tolerance)
    if drift:
        raise ExperimentDrift(f"{len(drift)} result(s) drifted past the tolerance {cfg.tolerance} from "
                              f"{cfg.source or 'the expected scores'}:\n  " + "\n  ".join(drift))
    return results


def _run_into(cfg: ExperimentConfig, out: Path, show_progress: bool | None, log: Callable[[str], None]) -> dict:
    """run_experiment's work, written under `out`."""
    for sub in ("runs", "perquery", "plots"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    baseline = cfg.baseline or cfg.systems[0]["name"]
    results: dict = {"name": cfg.name, "metrics": cfg.metrics, "baseline": baseline, "test": cfg.test,
                     "alpha": cfg.alpha, "correction": cfg.correction, "datasets": {}}
    started = time.perf_counter()
    for ds in cfg.datasets:
        data = _sample_queries(load_beir(ds["path"], ds.get("split", "test")), ds.get("max_queries"))
        ctx = _Context(cfg, ds["name"], data, show_progress)
        table: dict[str, dict] = {}
        scores: dict[str, dict[str, dict[str, float]]] = {}
        for spec in cfg.systems:
            if spec.get("datasets") is not None and ds["name"] not in spec["datasets"]:
                continue
            t0 = time.perf_counter()
            run = _run_system(ctx, spec)
            ctx.runs[spec["name"]] = run
            slug = _slug(spec["name"])
            write_run(run, out / "runs" / f"{ds['name']}.{slug}.trec", tag=slug)
            scores[spec["name"]] = per_query(run, data.qrels, cfg.metrics)
            (out / "perquery" / f"{ds['name']}.{slug}.json").write_text(json.dumps(scores[spec["name"]], indent=1) + "\n")
            table[spec["name"]] = {m: float(np.mean(list(scores[spec["name"]][m].values()))) for m in cfg.metrics}
            table[spec["name"]].update({"p50_ms": ctx.latency_ms.get(spec["name"]),
                                        "timed_at": ctx.timed_at.get(spec["name"]),
                                        "in_domain": _in_domain(cfg, spec, ds["name"]),
                                        "seconds": round(time.perf_counter() - t0, 1), **ctx.extra.get(spec["name"], {})})
            log(f"{ds['name']} / {spec['name']}: " + ", ".join(f"{m} {table[spec['name']][m]:.4f}" for m in cfg.metrics))
        qids = sorted(data.qrels)
        for name, row in table.items():
            row["ci95"] = {m: bootstrap_ci(np.array([scores[name][m][q] for q in qids])) for m in cfg.metrics}
        others = [name for name in table if name != baseline and baseline in table]
        for m in cfg.metrics:
            raw = []
            for name in others:
                a = np.array([scores[name][m][q] for q in qids])
                b = np.array([scores[baseline][m][q] for q in qids])
                raw.append((float(a.mean() - b.mean()), paired_test(a, b, cfg.test)))
            adjusted = adjust_pvalues([p for _, p in raw], cfg.correction)
            for name, (delta, p), p_adj in zip(others, raw, adjusted):
                significant = p_adj < cfg.alpha
                table[name].setdefault("vs_baseline", {})[m] = {
                    "delta": delta, "p": p, "p_adjusted": p_adj, "significant": significant,
                    "direction": ("better" if delta > 0 else "worse") if significant else "no difference"}
        if cfg.compare_reports and baseline in ctx.runs:
            _compare_reports(out, ds["name"], data, ctx.runs, baseline, table, cfg)
        results["datasets"][ds["name"]] = {"split": ds.get("split", "test"), "queries": len(qids),
                                           "documents": len(data.corpus), "systems": table}
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    try:
        plot_results(results, out / "plots", out / "perquery")
    except MissingPlotting as exc:   # the tables and runs are the results; plots are a view of them
        warnings.warn(str(exc), stacklevel=2)
        log(f"warning: {exc}")
    return results


def _compare_reports(out: Path, ds: str, data: BeirDataset, runs: dict, baseline: str, table: dict,
                     cfg: ExperimentConfig) -> None:
    """compare/DATASET.SYSTEM.html for every system against the baseline (evaluation/compare.py), linked from
    results.md; the metric is the experiment's first."""
    from .evaluation.compare import compare_runs, report_html
    from .fsutil import atomic_write_text

    folder = out / "compare"
    folder.mkdir(exist_ok=True)
    for name, run in runs.items():
        if name == baseline or name not in table:
            continue
        comparison = compare_runs(run, runs[baseline], data.qrels, cfg.metrics[0], (name, baseline))
        page = report_html(comparison, run, runs[baseline], data.qrels, data.queries,
                           lambda d: data.corpus[d].full_text if d in data.corpus else None, shown=cfg.compare_reports,
                           title=f"{ds}: {name} vs {baseline}")
        rel = f"compare/{ds}.{_slug(name)}.html"
        atomic_write_text(out / rel, page)
        table[name]["compare_report"] = rel


def check_expected(results: dict, expected: dict, tolerance: float) -> list[str]:
    """Lines describing every expected score that the results miss by more than the tolerance."""
    drift = []
    for ds, systems in (expected or {}).items():
        for system, metrics in systems.items():
            row = results["datasets"].get(ds, {}).get("systems", {}).get(system)
            for metric, value in metrics.items():
                got = None if row is None else row.get(metric)
                if got is None:
                    drift.append(f"{ds} / {system} / {metric}: expected {value}, not measured")
                elif abs(got - value) > tolerance:
                    drift.append(f"{ds} / {system} / {metric}: expected {value:.4f}, got {got:.4f}")
    return drift


def results_markdown(results: dict) -> str:
    """The results as markdown tables, one per data set, with significance marks."""
    metrics, baseline = results["metrics"], results["baseline"]
    lines = [f"# {results['name']}", "",
             f"Significance: {results['test']} against `{baseline}`, per metric over all judged queries, "
             f"p-values corrected for the number of systems compared ({results.get('correction', 'none')}); "
             f"`▲` marks significantly better, `▼` significantly worse (corrected p < {results['alpha']}). "
             "Brackets: 95% bootstrap confidence interval of the mean.", ""]
    for ds, block in results["datasets"].items():
        sizes = any("bytes_per_vector" in row for row in block["systems"].values())
        head = (" | ".join(metrics) + " | in-domain | p50 ms/query | timed at |"
                + (" bytes/vector | index MB |" if sizes else ""))
        lines += [f"## {ds} ({block['split']}: {block['queries']} queries, {block['documents']} documents)", "",
                  "| system | " + head, "|---|" + "---|" * (len(metrics) + 3 + 2 * sizes)]
        for name, row in block["systems"].items():
            cells = []
            for m in metrics:
                direction = row.get("vs_baseline", {}).get(m, {}).get("direction")
                mark = {"better": "▲", "worse": "▼"}.get(direction or "", "")
                ci = row.get("ci95", {}).get(m)
                cells.append(f"{row[m]:.4f}{mark}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            cells.append({True: "yes", False: "no"}.get(row.get("in_domain"), "?"))
            cells.append("" if row.get("p50_ms") is None else f"{row['p50_ms']:.1f}")
            cells.append(row.get("timed_at") or "" if row.get("p50_ms") is not None else "")
            if sizes:
                cells += [f"{row['bytes_per_vector']:.2f}", f"{row['index_mb']:.1f}"] if "bytes_per_vector" in row else ["", ""]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        reports = [f"[{name}]({row['compare_report']})" for name, row in block["systems"].items()
                   if row.get("compare_report")]
        if reports:
            lines += ["", f"Query-by-query reports against `{baseline}`: " + ", ".join(reports) + "."]
        lines.append("")
    return "\n".join(lines)


def plot_results(results: dict, folder: Path, perquery: Path) -> list[Path]:
    """Quality per system and data set, quality against latency, per-query differences (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingPlotting("no plots written: they need matplotlib (pip install 'medcolbert[bench]')") from exc
    metric, baseline = results["metrics"][0], results["baseline"]
    datasets = list(results["datasets"])
    systems = list(dict.fromkeys(s for block in results["datasets"].values() for s in block["systems"]))
    written = []
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(systems) * len(datasets)), 4))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        ax.bar(np.arange(len(datasets)) + i * width,
               [results["datasets"][d]["systems"].get(s, {}).get(metric, 0.0) for d in datasets], width, label=s)
    ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, datasets)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per system and data set")
    ax.legend(fontsize=7)
    written.append(_save(fig, folder / "quality.png"))

    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for s in systems:
            row = results["datasets"][d]["systems"].get(s, {})
            if row.get("p50_ms"):
                ax.scatter(row["p50_ms"], row[metric])
                ax.annotate(s, (row["p50_ms"], row[metric]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("p50 ms per query (one at a time)")
        ax.set_ylabel(metric)
        ax.set_title(d)
    written.append(_save(fig, folder / "quality-vs-latency.png"))

    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        if baseline not in results["datasets"][d]["systems"]:
            continue
        base = json.loads((perquery / f"{d}.{_slug(baseline)}.json").read_text())[metric]
        for s in systems:
            if s == baseline or s not in results["datasets"][d]["systems"]:
                continue
            other = json.loads((perquery / f"{d}.{_slug(s)}.json").read_text())[metric]
            ax.plot(sorted(other[q] - base[q] for q in base), label=s)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xlabel("queries, sorted by difference")
        ax.set_ylabel(f"{metric} minus {baseline}")
        ax.set_title(d)
        if len(systems) > 1:
            ax.legend(fontsize=7)
    written.append(_save(fig, folder / "per-query-differences.png"))
    return written


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
