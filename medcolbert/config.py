"""Model configuration, and its mapping to and from colbert-ai's `artifact.metadata`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError

# Every field colbert-ai's ColBERTConfig knows, with its default; `artifact.metadata` carries all of
# them so that colbert-ai (which rebuilds its config from that file) sees a complete config.
COLBERT_AI_DEFAULTS: dict[str, Any] = {
    "query_token_id": "[unused0]",
    "doc_token_id": "[unused1]",
    "query_token": "[Q]",
    "doc_token": "[D]",
    "ncells": None,
    "centroid_score_threshold": None,
    "ndocs": None,
    "load_index_with_mmap": False,
    "index_path": None,
    "index_bsize": 64,
    "nbits": 1,
    "kmeans_niters": 4,
    "resume": False,
    "pool_factor": 1,
    "clustering_mode": "hierarchical",
    "protected_tokens": 0,
    "similarity": "cosine",
    "bsize": 32,
    "accumsteps": 1,
    "lr": 3e-06,
    "maxsteps": 500000,
    "save_every": None,
    "warmup": None,
    "warmup_bert": None,
    "relu": False,
    "nway": 2,
    "use_ib_negatives": False,
    "reranker": False,
    "distillation_alpha": 1.0,
    "ignore_scores": False,
    "model_name": None,
    "query_maxlen": 32,
    "attend_to_mask_tokens": False,
    "interaction": "colbert",
    "dim": 128,
    "doc_maxlen": 220,
    "mask_punctuation": True,
    "checkpoint": None,
    "triples": None,
    "collection": None,
    "queries": None,
    "index_name": None,
    "overwrite": False,
    "root": "experiments",
    "experiment": "default",
    "index_root": None,
    "name": "medcolbert",
    "rank": 0,
    "nranks": 1,
    "amp": True,
    "gpus": 0,
    "avoid_fork_if_possible": False,
}


@dataclass(frozen=True)
class ModelConfig:
    """How a ColBERT encoder tokenizes and projects text (the fields colbert-ai stores)."""

    dim: int = 128
    # Real consumer questions run to 126 word pieces at p90 (consumer-health dev), so the limit is 128.
    query_maxlen: int = 128
    doc_maxlen: int = 300
    query_token_id: str = "[unused0]"
    doc_token_id: str = "[unused1]"
    mask_punctuation: bool = True
    attend_to_mask_tokens: bool = False
    similarity: str = "cosine"
    interaction: str = "colbert"
    # [MASK] augmentation length: shorter queries are padded with [MASK] up to it; longer ones keep their
    # tokens up to query_maxlen, unpadded. None pads every query to query_maxlen (colbert-ai's rule).
    query_augment_len: int | None = 32
    # Weight of the pooled single-vector term in a score: MaxSim + dense_weight x (query vector count) x cosine
    # of the mean-pooled backbone states (a per-token-scaled sum, so 1.0 weighs both parts alike). 0: plain
    # ColBERT, which is what colbert-ai computes whatever this says (it ignores the key).
    dense_weight: float = 0.0
    # How the pooled term's weight grows with a query's length: dense_weight x max(1, vectors / augment_len) ^ this.
    # 0 keeps one weight for every query. Long consumer questions are where MaxSim loses to the pooled head and
    # short claims where it wins (experiments/releases/v4-scoring/weights), so a positive power leans on the head for long
    # queries only; queries padded to the augmentation length keep dense_weight itself. colbert-ai ignores it.
    dense_length_power: float = 0.0
    # How the [Q]/[D] marker enters a text: "replace" is colbert-ai's (tokenize ". " + text, then overwrite
    # the "." at position 1), "insert" is PyLate's and Sentence Transformers' (tokenize the text, insert the
    # marker after the first token). They agree on WordPiece vocabularies; byte-level BPE ones (ModernBERT)
    # tokenize ". word" and "word" differently, so a checkpoint keeps the rule of the library that wrote it.
    # An empty marker ("") means no marker at all (a plain Sentence Transformers MultiVectorEncoder).
    marker_style: str = "replace"
    # Pad queries with [MASK] at all (ColBERT's augmentation); False keeps only the query's own tokens.
    query_expansion: bool = True
    # Document tokens left out of MaxSim when mask_punctuation is on. None: colbert-ai's rule (the first
    # sub-token of each ASCII punctuation mark); a list: these vocabulary tokens (PyLate's skiplist_words).
    skiplist_words: tuple[str, ...] | None = None
    # Text put before every query / document before tokenizing (a Sentence Transformers prompt, e.g. "query: ").
    query_prompt: str = ""
    document_prompt: str = ""

    def __post_init__(self) -> None:
        for name in ("dim", "query_maxlen", "doc_maxlen"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.query_maxlen < 3 or self.doc_maxlen < 3:
            raise ValueError("query_maxlen and doc_maxlen must leave room for [CLS], the marker and [SEP] (>= 3)")
        if self.query_augment_len is not None and (
                not isinstance(self.query_augment_len, int) or isinstance(self.query_augment_len, bool)
                or self.query_augment_len < 3):
            raise ValueError(f"ModelConfig.query_augment_len must be an integer >= 3 or None, got {self.query_augment_len!r}")
        if (isinstance(self.dense_weight, bool) or not isinstance(self.dense_weight, (int, float))
                or not math.isfinite(self.dense_weight) or not 0 <= self.dense_weight <= 100):
            raise ValueError(f"ModelConfig.dense_weight must be a number in [0, 100], got {self.dense_weight!r}")
        if (isinstance(self.dense_length_power, bool) or not isinstance(self.dense_length_power, (int, float))
                or not math.isfinite(self.dense_length_power) or not 0 <= self.dense_length_power <= 10):
            raise ValueError(f"ModelConfig.dense_length_power must be a number in [0, 10], got {self.dense_length_power!r}")
        if self.marker_style not in ("replace", "insert"):
            raise ValueError(f"ModelConfig.marker_style must be 'replace' or 'insert', got {self.marker_style!r}")
        if not isinstance(self.query_expansion, bool):
            raise ValueError(f"ModelConfig.query_expansion must be true or false, got {self.query_expansion!r}")
        if self.skiplist_words is not None:
            if isinstance(self.skiplist_words, str) or not all(isinstance(w, str) for w in self.skiplist_words):
                raise ValueError("ModelConfig.skiplist_words must be a list of token strings or null")
            object.__setattr__(self, "skiplist_words", tuple(self.skiplist_words))
        if self.similarity != "cosine":
            raise ValueError(f"similarity {self.similarity!r} is not supported; medcolbert scores with cosine (dot products of unit vectors)")
        if self.interaction != "colbert":
            raise ValueError(f"interaction {self.interaction!r} is not supported; only 'colbert' (MaxSim)")

    @property
    def augment_len(self) -> int:
        """The length short queries are padded to with [MASK] (never past query_maxlen; 0 without expansion)."""
        if not self.query_expansion:
            return 0
        return self.query_maxlen if self.query_augment_len is None else min(self.query_augment_len, self.query_maxlen)

    def pooled_weight(self, vectors: int) -> float:
        """The pooled term's weight for a query of this many vectors (dense_weight, grown past augment_len)."""
        if self.dense_length_power == 0 or vectors <= self.augment_len:
            return float(self.dense_weight)
        return float(self.dense_weight) * (vectors / max(self.augment_len, 1)) ** self.dense_length_power

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return dataclasses.asdict(self)

    def to_colbert_metadata(self, name: str | None = None, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The complete `artifact.metadata` dict colbert-ai writes and reads for this config."""
        meta = dict(COLBERT_AI_DEFAULTS)
        meta.update(self.to_dict())
        # colbert-ai builds its model class from `model_name` when set (a hub id it may try to download);
        # left None, it reads the checkpoint folder's own config.json, which is what we want.
        meta["model_name"] = None
        if self.query_expansion and self.augment_len < self.query_maxlen:
            # colbert-ai, PyLate and Sentence Transformers pad every query to `query_maxlen`; medcolbert pads to
            # the augmentation length and lets longer queries run to its own limit. Telling them the padded
            # length makes them encode every query of up to that many tokens as medcolbert does (longer ones
            # they cut there); medcolbert reads its own limit back from `medcolbert_query_maxlen`.
            meta["query_maxlen"] = self.augment_len
            meta["medcolbert_query_maxlen"] = self.query_maxlen
        if self.skiplist_words is not None:
            meta["skiplist_words"] = list(self.skiplist_words)
        meta["meta"] = {"written_by": "medcolbert", "name": name, **(extra_meta or {})}
        return meta

    @classmethod
    def from_colbert_metadata(cls, data: dict[str, Any], source: str = "artifact.metadata") -> "ModelConfig":
        """The config stored in a colbert-ai `artifact.metadata` dict (unknown fields are ignored)."""
        if "config" in data and isinstance(data["config"], dict):  # older colbert-ai wraps the fields
            data = data["config"]
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in fields and v is not None}
        # A checkpoint without the key was written by colbert-ai (or medcolbert before 0.2): it pads every
        # query to its query_maxlen, and keeps doing so here.
        values["query_augment_len"] = data.get("query_augment_len")
        if isinstance(data.get("medcolbert_query_maxlen"), int):
            values["query_maxlen"] = data["medcolbert_query_maxlen"]
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: {exc}") from None

    @classmethod
    def read_metadata(cls, path: str | Path) -> "ModelConfig":
        """The config stored in an `artifact.metadata` file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cls.from_colbert_metadata(data, source=str(path))
