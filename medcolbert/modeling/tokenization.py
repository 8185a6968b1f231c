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
        self.query_marker_id = self._require_token(config.query_token_id)
        self.doc_marker_id = self._require_token(config.doc_token_id)
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        # Punctuation marks and their first sub-token are skipped in documents, as colbert-ai does.
        skip: set[int] = set()
        if config.mask_punctuation:
            for symbol in string.punctuation:
                ids = tokenizer.encode(symbol, add_special_tokens=False)
                if ids:
                    skip.add(int(ids[0]))
        self.skiplist_ids = torch.tensor(sorted(skip), dtype=torch.long)
        self._warned_truncation = False

    def _require_token(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise ValueError(f"marker token {token!r} is not in the tokenizer's vocabulary")
        return int(token_id)

    def _encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        # The ". " prefix reserves position 1, which is then overwritten by the [Q]/[D] marker.
        prefixed = [". " + t for t in texts]
        out = self.tokenizer(prefixed, add_special_tokens=True, truncation=True, max_length=max_length,
                             return_attention_mask=False, return_token_type_ids=False)
        return out["input_ids"]

    def document_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each document after truncation (used to sort batches by length)."""
        return [len(ids) for ids in self._encode(texts, self.config.doc_maxlen)]

    def _untruncated(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as _encode makes them, but with nothing cut (to see and report what a limit drops)."""
        return self.tokenizer([". " + t for t in texts], add_special_tokens=True, truncation=False, verbose=False,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def untruncated_document_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each document before truncation at doc_maxlen (special tokens included)."""
        return [len(s) for s in self._untruncated(texts)]

    def query_token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each query's token ids ([CLS], marker slot, tokens, [SEP]), cut at query_maxlen (reported once)."""
        limit = self.config.query_maxlen
        # Tokenized in full first, so that a cut is seen and reported rather than made silently.
        seqs = self._untruncated(texts)
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
            ids[row, 1] = self.query_marker_id
            mask[row, : target if self.config.attend_to_mask_tokens else len(seq)] = 1
        return TokenBatch(ids, mask)

    def query_keep_mask(self, batch: TokenBatch) -> torch.Tensor:
        """Boolean mask of the query positions that get a vector: every position but [PAD]."""
        return batch.input_ids != self.pad_token_id

    def tokenize_documents(self, texts: Sequence[str]) -> TokenBatch:
        """Documents with the [D] marker, truncated at doc_maxlen, padded to the longest."""
        seqs = self._encode(texts, self.config.doc_maxlen)
        length = max((len(s) for s in seqs), default=0)
        ids = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, seq in enumerate(seqs):
            seq[1] = self.doc_marker_id
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return TokenBatch(ids, mask)

    def document_keep_mask(self, batch: TokenBatch) -> torch.Tensor:
        """Boolean mask of the document tokens that get a vector: not padding, not punctuation."""
        keep = batch.attention_mask.bool()
        if self.skiplist_ids.numel():
            keep &= ~torch.isin(batch.input_ids, self.skiplist_ids.to(batch.input_ids.device))
        return keep
