"""The ColBERT encoder: a Hugging Face backbone plus a linear projection, one unit vector per token."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import ModelConfig
from ..machine import THREADS
from .tokenization import ColBERTTokenizer, TokenBatch

PROJECTION_SEED = 20240601


def fresh_projection(hidden_size: int, dim: int, seed: int = PROJECTION_SEED) -> torch.Tensor:
    """A seeded random projection with orthonormal rows, [dim, hidden_size]."""
    # Orthonormal rows keep the geometry of the backbone's token space as far as `dim` allows, and the
    # fixed seed makes the "plain HF encoder" model the same on every machine (and its cache key stable).
    # LAPACK's QR gives bit-different results with different thread counts; one thread and float64,
    # rounded to float32, make the bits (and so the fingerprint) the same under any torch.set_num_threads.
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(max(hidden_size, dim), min(hidden_size, dim), generator=gen).double()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        q, _ = torch.linalg.qr(gaussian)
    finally:
        torch.set_num_threads(threads)
    return (q.T if dim <= hidden_size else q).float().contiguous()


class ColBERT(nn.Module):
    """A late-interaction encoder: `encode(texts, is_query=...)` gives per-token unit vectors."""

    def __init__(self, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 config: ModelConfig | None = None, projection: torch.Tensor | None = None,
                 name: str = "colbert", source: str | None = None, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        # A bias only where the checkpoint has one (a PyLate / Sentence Transformers Dense with bias=True).
        self.linear = nn.Linear(hidden, self.config.dim, bias=bias is not None)
        weight = projection if projection is not None else fresh_projection(hidden, self.config.dim)
        if tuple(weight.shape) != (self.config.dim, hidden):
            raise ValueError(f"projection has shape {tuple(weight.shape)}, expected ({self.config.dim}, {hidden})")
        with torch.no_grad():
            self.linear.weight.copy_(weight.to(self.linear.weight.dtype))
            if bias is not None:
                if tuple(bias.shape) != (self.config.dim,):
                    raise ValueError(f"projection bias has shape {tuple(bias.shape)}, expected ({self.config.dim},)")
                self.linear.bias.copy_(bias.to(self.linear.bias.dtype))
        self.tokenizer = ColBERTTokenizer(tokenizer, self.config)
        self.name = name
        # The checkpoint layout it was loaded from ("colbert-ai", "pylate", "sentence-transformers", ...).
        self.layout = "colbert-ai"
        self.new_projection = False   # True when load_colbert made the projection (a plain encoder)
        # What from_pretrained was given (None = the packaged default), so an index can name its model.
        self.source = source
        # Mixed precision for encoding: float16 on CUDA by default, full precision on CPU unless asked.
        self.autocast_dtype: torch.dtype | None = None
        # Latency-bound callers (search) may turn this on: queries then run through a traced, frozen
        # TorchScript graph per batch shape, about 1.7x faster than eager for one query on 2 CPU cores.
        self.trace_queries = False
        self._query_graphs: dict[tuple, torch.jit.ScriptModule] = {}
        # The traced query graph's weight precision on the CPU (None: float32); chosen per machine by
        # modeling.precision.choose_query_precision, which searches call. Eager encoding ignores it.
        self.query_dtype: torch.dtype | None = None
        # A smaller backbone for queries only (modeling.query_encoder: a distilled student sharing the
        # embeddings); None = queries go through the full backbone, as documents always do.
        self.query_backbone: nn.Module | None = None
        self.query_encoder_info: dict = {}
        # The local folder the weights were read from (None when built in memory); never written anywhere.
        self.folder: Path | None = None

    # ----------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = "auto", new_projection: bool = False,
                        query_encoder: str | Path | None = None, **config_overrides: object) -> "ColBERT":
        """Load a colbert-ai, PyLate or Sentence Transformers checkpoint (folder or hub name); None = the release.

        A plain transformers encoder needs new_projection=True (a seeded random projection, to train).
        query_encoder: None / 'full' (the backbone), 'distilled' (the folder's query_encoder/, fewer layers for
        queries; documents unchanged) or a query_encoder folder.
        """
        from .checkpoint import load_colbert
        from .query_encoder import choose_query_encoder

        model = load_colbert(name_or_path, new_projection=new_projection, **config_overrides)
        choose_query_encoder(model, query_encoder, model.folder)
        return model.to_device(device, dtype)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, format: str = "colbert-ai") -> Path:
        """Write the model in colbert-ai's layout, or format='pylate' / 'sentence-transformers' (modules.json)."""
        from .checkpoint import save_colbert

        return save_colbert(self, path, dtype=dtype, format=format)

    def to_device(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = "auto") -> "ColBERT":
        """Move to `device` (default: CUDA if present) and pick the encoding precision."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        self.to(device)
        self.eval()
        self._query_graphs.clear()
        self.autocast_dtype = resolve_autocast_dtype(dtype, device)
        return self

    def train(self, mode: bool = True) -> "ColBERT":
        """Switch training mode; traced query graphs hold frozen weights, so training drops them."""
        if mode:
            self._query_graphs.clear()
        return super().train(mode)

    @property
    def hidden_size(self) -> int:
        """The backbone's width (the pooled single vectors' dimension)."""
        return int(self.linear.weight.shape[1])

    @property
    def device(self) -> torch.device:
        """The device the weights are on."""
        return self.linear.weight.device

    def reconfigure(self, **changes: object) -> "ColBERT":
        """Change tokenization settings (query_maxlen, doc_maxlen, ...) in place; the weights stay."""
        if "dim" in changes and changes["dim"] != self.config.dim:
            raise ValueError("dim is fixed by the projection's weights")
        self.config = self.config.replace(**changes)
        self.tokenizer.config = self.config
        self._query_graphs.clear()
        return self

    # The settings that change a document's vectors; query-side ones (query_maxlen, augmentation) do not.
    DOCUMENT_FIELDS = ("dim", "doc_maxlen", "doc_token_id", "mask_punctuation", "similarity", "interaction")
    LATER_DOCUMENT_FIELDS = ("marker_style", "skiplist_words", "document_prompt")

    def fingerprint(self, weights_only: bool = False) -> str:
        """A hash of weights, vocabulary and (unless weights_only) the document-side config and precision,
        to key cached document vectors and indexes: two models that encode documents alike share them."""
        h = hashlib.sha256()
        if not weights_only:
            config = self.config.to_dict()
            fields = {k: config[k] for k in self.DOCUMENT_FIELDS}
            # Settings added later enter only when they differ from their default, so that the fingerprints
            # of models (and the indexes and caches keyed by them) from before stay what they were.
            defaults = ModelConfig()
            fields.update({k: config[k] for k in self.LATER_DOCUMENT_FIELDS if config[k] != getattr(defaults, k)})
            h.update(json.dumps(fields, sort_keys=True).encode())
            h.update(str(self.autocast_dtype).encode())
        h.update(json.dumps(sorted(self.tokenizer.tokenizer.get_vocab().items())).encode())
        for key, tensor in sorted(self.state_dict().items()):
            if key.startswith("query_backbone."):
                continue  # the query encoder never touches a document's vectors
            h.update(key.encode())
            h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:24]

    # ----------------------------------------------------------------- forward passes
    def _hidden(self, batch: TokenBatch, query: bool = False) -> torch.Tensor:
        backbone = self.query_backbone if query and self.query_backbone is not None else self.backbone
        out = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return out[0] if isinstance(out, tuple) else out.last_hidden_state

    def _project(self, batch: TokenBatch) -> torch.Tensor:
        return self.linear(self._hidden(batch))

    @property
    def has_dense_head(self) -> bool:
        """Whether scores add the pooled single-vector term (config.dense_weight > 0)."""
        return self.config.dense_weight > 0

    def _pool(self, hidden: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """Unit mean of the backbone's states over the text's tokens ([MASK] augmentation and [PAD] excluded)."""
        # The mean pooling all-MiniLM-L6-v2 was trained with, so the head starts as that single-vector model.
        real = batch.attention_mask.bool() & (batch.input_ids != self.tokenizer.mask_token_id)
        mask = real.to(hidden.dtype).unsqueeze(-1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(mean.float(), p=2, dim=-1)

    def forward_queries_pooled(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query token vectors [B, L, dim] and pooled single vectors [B, hidden], from one backbone pass."""
        hidden = self._hidden(batch, query=True)
        vectors = nn.functional.normalize(self.linear(hidden).float(), p=2, dim=-1)
        vectors = vectors * self.tokenizer.query_keep_mask(batch).unsqueeze(-1)
        return vectors, self._pool(hidden, batch)

    def forward_documents_pooled(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Document token vectors, their keep mask and pooled single vectors [B, hidden], from one pass."""
        hidden = self._hidden(batch)
        vectors = nn.functional.normalize(self.linear(hidden).float(), p=2, dim=-1)
        keep = self.tokenizer.document_keep_mask(batch)
        return vectors * keep.unsqueeze(-1), keep, self._pool(hidden, batch)

    def forward_queries(self, batch: TokenBatch) -> torch.Tensor:
        """Query token vectors [B, L, dim], unit length ([MASK] augmentation included; [PAD] positions zero)."""
        vectors = nn.functional.normalize(self.linear(self._hidden(batch, query=True)).float(), p=2, dim=-1)
        return vectors * self.tokenizer.query_keep_mask(batch).unsqueeze(-1)

    def _low_precision_copy(self, dtype: torch.dtype) -> "ColBERT":
        """This model with its weights in `dtype` (traced graphs left out of the copy)."""
        graphs, self._query_graphs = self._query_graphs, {}
        try:
            low = copy.deepcopy(self)
        finally:
            self._query_graphs = graphs
        low.query_dtype = None
        return low.to(dtype)

    def _query_graph(self, batch: TokenBatch, pooled: bool = False) -> torch.jit.ScriptModule | None:
        key = (*batch.input_ids.shape, self.query_dtype, pooled)
        if key not in self._query_graphs:
            from transformers.utils import logging as hf_logging

            previous = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # tracing makes transformers log config notes that mean nothing here
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    source = self if self.query_dtype is None else self._low_precision_copy(self.query_dtype)
                    traced = torch.jit.trace(_QueryGraph(source, pooled), (batch.input_ids, batch.attention_mask),
                                             check_trace=False, strict=False)
                    # freeze + oneDNN fusions: about 15% faster again than a frozen graph for one query here.
                    # (bf16 weights: only frozen; the oneDNN rewrite made them 20x slower on a Xeon without AMX.)
                    self._query_graphs[key] = (torch.jit.optimize_for_inference(traced.eval())
                                               if self.query_dtype is None else torch.jit.freeze(traced.eval()))
            except Exception:  # a backbone that cannot be traced simply stays eager
                self.trace_queries = False
                return None
            finally:
                hf_logging.set_verbosity(previous)
        return self._query_graphs[key]

    def forward_documents(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Document token vectors [B, L, dim], unit length, with the mask of tokens kept (no padding, no punctuation)."""
        vectors = nn.functional.normalize(self._project(batch).float(), p=2, dim=-1)
        keep = self.tokenizer.document_keep_mask(batch)
        return vectors * keep.unsqueeze(-1), keep

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        # eval()/train() walk every submodule (milliseconds on a 6-layer BERT), a cost a one-query search
        # should not pay when the model is already in eval mode.
        was_training = self.training
        if was_training:
            self.eval()
        amp = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
               if self.autocast_dtype is not None else contextlib.nullcontext())
        try:
            with torch.inference_mode(), amp:
                yield
        finally:
            if was_training:
                self.train(True)

    # ----------------------------------------------------------------- public encoding
    def encode_queries(self, queries: Sequence[str], batch_size: int = 128, show_progress: bool | None = None,
                       pooled: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Query vectors, [n, L, dim] float32 on the CPU; L is the longest query's vector count.

        Each query has max(augmentation length, its tokens) vectors; the rows past them are zero, which
        MaxSim ignores. pooled=True also returns the pooled single vectors [n, hidden] (the dense head's).
        """
        queries = _as_text_list(queries, "queries")
        # One tokenizer call for all queries: the lengths size the output and order the batches.
        seqs = self.tokenizer.query_token_ids(queries) if queries else []
        lengths = [self.tokenizer.query_length(seq) for seq in seqs]
        out = torch.zeros((len(queries), max(lengths, default=self.config.augment_len), self.config.dim),
                          dtype=torch.float32)
        pooled_out = torch.zeros((len(queries), self.hidden_size), dtype=torch.float32) if pooled else None
        # Batches of similar length: a long question does not make a whole batch of short ones pay for it.
        order = sorted(range(len(queries)), key=lambda i: lengths[i])
        starts = range(0, len(queries), batch_size)
        with self._inference():
            for start in _progress(starts, show_progress, "Encoding queries", batch_size, len(queries)):
                idx = order[start:start + batch_size]
                batch = self.tokenizer.query_batch([seqs[i] for i in idx]).to(self.device)
                graph = None
                if self.trace_queries and self.device.type == "cpu" and self.autocast_dtype is None and not self.training:
                    # One graph per shape: long queries are padded up to a multiple of 16 tokens ([PAD] gives
                    # zero vectors and is left out of the pooled mean), so at most query_maxlen / 16 graphs
                    # are ever traced (per output kind).
                    batch = _pad_to(batch, _bucket(batch.input_ids.shape[1], self.config.augment_len),
                                    self.tokenizer.pad_token_id)
                    graph = self._query_graph(batch, pooled_out is not None)
                if graph is not None:
                    # Latency-bound calls (a query or a few) run on the cores other processes leave free
                    # (machine.ThreadChoice: torch's own setting on a quiet machine).
                    threads = THREADS.run() if len(idx) <= 4 else contextlib.nullcontext()
                    with threads:
                        out_graph = graph(batch.input_ids, batch.attention_mask)
                    vectors, pooled_vectors = out_graph if pooled_out is not None else (out_graph, None)
                elif pooled_out is not None:
                    vectors, pooled_vectors = self.forward_queries_pooled(batch)
                else:
                    vectors, pooled_vectors = self.forward_queries(batch), None
                if pooled_out is not None:
                    pooled_out[idx] = pooled_vectors.float().cpu()
                width = min(vectors.shape[1], out.shape[1])
                out[idx, :width] = vectors[:, :width].float().cpu()
        return (out, pooled_out) if pooled_out is not None else out

    def encode_documents(self, documents: Sequence[str], batch_size: int = 32, show_progress: bool | None = None,
                         pooled: bool = False) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """Per-document vectors of the kept tokens, each [n_tokens, dim] float32 on the CPU.

        pooled=True also returns the pooled single vectors [n, hidden] from the same pass (the dense head's).
        """
        documents = _as_text_list(documents, "documents")
        # Sorting by length keeps padding, and so wasted compute, to a minimum.
        lengths = self.tokenizer.document_lengths(documents)
        order = sorted(range(len(documents)), key=lambda i: lengths[i], reverse=True)
        out: list[torch.Tensor | None] = [None] * len(documents)
        pooled_out = torch.zeros((len(documents), self.hidden_size), dtype=torch.float32) if pooled else None
        starts = range(0, len(order), batch_size)
        with self._inference():
            bar = _progress(starts, show_progress, "Encoding documents", batch_size, len(documents))
            for start in bar:
                idx = order[start:start + batch_size]
                batch = self.tokenizer.tokenize_documents([documents[i] for i in idx]).to(self.device)
                if pooled_out is not None:
                    vectors, keep, pooled_vectors = self.forward_documents_pooled(batch)
                    pooled_out[idx] = pooled_vectors.float().cpu()
                else:
                    vectors, keep = self.forward_documents(batch)
                vectors, keep = vectors.cpu(), keep.cpu()
                for row, i in enumerate(idx):
                    out[i] = vectors[row][keep[row]].clone()
        return (out, pooled_out) if pooled_out is not None else out  # type: ignore[return-value]

    def encode(self, texts: str | Sequence[str], is_query: bool, batch_size: int | None = None,
               show_progress: bool | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Encode queries (a [n, Lq, dim] tensor) or documents (a list of [n_i, dim] tensors)."""
        single = isinstance(texts, str)
        items = [texts] if single else texts
        if is_query:
            q = self.encode_queries(items, batch_size=batch_size or 128, show_progress=show_progress)
            return q[0] if single else q
        d = self.encode_documents(items, batch_size=batch_size or 32, show_progress=show_progress)
        return d[0] if single else d


class _QueryGraph(nn.Module):
    """The query forward pass as a plain (ids, mask) -> vectors module, for tracing."""

    def __init__(self, model: ColBERT, pooled: bool = False) -> None:
        super().__init__()
        self.model, self.pooled = model, pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch = TokenBatch(input_ids, attention_mask)
        return self.model.forward_queries_pooled(batch) if self.pooled else self.model.forward_queries(batch)


def _bucket(length: int, augment: int) -> int:
    """The traced-graph length for a batch of `length` tokens: the augmentation length, or the next multiple of 16."""
    return length if length <= augment else -(-length // 16) * 16


def _pad_to(batch: TokenBatch, length: int, pad_id: int) -> TokenBatch:
    """The batch right-padded with [PAD] (attention 0) to `length` tokens."""
    extra = length - batch.input_ids.shape[1]
    if extra <= 0:
        return batch
    return TokenBatch(nn.functional.pad(batch.input_ids, (0, extra), value=pad_id),
                      nn.functional.pad(batch.attention_mask, (0, extra), value=0))


def has_pooled_head(model: object) -> bool:
    """Whether a model (or a stand-in for one, e.g. a CachedEncoder) scores with a pooled single-vector head."""
    return bool(getattr(model, "has_dense_head", False))


def encode_queries_pooled(model: ColBERT, texts: Sequence[str], **options: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Query vectors and, for a model with a pooled head, its pooled vectors from the same pass (else None)."""
    if has_pooled_head(model):
        return model.encode_queries(texts, pooled=True, **options)  # type: ignore[return-value, arg-type]
    return model.encode_queries(texts, **options), None  # type: ignore[return-value, arg-type]


def encode_documents_pooled(model: ColBERT, texts: Sequence[str],
                            **options: object) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Document vectors and, for a model with a pooled head, their pooled vectors from the same pass (else None)."""
    if has_pooled_head(model):
        return model.encode_documents(texts, pooled=True, **options)  # type: ignore[return-value, arg-type]
    return model.encode_documents(texts, **options), None  # type: ignore[return-value, arg-type]


def resolve_autocast_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for encoding: 'auto' is float16 on CUDA and full precision elsewhere."""
    if dtype is None or dtype in ("float32", "fp32", torch.float32):
        return None
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else None
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if isinstance(dtype, str):
        if dtype not in table:
            raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
        dtype = table[dtype]
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported encoding dtype {dtype}")
    return dtype


def _as_text_list(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a sequence of strings, not one string")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str")
    return items


def _progress(starts: range, show: bool | None, desc: str, batch_size: int, total: int) -> Iterator[int]:
    if show is None:
        show = len(starts) > 1
    if not show:
        yield from starts
        return
    with tqdm(total=total, desc=desc, unit="text", smoothing=0.05) as bar:
        for start in starts:
            yield start
            bar.update(min(batch_size, total - start))
