"""ColBERT tokenization: [Q]/[D] markers, [MASK] query augmentation, punctuation skiplist."""

from __future__ import annotations

import string
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..config import ModelConfig


@dataclass
class TokenBatch:
    """Token ids and attention mask of one padded batch."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> "TokenBatch":
        """The same batch on another device."""
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))


class ColBERTTokenizer:
    """Turns queries and documents into the token sequences a ColBERT encoder expects."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ModelConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a [MASK] and a [PAD] token for ColBERT query augmentation")
        self.query_marker_id = self._require_token(config.query_token_id) if config.query_token_id else None
        self.doc_marker_id = self._require_token(config.doc_token_id) if config.doc_token_id else None
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        if self.pad_token_id == self.mask_token_id:
            # PyLate saves its tokenizer with [MASK] as the pad token. Padding positions are masked out of
            # attention and zeroed, so any other id serves, and it keeps [PAD] apart from the [MASK] expansion.
            self.pad_token_id = next(int(i) for i in (tokenizer.unk_token_id, tokenizer.cls_token_id, 0)
                                     if i is not None and i != self.mask_token_id)
        self.skiplist_ids = torch.tensor(sorted(self._skiplist(tokenizer, config)), dtype=torch.long)
        self._warned_truncation = False

    @staticmethod
    def _skiplist(tokenizer: PreTrainedTokenizerBase, config: ModelConfig) -> set[int]:
        """The document token ids left out of MaxSim."""
        if not config.mask_punctuation:
            return set()
        if config.skiplist_words is None:
            # colbert-ai's rule: each ASCII punctuation mark's first sub-token.
            ids = (tokenizer.encode(symbol, add_special_tokens=False) for symbol in string.punctuation)
            return {int(i[0]) for i in ids if i}
        # PyLate's and Sentence Transformers' rule: words that are single vocabulary tokens (others never match).
        unk = tokenizer.unk_token_id
        found = ((w, tokenizer.convert_tokens_to_ids(w)) for w in config.skiplist_words)
        return {int(i) for w, i in found if i is not None and (i != unk or w == tokenizer.unk_token)}

    def _require_token(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise ValueError(f"marker token {token!r} is not in the tokenizer's vocabulary")
        return int(token_id)

    def _encode(self, texts: Sequence[str], max_length: int | None, is_query: bool) -> list[list[int]]:
        """Token ids with special tokens and the marker at position 1, cut at max_length (None: not cut)."""
        marker_id = self.query_marker_id if is_query else self.doc_marker_id
        prompt = self.config.query_prompt if is_query else self.config.document_prompt
        if prompt:
            texts = [prompt + t for t in texts]
        cut = {"truncation": True, "max_length": max_length} if max_length is not None else {"truncation": False}
        options = {"add_special_tokens": True, "verbose": False, "return_attention_mask": False,
                   "return_token_type_ids": False}
        if marker_id is None:
            return self.tokenizer(list(texts), **cut, **options)["input_ids"]
        if self.config.marker_style == "replace":
            # The ". " prefix reserves position 1, which the marker then overwrites (colbert-ai's way).
            seqs = self.tokenizer([". " + t for t in texts], **cut, **options)["input_ids"]
            for seq in seqs:
                seq[1] = marker_id
            return seqs
        if max_length is not None:
            cut["max_length"] = max_length - 1
        seqs = self.tokenizer(list(texts), **cut, **options)["input_ids"]
        return [seq[:1] + [marker_id] + seq[1:] for seq in seqs]

    def offsets(self, text: str, is_query: bool) -> tuple[list[int], list[tuple[int, int] | None]]:
        """One text's token ids exactly as `_encode` makes them (documents cut at doc_maxlen, queries at
        query_maxlen), and each token's character span in `text` (None for [CLS], markers, [SEP], prompts).

        Needs a fast tokenizer (offset mapping); raises ValueError otherwise."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("token spans need a fast (Rust) tokenizer")
        marker_id = self.query_marker_id if is_query else self.doc_marker_id
        prompt = (self.config.query_prompt if is_query else self.config.document_prompt) or ""
        prefix = prompt + (". " if marker_id is not None and self.config.marker_style == "replace" else "")
        limit = self.config.query_maxlen if is_query else self.config.doc_maxlen
        insert = marker_id is not None and self.config.marker_style != "replace"
        enc = self.tokenizer(prefix + text, add_special_tokens=True, return_offsets_mapping=True, verbose=False,
                             truncation=not is_query, max_length=None if is_query else limit - int(insert))
        ids, spans = list(enc["input_ids"]), []
        special = set(self.tokenizer.all_special_ids)
        for tid, (a, b) in zip(ids, enc["offset_mapping"]):
            spans.append(None if tid in special or b <= len(prefix) else (max(0, a - len(prefix)), b - len(prefix)))
        if marker_id is not None:
            if insert:
                ids, spans = ids[:1] + [marker_id] + ids[1:], spans[:1] + [None] + spans[1:]
            else:
                ids[1], spans[1] = marker_id, None
        if is_query and len(ids) > limit:   # as query_token_ids cuts: keep the last ([SEP])
            ids, spans = ids[:limit - 1] + ids[-1:], spans[:limit - 1] + spans[-1:]
        return ids, spans

    def document_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each document after truncation (used to sort batches by length)."""
        return [len(ids) for ids in self._encode(texts, self.config.doc_maxlen, False)]

    def untruncated_document_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each document before truncation at doc_maxlen (special tokens included)."""
        return [len(s) for s in self._encode(texts, None, False)]

    def query_token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each query's token ids ([CLS], marker slot, tokens, [SEP]), cut at query_maxlen (reported once)."""
        limit = self.config.query_maxlen
        # Tokenized in full first, so that a cut is seen and reported rather than made silently.
        seqs = self._encode(texts, None, True)
        cut = sum(len(s) > limit for s in seqs)
        if cut and not self._warned_truncation:
            self._warned_truncation = True
            longest = max(len(s) for s in seqs)
            warnings.warn(f"{cut} of {len(seqs)} queries are longer than query_maxlen={limit} tokens (longest "
                          f"{longest}) and were truncated; raise query_maxlen (up to the backbone's positions) "
                          "to keep them. This warning is shown once.", UserWarning, stacklevel=3)
        return [s if len(s) <= limit else s[: limit - 1] + s[-1:] for s in seqs]

    def query_length(self, seq: Sequence[int]) -> int:
        """A query's vector count: its tokens, at least the augmentation length."""
        return max(self.config.augment_len, len(seq))

    def tokenize_queries(self, texts: Sequence[str]) -> TokenBatch:
        """Queries with the [Q] marker, padded with [MASK] to the augmentation length; longer ones unpadded."""
        return self.query_batch(self.query_token_ids(texts))

    def query_batch(self, seqs: Sequence[Sequence[int]]) -> TokenBatch:
        """The batch of some queries' token ids (from query_token_ids).

        Rows of a batch share the longest row's length; positions past a row's own length hold [PAD],
        whose vectors the encoder zeroes (a zero query vector adds nothing to MaxSim).
        """
        targets = [self.query_length(seq) for seq in seqs]
        length = max(targets, default=self.config.augment_len)
        ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for row, (seq, target) in enumerate(zip(seqs, targets)):
            ids[row, :target] = self.mask_token_id
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : target if self.config.attend_to_mask_tokens else len(seq)] = 1
        return TokenBatch(ids, mask)

    def query_keep_mask(self, batch: TokenBatch) -> torch.Tensor:
        """Boolean mask of the query positions that get a vector: every position but [PAD]."""
        return batch.input_ids != self.pad_token_id

    def tokenize_documents(self, texts: Sequence[str]) -> TokenBatch:
        """Documents with the [D] marker, truncated at doc_maxlen, padded to the longest."""
        seqs = self._encode(texts, self.config.doc_maxlen, False)
        length = max((len(s) for s in seqs), default=0)
        ids = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return TokenBatch(ids, mask)

    def document_keep_mask(self, batch: TokenBatch) -> torch.Tensor:
        """Boolean mask of the document tokens that get a vector: not padding, not punctuation."""
        keep = batch.attention_mask.bool()
        if self.skiplist_ids.numel():
            keep &= ~torch.isin(batch.input_ids, self.skiplist_ids.to(batch.input_ids.device))
        return keep
