"""Documents encoded for an index: the one place texts become vectors before `Index.update` stores them.

The index never sees a model (as in PyLate and fast-plaid): a caller encodes with `EncodedDocuments.encode`
(which splits documents into passages the way the index was built, and checks the model against it) or
brings vectors it made itself, and `Index.update(add=encoded)` validates and commits them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import MedColbertError
from ..filters import check_metadata
from ..passages import PassageSplitter, parent_of, split_records
from ..validation import check_id, check_text

if TYPE_CHECKING:
    from .index import Index


@dataclass
class EncodedDocuments:
    """Documents ready to add: {stored id: text} (passage ids when `split`), one [tokens, dim] tensor per entry,
    their pooled vectors [n, hidden] for a pooled-head model (None otherwise) and {stored id: metadata}."""

    texts: dict[str, str]
    vectors: list[torch.Tensor]
    pooled: torch.Tensor | None = None
    metadata: dict[str, dict] = field(default_factory=dict)
    split: bool = False

    def __post_init__(self) -> None:
        self.texts, self.vectors, self.metadata = dict(self.texts), list(self.vectors), dict(self.metadata or {})
        _check_inputs(self.texts, self.metadata, self.split)
        if len(self.vectors) != len(self.texts):
            raise MedColbertError(f"{len(self.vectors)} vector sets for {len(self.texts)} documents")

    @classmethod
    def encode(cls, model: Any, documents: Mapping[str, str], metadata: Mapping[str, dict] | None = None,
               index: "Index | None" = None, batch_size: int = 32,
               show_progress: bool | None = False) -> "EncodedDocuments":
        """Encode {doc id: text} with a ColBERT model for `index` (split into passages as it was built, with pooled
        vectors when it keeps them); without an index, as the model makes them."""
        from ..modeling.encoder import has_pooled_head

        texts, metadata, split = dict(documents), dict(metadata or {}), False
        _check_inputs(texts, metadata)   # before the slow part
        if index is not None:
            index.check_model(model)
            if index.passages:
                # Documents come whole and are split like the build; each passage keeps its place in the metadata.
                splitter = PassageSplitter(model.tokenizer.tokenizer, index.passages["max_tokens"],
                                           index.passages["overlap"])
                units = list(split_records(splitter, ((d, t, metadata.get(d)) for d, t in texts.items())))
                texts, metadata, split = {u: t for u, t, _ in units}, {u: m for u, _, m in units}, True
        # An empty index takes whatever the model makes; otherwise new documents match the index's kind.
        pooled_wanted = has_pooled_head(model) if index is None or not len(index.doc_ids) else index.pooled is not None
        ids = list(texts)
        if not ids:
            return cls({}, [], None, {}, split)
        if pooled_wanted:
            vectors, pooled = model.encode_documents([texts[u] for u in ids], batch_size=batch_size, pooled=True,
                                                     show_progress=show_progress)
        else:
            vectors = model.encode_documents([texts[u] for u in ids], batch_size=batch_size,
                                             show_progress=show_progress)
            pooled = None
        return cls(texts, list(vectors), pooled, {u: m for u, m in metadata.items() if m}, split)

    def __len__(self) -> int:
        return len(self.texts)


def _check_inputs(texts: Mapping[str, str], metadata: Mapping[str, Any], split: bool = False) -> None:
    """Refuse a bad id or text, or metadata for a document that is not given (one-line MedColbertError);
    split: the ids are passage ids, checked by their document's id."""
    for unit, text in texts.items():
        doc = parent_of(unit) if split else unit
        try:
            check_id(doc, "document id")
            check_text(text, f"text of document '{doc}'")
        except ValueError as exc:
            raise MedColbertError(str(exc)) from None
    stray = [d for d in metadata if d not in texts]
    if stray:
        raise MedColbertError(f"metadata for {len(stray)} id(s) not among the documents, e.g. {stray[0]!r}")
    for unit, meta in metadata.items():
        try:
            # Passage metadata carries the place the splitter wrote; users' metadata may not name that key.
            check_metadata(meta, parent_of(unit) if split else unit, allow_reserved=split)
        except ValueError as exc:
            raise MedColbertError(str(exc)) from None


def check_vectors(encoded: EncodedDocuments, dim: int, pooled_dim: int | None, holds_documents: bool) -> None:
    """Refuse vectors an index of this shape cannot take (pooled_dim: its pooled vectors' width, None: none kept)."""
    if any(v.ndim != 2 or v.shape[-1] != dim for v in encoded.vectors):
        raise MedColbertError(f"document vectors must be [tokens, {dim}]")
    pooled = encoded.pooled
    if pooled_dim is not None and encoded.texts and pooled is None and holds_documents:
        raise MedColbertError("this index keeps pooled single vectors beside the token vectors; pass the added "
                              "documents' pooled vectors too (EncodedDocuments.encode does), or encode them again")
    if pooled is None:
        return
    if pooled.ndim != 2 or len(pooled) != len(encoded) or not torch.isfinite(pooled).all() or (
            pooled_dim is not None and pooled.shape[1] != pooled_dim):
        raise MedColbertError(f"pooled vectors must be finite, [{len(encoded)}, hidden] (got {tuple(pooled.shape)})")
    if pooled_dim is None and holds_documents:
        raise MedColbertError("this index holds no pooled vectors (built with a model without a pooled head)")


__all__ = ["EncodedDocuments", "check_vectors"]
