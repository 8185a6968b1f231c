"""Long documents as overlapping passages: split by tokens at index time, scored per document by its best passage."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import MedColbertError
from .validation import check_int

# Passage ids are "<document id>\x1f<n>". Control characters are refused in every id (validation.id_problem),
# so a passage id can never collide with a document id or be split wrongly.
SEPARATOR = "\x1f"
# Where a passage's place in its document is kept in the document store's metadata (stripped on the way out).
SPAN_KEY = "medcolbert:passage"
# Special tokens a document sequence adds around its text: [CLS], the [D] marker and [SEP].
SPECIAL_TOKENS = 3


@dataclass(frozen=True)
class PassageSplitter:
    """Splits a text into windows of at most `max_tokens` word pieces that share `overlap` tokens with the previous
    one, cut at word boundaries; each passage is a character span of the original text."""

    tokenizer: Any
    max_tokens: int
    overlap: int = 32

    def __post_init__(self) -> None:
        check_int("passage_tokens", self.max_tokens, 8, 100_000)
        check_int("passage_overlap", self.overlap, 0, self.max_tokens // 2)

    @classmethod
    def for_model(cls, model: Any, max_tokens: int | None = None, overlap: int | None = None) -> "PassageSplitter":
        """A splitter whose passages fit the model's document length (doc_maxlen minus the special tokens);
        the overlap defaults to 32 tokens, at most a quarter of a passage."""
        size = max_tokens or model.config.doc_maxlen - SPECIAL_TOKENS
        try:
            return cls(model.tokenizer.tokenizer, size, min(32, size // 4) if overlap is None else overlap)
        except ValueError as exc:
            raise MedColbertError(str(exc)) from None

    def settings(self) -> dict:
        """What the index records about its passages."""
        return {"max_tokens": self.max_tokens, "overlap": self.overlap}

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of the passages of `text`; together they cover it (one span if it fits)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                             verbose=False)
        offsets, words = enc["offset_mapping"], enc.word_ids()
        n = len(offsets)
        if n <= self.max_tokens:
            return [(0, len(text))]
        spans: list[tuple[int, int]] = []
        a = 0
        while True:
            b = min(a + self.max_tokens, n)
            # A window ends before a word's continuation pieces, so no word is cut in two (unless one word
            # alone is longer than a window).
            while b < n and b > a + 1 and words[b] is not None and words[b] == words[b - 1]:
                b -= 1
            start = 0 if not spans else offsets[a][0]
            end = len(text) if b >= n else offsets[b][0]
            spans.append((start, end))
            if b >= n:
                return spans
            nxt = max(b - self.overlap, a + 1)
            while nxt > a + 1 and words[nxt] is not None and words[nxt] == words[nxt - 1]:
                nxt -= 1
            a = nxt


def passage_id(doc_id: str, n: int) -> str:
    """The id of a document's n-th passage."""
    return f"{doc_id}{SEPARATOR}{n}"


def parent_of(unit_id: str) -> str:
    """The document id of a passage id (a document id is its own parent)."""
    return unit_id.rsplit(SEPARATOR, 1)[0] if SEPARATOR in unit_id else unit_id


def split_records(splitter: PassageSplitter, records: Iterator[tuple[str, str, dict | None]]
                  ) -> Iterator[tuple[str, str, dict]]:
    """(passage id, passage text, metadata with the passage's place) for every passage of every record."""
    for doc_id, text, meta in records:
        if meta and SPAN_KEY in meta:
            raise MedColbertError(f"document '{doc_id}': metadata key {SPAN_KEY!r} is reserved")
        for n, (start, end) in enumerate(splitter.spans(text)):
            yield passage_id(doc_id, n), text[start:end], {**(meta or {}), SPAN_KEY: [n, start, end]}


def join_passages(parts: Sequence[tuple[str, dict]]) -> tuple[str, dict]:
    """A document's full text and its own metadata from its stored passages (text, metadata), in order."""
    text, covered, meta = "", 0, {}
    for passage, m in parts:
        _, start, end = m[SPAN_KEY]
        text += passage[max(0, covered - start):]
        covered = end
        meta = {k: v for k, v in m.items() if k != SPAN_KEY}
    return text, meta


def aggregate(hits: Sequence[tuple[str, float]], k: int) -> list[tuple[str, float, str]]:
    """Passage hits (best first) as document hits: (document id, best passage score, best passage id), top k."""
    out: list[tuple[str, float, str]] = []
    seen: set[str] = set()
    for unit, score in hits:
        doc = parent_of(unit)
        if doc not in seen:
            seen.add(doc)
            out.append((doc, score, unit))
            if len(out) == k:
                break
    return out


class PassageSource:
    """A CorpusSource seen as its passages: what the index builder encodes when documents are split."""

    def __init__(self, source: Any, splitter: PassageSplitter) -> None:
        self.source = source
        self.splitter = splitter
        self.path = source.path
        self.ids = [pid for pid, _, _ in split_records(splitter, source.iter_records())]
        self.num_documents = len(source)
        h = hashlib.sha256(f"{source.fingerprint()}:{splitter.max_tokens}:{splitter.overlap}".encode())
        self._fingerprint = h.hexdigest()[:24]

    def __len__(self) -> int:
        return len(self.ids)

    def iter_records(self) -> Iterator[tuple[str, str, dict | None]]:
        """Every passage (id, text, metadata) in order."""
        return split_records(self.splitter, self.source.iter_records())

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        """Every passage (id, text) in order."""
        return ((d, t) for d, t, _ in self.iter_records())

    def texts_at(self, positions: set[int]) -> dict[int, str]:
        """The passage texts at some positions, in one pass."""
        return {i: t for i, (_, t) in enumerate(self.iter_texts()) if i in positions}

    def fingerprint(self) -> str:
        """The collection's hash with the splitting settings."""
        return self._fingerprint
