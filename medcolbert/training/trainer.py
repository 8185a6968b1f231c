"""Fine-tuning on triplets: contrastive (in-batch + hard negatives) and distillation losses, resumable, DDP-ready.

One trainer serves both model kinds: `colbert` (MaxSim over token vectors) and `dense` (one vector per
text, the MedEmbed recipe), so that comparisons between them share data, budget and code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError, MedColbertError
from ..evaluation.datasets import read_yaml_mapping
from ..fsutil import staged_folder
from ..scoring import maxsim
from .data import Triplet, read_triplets
from .losses import contrastive_loss, distillation_loss

STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"


@dataclass
class TrainConfig:
    """Everything a training run needs; read from YAML by `TrainConfig.from_yaml`."""

    output_dir: str
    train_files: list[Any]                  # paths, or {"path": ..., "repeat": n} to upsample a file
    source_repeat: dict = field(default_factory=dict)  # {triplet "source" field: n} to upsample a source
    sources: list | None = None             # train only on triplets of these sources (None: all)
    source_weights: dict | None = None      # {source: share of the samples}; every source present needs one
    kind: str = "colbert"                   # colbert | dense
    model: str | None = None                # base model; None = the packaged all-MiniLM-L6-v2
    loss: str = "contrastive"               # contrastive | distill | both
    temperature: float = 1.0                # softmax temperature of the contrastive loss
    score_normalization: str = "none"       # none | query_length: ColBERT scores divided by the query's token
                                            # count in the loss, so long queries do not get sharper softmaxes
    distill_temperature: float = 1.0        # temperature applied to teacher scores
    distill_weight: float = 1.0             # weight of the KL term when loss = both
    teacher: str | None = None              # single-vector teacher scored online over every document of the batch
                                            # (None: distill from the pos_scores / neg_scores of the triplets)
    colbert_loss_weight: float = 1.0        # colbert only: weight of the MaxSim contrastive loss; 0 (with
                                            # dense_loss_weight > 0) trains the pooled head alone through the same
                                            # pipeline (markers, [MASK] padding), to tell what MaxSim's loss adds
    dense_loss_weight: float = 0.0          # colbert only: > 0 also trains the pooled single-vector head (mean of the
                                            # backbone's states) with its own contrastive loss, of this weight
    dense_temperature: float = 0.02         # that loss's temperature (MedEmbed's InfoNCE, as dense-minilm-v2)
    dense_weight: float = 1.0               # the head's weight in the saved model's scores (ModelConfig.dense_weight)
    combined_loss_weight: float = 0.0       # > 0 (needs dense_loss_weight > 0): InfoNCE, at `temperature`, on the score
                                            # the saved model ranks by (MaxSim + dense_weight x query vectors x cosine)
    self_distill_weight: float = 0.0        # > 0 (needs dense_loss_weight > 0): KL from the pooled head's scores of the
                                            # batch (detached, at dense_temperature) to MaxSim's (at `temperature`)
    merge_rate: float = 0.0                 # share of training queries joined with another triplet's query (a donor),
                                            # in random order, keeping their own positives: long multi-question
                                            # messages, as real consumer questions often are
    merge_sources: list | None = None       # the sources donors come from (None: any triplet)
    train_layers: int | None = None         # colbert only: train the projection and the top N transformer layers,
                                            # the rest frozen (0: projection only, so the pooled head stays the base
                                            # model and MaxSim is learnt on its token states); None trains all
    l2_to_start: float = 0.0                # weight of an L2 penalty pulling trained backbone weights toward their start
    in_batch_negatives: bool = True
    n_negatives: int = 1                    # hard negatives per query per step
    batch_size: int = 16                    # queries per optimizer step, over all ranks and accumulation
    grad_accum: int = 1
    lr: float = 5e-5
    projection_lr: float | None = None      # ColBERT's linear layer (None = lr)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_steps: int = 1000
    max_grad_norm: float = 1.0
    seed: int = 42
    query_maxlen: int = 32
    query_augment_len: int | None = None    # pad shorter queries with [MASK] to this; None: pad all to query_maxlen
    doc_maxlen: int = 180                   # training truncation; the saved model keeps inference_doc_maxlen
    inference_doc_maxlen: int = 300
    dim: int = 128
    pooling: str = "mean"                   # dense only
    query_prefix: str = ""                  # dense only (bge/MedEmbed-style instruction)
    eval_data: str | None = None            # a BEIR folder for the periodic dev evaluation
    eval_split: str = "dev"
    eval_queries: int = 100
    eval_docs: int = 1000                   # distractors added to the judged documents of the sample
    eval_distractors: str = "bm25"          # bm25: each query's BM25 top hits first, then random; random: random only
    eval_every: int = 250
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    bf16: bool = True                       # autocast on CUDA; CPU stays fp32 (bf16 was slower on this CPU)
    device: str | None = None
    save_dtype: str | None = None           # e.g. float16 for the final model
    notes: dict = field(default_factory=dict)

    LOSSES = ("contrastive", "distill", "both")
    SCORE_NORMALIZATIONS = ("none", "query_length")

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {tuple(MODEL_KINDS)}, got {self.kind!r}")
        if self.loss not in self.LOSSES:
            raise ValueError(f"loss must be one of {self.LOSSES}, got {self.loss!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "save_every", "log_every", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.score_normalization not in self.SCORE_NORMALIZATIONS:
            raise ValueError(f"score_normalization must be one of {self.SCORE_NORMALIZATIONS}, "
                             f"got {self.score_normalization!r}")
        if self.n_negatives < 0 or self.temperature <= 0 or self.distill_temperature <= 0 or self.dense_temperature <= 0:
            raise ValueError("n_negatives must be >= 0 and temperatures > 0")
        if self.dense_loss_weight < 0 or self.dense_weight < 0:
            raise ValueError("dense_loss_weight and dense_weight must be >= 0")
        if self.dense_loss_weight > 0 and self.kind != "colbert":
            raise ValueError("dense_loss_weight trains a ColBERT's pooled head; kind must be 'colbert'")
        if not (self.colbert_loss_weight >= 0 and math.isfinite(self.colbert_loss_weight)):
            raise ValueError(f"colbert_loss_weight must be a finite number >= 0, got {self.colbert_loss_weight}")
        if self.colbert_loss_weight == 0 and (self.kind != "colbert" or self.dense_loss_weight <= 0
                                              or self.loss != "contrastive"):
            raise ValueError("colbert_loss_weight 0 leaves nothing to train but the pooled head: it needs kind "
                             "'colbert', loss 'contrastive' and dense_loss_weight > 0")
        if self.combined_loss_weight < 0:
            raise ValueError(f"combined_loss_weight must be >= 0, got {self.combined_loss_weight}")
        if self.combined_loss_weight > 0 and self.dense_loss_weight <= 0:
            raise ValueError("combined_loss_weight needs the pooled head: set dense_loss_weight > 0")
        if not (self.self_distill_weight >= 0 and math.isfinite(self.self_distill_weight)):
            raise ValueError(f"self_distill_weight must be a finite number >= 0, got {self.self_distill_weight}")
        if self.self_distill_weight > 0 and self.dense_loss_weight <= 0:
            raise ValueError("self_distill_weight needs the pooled head: set dense_loss_weight > 0")
        if not (0.0 <= self.merge_rate <= 1.0):
            raise ValueError(f"merge_rate must be between 0 and 1, got {self.merge_rate}")
        if self.merge_sources is not None and (not isinstance(self.merge_sources, list) or not self.merge_sources
                                               or not all(isinstance(x, str) for x in self.merge_sources)):
            raise ValueError(f"merge_sources must be a non-empty list of source names, got {self.merge_sources!r}")
        if self.merge_rate > 0 and self.loss != "contrastive" and self.teacher is None:
            # Stored teacher scores were given for the query alone, not for it joined with another question.
            raise ValueError("merge_rate needs scores of the merged query: use loss 'contrastive' or an online teacher")
        if self.train_layers is not None and (isinstance(self.train_layers, bool) or not isinstance(self.train_layers, int)
                                              or self.train_layers < 0):
            raise ValueError(f"train_layers must be an integer >= 0 or null (all), got {self.train_layers!r}")
        if self.train_layers is not None and self.kind != "colbert":
            raise ValueError("train_layers freezes a ColBERT's backbone; kind must be 'colbert'")
        if not (isinstance(self.l2_to_start, (int, float)) and math.isfinite(self.l2_to_start) and self.l2_to_start >= 0):
            raise ValueError(f"l2_to_start must be a finite number >= 0, got {self.l2_to_start!r}")
        if not self.train_files:
            raise ValueError("train_files is empty")
        if self.eval_distractors not in ("bm25", "random"):
            raise ValueError(f"eval_distractors must be 'bm25' or 'random', got {self.eval_distractors!r}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """A config from a YAML file; unknown keys are an error naming the file and key."""
        known = {f.name for f in dataclasses.fields(cls)}
        raw = read_yaml_mapping(path, known, section="train")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise DataError(f"bad setting: {exc}", path) from None

    def to_dict(self) -> dict:
        """The settings as a plain dict."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------- data
class TripletStream:
    """A deterministic, resumable stream of training samples: epoch e is a seeded permutation of the data."""

    def __init__(self, triplets: Sequence[Triplet], seed: int, n_negatives: int, need_scores: bool,
                 merge_rate: float = 0.0, merge_sources: Sequence[str] | None = None) -> None:
        if not triplets:
            raise DataError("no training triplets")
        self.triplets, self.seed, self.n_negatives = list(triplets), seed, n_negatives
        self.merge_rate = merge_rate
        self.donors: list[Triplet] = []
        if merge_rate > 0:
            wanted = None if merge_sources is None else set(merge_sources)
            self.donors = list({t.query: t for t in self.triplets
                                if wanted is None or t.meta.get("source") in wanted}.values())
            if wanted is not None:
                present = {t.meta.get("source") for t in self.triplets}
                missing = sorted(wanted - present)
                if missing:
                    raise DataError(f"merge_sources names {missing}, which no training triplet has "
                                    f"(present: {sorted(map(str, present))})")
            if len(self.donors) < 2:
                raise DataError(f"merge_rate needs at least 2 distinct donor queries, found {len(self.donors)}")
        if need_scores:
            for i, t in enumerate(self.triplets):
                if t.pos_scores is None or t.neg_scores is None:
                    raise DataError(f"distillation needs pos_scores and neg_scores; triplet {i} has none "
                                    f"(query {t.query[:60]!r})")
                if len(t.neg) < n_negatives:
                    raise DataError(f"distillation with n_negatives={n_negatives} needs that many scored negatives; "
                                    f"triplet {i} has {len(t.neg)} (query {t.query[:60]!r})")
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.triplets))}
        return self._orders[epoch]

    def sample(self, index: int) -> tuple[str, list[str], list[float] | None]:
        """Global sample `index`: (query, [positive, negatives...], teacher scores or None)."""
        epoch, pos = divmod(index, len(self.triplets))
        t = self.triplets[int(self._order(epoch)[pos])]
        rng = random.Random(self.seed * 1_000_003 + index)
        p = rng.randrange(len(t.pos))
        chosen = rng.sample(range(len(t.neg)), min(self.n_negatives, len(t.neg)))
        docs = [t.pos[p]] + [t.neg[j] for j in chosen]
        scores = None
        if t.pos_scores is not None and t.neg_scores is not None:
            scores = [t.pos_scores[p]] + [t.neg_scores[j] for j in chosen]
        # Triplets with too few negatives borrow positives of random other triplets, so every query brings
        # the same number of documents (the shapes all ranks gather must agree). Distillation never gets
        # here: it requires enough scored negatives up front.
        tries = 0
        while len(docs) < 1 + self.n_negatives:
            other = self.triplets[rng.randrange(len(self.triplets))]
            tries += 1
            if other.pos[0] not in t.pos or tries > 20:  # a few tries to avoid a copy of this query's positive
                docs.append(other.pos[0])
        query = t.query
        # Drawn after the documents, so a run with merge_rate 0 samples exactly what it did before the option.
        if self.merge_rate > 0 and rng.random() < self.merge_rate:
            donor = self.donors[rng.randrange(len(self.donors))]
            for _ in range(20):  # a donor that shares a positive would make its question answered too
                if donor.query != t.query and not set(donor.pos) & set(t.pos):
                    break
                donor = self.donors[rng.randrange(len(self.donors))]
            else:
                donor = None
            if donor is not None:
                query = f"{donor.query} {t.query}" if rng.random() < 0.5 else f"{t.query} {donor.query}"
        return query, docs, scores if scores is not None and len(scores) == len(docs) else None


def load_training_data(files: Sequence[Any], source_repeat: dict | None = None,
                       sources: Sequence[str] | None = None) -> list[Triplet]:
    """Triplets of every file (of the given sources only, when named), each file repeated `repeat` times and each
    triplet of source s `source_repeat[s]` times."""
    out: list[Triplet] = []
    for entry in files:
        path, repeat = (entry, 1) if isinstance(entry, str) else (entry.get("path"), entry.get("repeat", 1))
        if not isinstance(path, str) or not isinstance(repeat, int) or repeat < 1:
            raise DataError(f"train_files entry {entry!r}: expected a path or {{path: ..., repeat: n >= 1}}")
        out += read_triplets(path) * repeat
    if sources is not None:
        present = {t.meta.get("source") for t in out}
        missing = [s for s in sources if s not in present]
        if missing:
            raise DataError(f"sources names {missing}, which no training triplet has (present: {sorted(map(str, present))})")
        out = [t for t in out if t.meta.get("source") in set(sources)]
    for source, n in (source_repeat or {}).items():
        if not isinstance(n, int) or n < 1:
            raise DataError(f"source_repeat[{source!r}] must be an integer >= 1, got {n!r}")
        matching = [t for t in out if t.meta.get("source") == source]
        if not matching:
            raise DataError(f"source_repeat names source {source!r}, which no training triplet has")
        out += matching * (n - 1)
    return out


def weight_sources(triplets: Sequence[Triplet], weights: dict, seed: int) -> list[Triplet]:
    """The triplets resampled so that source s makes up weights[s] of them (same total; seeded, deterministic).

    A source given a larger share than it has triplets is cycled through whole permutations before any
    triplet repeats a second time; a smaller share takes a seeded subset.
    """
    by_source: dict[str, list[Triplet]] = {}
    for t in triplets:
        by_source.setdefault(str(t.meta.get("source", "?")), []).append(t)
    unknown = sorted(set(map(str, weights)) - set(by_source))
    if unknown:
        raise DataError(f"source_weights names {unknown}, which no training triplet has (present: {sorted(by_source)})")
    missing = sorted(set(by_source) - set(map(str, weights)))
    if missing:
        raise DataError(f"source_weights gives no weight to sources {missing}; give each present source a weight (0 drops it)")
    for s, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not np.isfinite(w) or w < 0:
            raise DataError(f"source_weights[{s!r}] must be a finite number >= 0, got {w!r}")
    total_w = float(sum(weights.values()))
    if total_w <= 0:
        raise DataError("source_weights are all 0")
    n = len(triplets)
    out: list[Triplet] = []
    for i, source in enumerate(sorted(by_source)):
        items = by_source[source]
        want = round(n * float(weights[source]) / total_w)
        rng = np.random.default_rng([seed, i])
        while want > 0:
            order = rng.permutation(len(items))[:want]
            out += [items[j] for j in order]
            want -= len(order)
    return out


# ---------------------------------------------------------------------------------------------------- models
class _ColBERTKind:
    """What training does that depends on the model kind, for a ColBERT (MaxSim over token vectors)."""

    def load(self, c: "TrainConfig", device: torch.device) -> nn.Module:
        """The model training starts from."""
        from ..modeling.checkpoint import BASE_MODEL_ID
        from ..modeling.encoder import ColBERT

        # None means the packaged base here: training starts from it, never from the release.
        # Training may start from a plain encoder (e.g. bert-base-uncased): its projection starts seeded and random.
        return ColBERT.from_pretrained(c.model or BASE_MODEL_ID, device=device, dtype="float32", new_projection=True,
                                       query_maxlen=c.query_maxlen,
                                       query_augment_len=c.query_augment_len, doc_maxlen=c.doc_maxlen,
                                       **({"dim": c.dim} if c.dim else {}))

    def encode(self, m: nn.Module, queries: list[str], docs: list[str], doc_len: int, pooled: bool) -> tuple:
        """(queries, documents, document keep mask, tokens, pooled queries, pooled documents) of a batch."""
        qb = m.tokenizer.tokenize_queries(queries).to(m.device)
        db = m.tokenizer.tokenize_documents(docs).to(m.device)
        qp = dp = None
        if pooled:  # one backbone pass gives both the token vectors and the pooled head
            q, qp = m.forward_queries_pooled(qb)
            d, keep, dp = m.forward_documents_pooled(db)
        else:
            q = m.forward_queries(qb)
            d, keep = m.forward_documents(db)
        # Pad every rank's documents to the same length so that they can be gathered.
        pad = doc_len - d.shape[1]
        if pad > 0:
            d = nn.functional.pad(d, (0, 0, 0, pad))
            keep = nn.functional.pad(keep, (0, pad))
        return q, d, keep, int(qb.attention_mask.sum() + db.attention_mask.sum()), qp, dp

    def scores(self, c: "TrainConfig", q: torch.Tensor, d: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Every query's score with every document of the batch."""
        scores = maxsim(q, d, document_mask=keep)
        if c.score_normalization == "query_length":
            # [PAD] positions are zero vectors; [MASK] augmentation positions count as tokens.
            length = (q.detach().abs().sum(-1) > 0).sum(-1).clamp(min=1).to(scores.dtype)
            scores = scores / length[:, None]
        return scores

    def reranker(self, m: nn.Module, documents: dict[str, str]) -> Any:
        """Exact MaxSim over {doc id: text} as a Reranker, for the dev evaluation."""
        from ..retrievers import MaxSimReranker

        return MaxSimReranker(m, documents, depth=len(documents))

    def set_lengths(self, m: nn.Module, c: "TrainConfig", saving: bool) -> None:
        """The saved model encodes documents at the inference length (and scores with its pooled head when trained)."""
        if saving:
            m.reconfigure(doc_maxlen=c.inference_doc_maxlen, dense_weight=c.dense_weight if c.dense_loss_weight > 0 else 0.0)
        else:
            m.reconfigure(doc_maxlen=c.doc_maxlen, dense_weight=0.0)


class _DenseKind:
    """The same for a single-vector bi-encoder (cosine of pooled vectors)."""

    def load(self, c: "TrainConfig", device: torch.device) -> nn.Module:
        """The model training starts from."""
        from ..baselines.dense import BiEncoder

        return BiEncoder.from_pretrained(c.model, pooling=c.pooling, query_prefix=c.query_prefix,
                                         max_length=c.doc_maxlen, device=device, dtype="float32")

    def encode(self, m: nn.Module, queries: list[str], docs: list[str], doc_len: int, pooled: bool) -> tuple:
        """(queries, documents, None, tokens, None, None) of a batch."""
        qb, db = m.tokenize(queries, True), m.tokenize(docs, False)
        tokens = int(qb["attention_mask"].sum() + db["attention_mask"].sum())
        return m.forward_batch(qb), m.forward_batch(db), None, tokens, None, None

    def scores(self, c: "TrainConfig", q: torch.Tensor, d: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Every query's cosine with every document of the batch."""
        return q @ d.T

    def reranker(self, m: nn.Module, documents: dict[str, str]) -> Any:
        """Cosine over {doc id: text} as a Reranker, for the dev evaluation."""
        from ..retrievers import CosineReranker

        return CosineReranker(m, documents, depth=len(documents))

    def set_lengths(self, m: nn.Module, c: "TrainConfig", saving: bool) -> None:
        """The saved model reads documents at the inference length."""
        m.max_length = c.inference_doc_maxlen if saving else c.doc_maxlen


# The model kinds a TrainConfig names, each dispatched once here rather than by tests of the name.
MODEL_KINDS = {"colbert": _ColBERTKind(), "dense": _DenseKind()}


class _Encoders(nn.Module):
    """The trainable part of either model kind, as one module DDP can wrap: (queries, docs) -> representations."""

    def __init__(self, model: nn.Module, kind: str, doc_len: int, pooled: bool = False) -> None:
        super().__init__()
        self.model, self.kind, self.doc_len, self.pooled = model, MODEL_KINDS[kind], doc_len, pooled

    def forward(self, queries: list[str], docs: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int,
                                                                    torch.Tensor | None, torch.Tensor | None]:
        return self.kind.encode(self.model, queries, docs, self.doc_len, self.pooled)


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over ranks, keeping gradients flowing back to each rank's own part."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()), dim=0)


def _gather_nograd(t: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Runs (or resumes) a training run described by a TrainConfig."""

    def __init__(self, config: TrainConfig, triplets: Sequence[Triplet] | None = None,
                 show_progress: bool | None = None) -> None:
        self.cfg = config
        self.out = Path(config.output_dir)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        micro_total = config.batch_size // config.grad_accum
        if config.batch_size % (config.grad_accum * self.world):
            raise MedColbertError(f"batch_size {config.batch_size} must be divisible by grad_accum {config.grad_accum} "
                                  f"x world size {self.world}")
        self.micro = micro_total // self.world
        self.device = self._device()
        torch.manual_seed(config.seed)
        self.model = self._load_model()
        data = triplets if triplets is not None else load_training_data(config.train_files, config.source_repeat, config.sources)
        if config.source_weights:
            data = weight_sources(data, config.source_weights, config.seed)
        self.stream = TripletStream(data, config.seed, config.n_negatives,
                                    need_scores=config.loss != "contrastive" and config.teacher is None,
                                    merge_rate=config.merge_rate, merge_sources=config.merge_sources)
        self.teacher = self._load_teacher() if config.teacher and config.loss != "contrastive" else None
        self.encoders = _Encoders(self.model, config.kind, config.doc_maxlen + 2, pooled=config.dense_loss_weight > 0)
        self.ddp: nn.Module = self.encoders
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.encoders, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.lr, weight_decay=config.weight_decay)
        # transformers' linear warm-up and decay (a LambdaLR, so its state resumes like any scheduler's).
        from transformers import get_linear_schedule_with_warmup

        warmup = int(config.warmup_ratio * config.max_steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, config.max_steps)
        self.step = 0
        self.show_progress = self.rank == 0 if show_progress is None else show_progress and self.rank == 0
        self._eval = None

    # ------------------------------------------------------------------ setup
    def _device(self) -> torch.device:
        if self.cfg.device:
            return torch.device(self.cfg.device)
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")

    def _load_model(self) -> nn.Module:
        c = self.cfg
        model = MODEL_KINDS[c.kind].load(c, self.device)
        # The HF pooler head is loaded with the backbone but neither model kind uses it; frozen, it also keeps
        # DistributedDataParallel from waiting for gradients that never come.
        for name, p in model.named_parameters():
            if ".pooler." in name:
                p.requires_grad_(False)
        self.frozen: list[nn.Module] = []
        if c.train_layers is not None:
            self.frozen = freeze_backbone(model, c.train_layers)
        # The starting weights of every trained backbone tensor, for the L2 pull toward them.
        self.start_weights = ({n: p.detach().clone() for n, p in model.named_parameters()
                               if p.requires_grad and n.startswith("backbone.")} if c.l2_to_start > 0 else {})
        return model.train()

    def _load_teacher(self) -> nn.Module:
        from ..baselines.dense import BiEncoder

        # The teacher reads what the student reads: queries and documents at the training lengths.
        teacher = BiEncoder.from_pretrained(self.cfg.teacher, max_length=max(self.cfg.query_maxlen, self.cfg.doc_maxlen),
                                            device=self.device, dtype="float32")
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval()

    def _teacher_scores(self, queries: list[str], docs: list[str]) -> torch.Tensor:
        """The teacher's cosine of every local query with every document of the batch (all ranks when in-batch)."""
        with torch.no_grad():
            tq = self.teacher.forward_texts(queries, True).float()      # type: ignore[union-attr]
            td = self.teacher.forward_texts(docs, False).float()        # type: ignore[union-attr]
            if self.cfg.in_batch_negatives:
                td = _gather_nograd(td)
            return tq @ td.T

    def _param_groups(self) -> list[dict]:
        decay, no_decay, projection = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("linear."):
                projection.append(p)
            elif p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        if projection:
            groups.append({"params": projection, "lr": self.cfg.projection_lr or self.cfg.lr})
        return groups

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        """Finished checkpoints of this run, oldest first."""
        folder = self.out / "checkpoints"
        return sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []

    def save_checkpoint(self) -> Path | None:
        """Write model, optimizer, scheduler, RNG and data position (rank 0), atomically."""
        path = self.out / "checkpoints" / f"step-{self.step:07d}"
        if self.rank == 0:
            with staged_folder(path) as tmp:
                self.model.save_pretrained(tmp / MODEL_DIR)
                state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                         "config": json.dumps(self.cfg.to_dict())}
                if torch.cuda.is_available():
                    state["cuda_rng"] = torch.cuda.get_rng_state()
                torch.save(state, tmp / STATE_FILE)
            for old in self.checkpoints()[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        if self.distributed:
            dist.barrier()
        return path if self.rank == 0 else None

    def resume(self) -> bool:
        """Continue from the latest checkpoint, if there is one; True when resumed."""
        found = self.checkpoints()
        if not found:
            return False
        latest = found[-1]
        state = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=True)
        weights = _load_weights(latest / MODEL_DIR)
        own = self.model.state_dict()
        missing = [k for k in own if k not in weights]
        if missing:
            raise MedColbertError(f"{latest}: checkpoint lacks {missing[:3]}... (another model kind?)")
        self.model.load_state_dict({k: weights[k].to(own[k].dtype) for k in own})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.step = int(state["step"])
        return True

    # ------------------------------------------------------------------ one step
    def _micro_batch(self, micro_index: int) -> tuple[list[str], list[str], list[list[float]] | None]:
        base = self.step * self.cfg.batch_size + micro_index * self.micro * self.world + self.rank * self.micro
        samples = [self.stream.sample(base + i) for i in range(self.micro)]
        queries = [s[0] for s in samples]
        docs = [d for s in samples for d in s[1]]
        scores = [s[2] for s in samples] if samples[0][2] is not None else None
        return queries, docs, scores

    def _loss(self, queries: list[str], docs: list[str], teacher: list[list[float]] | None) -> tuple[torch.Tensor, int]:
        c = self.cfg
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and c.bf16
               else torch.autocast(self.device.type, enabled=False))
        with amp:
            q, d, keep, tokens, qp, dp = self.ddp(queries, docs)
        per_query = 1 + c.n_negatives
        first = torch.arange(len(queries), device=q.device) * per_query   # each query's positive (local index)
        if c.in_batch_negatives:
            # Every document of every rank is a negative for every other query; gradients flow back to the
            # rank that encoded it, so N ranks x B queries train like one process with N*B queries.
            d, keep = _gather(d), _gather_nograd(keep) if keep is not None else None
            dp = _gather(dp) if dp is not None else None
            first = first + self.rank * len(docs)
        scores = self._scores(q, d, keep)                                   # [queries, documents]
        columns = first[:, None] + torch.arange(per_query, device=q.device)[None, :]
        own = scores.gather(1, columns)                                     # each query's positive and negatives

        def candidates(matrix: torch.Tensor) -> torch.Tensor:
            # Every document of the batch, or only the query's own positive and hard negatives.
            return matrix if c.in_batch_negatives else matrix.gather(1, columns)

        positive = first if c.in_batch_negatives else torch.zeros_like(first)

        def infonce(matrix: torch.Tensor, temperature: float) -> torch.Tensor:
            return contrastive_loss(candidates(matrix), positive, temperature)

        loss = torch.zeros((), device=q.device)
        if c.loss in ("contrastive", "both") and c.colbert_loss_weight > 0:
            loss = loss + c.colbert_loss_weight * infonce(scores, c.temperature)
        if qp is not None and dp is not None:
            # The pooled head learns as a single-vector model of its own (MedEmbed's InfoNCE) on the same batch.
            dense = qp @ dp.T
            loss = loss + c.dense_loss_weight * infonce(dense, c.dense_temperature)
            if c.combined_loss_weight > 0:
                # The score inference ranks by: MaxSim plus the pooled cosine weighted per query vector (as
                # scoring.add_dense_term), so the two halves learn to complement each other, not only to rank alone.
                count = (1.0 if c.score_normalization == "query_length"
                         else (q.detach().abs().sum(-1) > 0).sum(-1).to(scores.dtype)[:, None])
                loss = loss + c.combined_loss_weight * infonce(scores + c.dense_weight * count * dense, c.temperature)
            if c.self_distill_weight > 0:
                # The pooled head ranks real consumer questions better than MaxSim does (issue 12): MaxSim is
                # taught its ranking of the batch, without pulling the head towards MaxSim's (teacher detached).
                loss = loss + c.self_distill_weight * distillation_loss(candidates(scores) / c.temperature,
                                                                        candidates(dense.detach()), c.dense_temperature)
        if c.loss in ("distill", "both"):
            if self.teacher is not None:  # online teacher: KL over every document the student scored
                student, t = scores, self._teacher_scores(queries, docs)
            else:
                student, t = own, torch.tensor(teacher, dtype=torch.float32, device=q.device)
            loss = loss + (c.distill_weight if c.loss == "both" else 1.0) * distillation_loss(student, t, c.distill_temperature)
        return loss, tokens

    def _scores(self, q: torch.Tensor, d: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return MODEL_KINDS[self.cfg.kind].scores(self.cfg, q, d, keep)

    def train_step(self) -> dict:
        """One optimizer step over batch_size queries; returns its metrics."""
        self.model.train()
        for module in self.frozen:  # frozen layers run as at inference (no dropout): their states are the base's
            module.eval()
        t0 = time.perf_counter()
        total, tokens = 0.0, 0
        for m in range(self.cfg.grad_accum):
            queries, docs, teacher = self._micro_batch(m)
            loss, n = self._loss(queries, docs, teacher)
            if self.start_weights:
                params = dict(self.model.named_parameters())
                loss = loss + self.cfg.l2_to_start * sum(((params[k] - w) ** 2).sum() for k, w in self.start_weights.items())
            (loss / self.cfg.grad_accum).backward()
            total += float(loss.detach()) / self.cfg.grad_accum
            tokens += n
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        seconds = time.perf_counter() - t0
        return {"step": self.step, "loss": total, "grad_norm": float(norm), "lr": self.scheduler.get_last_lr()[0],
                "seconds": seconds, "triplets_per_s": self.cfg.batch_size / seconds,
                "tokens_per_s": tokens * self.world / seconds}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        """nDCG@10 on the fixed dev sample (exact scoring of every sampled document)."""
        if self.cfg.eval_data is None:
            return {}
        from ..evaluation.datasets import load_beir
        from ..evaluation.metrics import evaluate

        if self._eval is None:
            data = load_beir(self.cfg.eval_data, self.cfg.eval_split)
            rng = random.Random(0)
            qids = sorted(data.qrels)
            qids = sorted(rng.sample(qids, min(self.cfg.eval_queries, len(qids))))
            judged = list(dict.fromkeys(d for q in qids for d in data.qrels[q] if d in data.corpus))
            hard: list[str] = []
            if self.cfg.eval_distractors == "bm25":
                # Random distractors make the sample too easy to show progress (nDCG@10 > 0.9 untrained on
                # MedQuAD); BM25's own top hits are the documents a model must learn to rank below the answer.
                from ..retrievers import BM25Retriever

                bm25 = BM25Retriever({d: doc.full_text for d, doc in data.corpus.items()})
                hits = bm25.retrieve({q: data.queries[q] for q in qids}, k=max(1, self.cfg.eval_docs // max(1, len(qids))))
                hard = [d for d in dict.fromkeys(d for q in qids for d in hits[q]) if d not in set(judged)]
            rest = sorted(set(data.corpus) - set(judged) - set(hard))
            need = max(0, self.cfg.eval_docs - len(hard))
            docs = judged + hard[:self.cfg.eval_docs] + rng.sample(rest, min(need, len(rest)))
            self._eval = ({q: data.queries[q] for q in qids}, {d: data.corpus[d].full_text for d in docs},
                          {q: data.qrels[q] for q in qids})
        queries, corpus, qrels = self._eval
        # Every sampled document is a candidate of every query: the reranker scores them all exactly.
        every = {q: dict.fromkeys(corpus, 0.0) for q in queries}
        run = MODEL_KINDS[self.cfg.kind].reranker(self.model, corpus).rerank(queries, every, k=min(100, len(corpus)))
        self.model.train()
        return {f"dev_{k}": v for k, v in evaluate(run, qrels, ["ndcg@10", "recall@100"]).items()}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        """Train to max_steps (resuming if checkpoints exist), evaluate, and save the final model."""
        c = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        log = self.out / "metrics.jsonl"
        if self.rank == 0:
            (self.out / "config.json").write_text(json.dumps(c.to_dict(), indent=2) + "\n")
            _truncate_log(log, self.step)
            if not resumed and c.eval_data:
                _append(log, {"step": 0, **self.evaluate()})
        bar = tqdm(total=c.max_steps, initial=self.step, desc=f"Training {c.kind}", unit="step",
                   disable=not self.show_progress)
        started, first_step = time.perf_counter(), self.step
        while self.step < c.max_steps:
            metrics = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}")
            if self.rank == 0 and (self.step % c.log_every == 0 or self.step == c.max_steps):
                _append(log, {**metrics, "elapsed_s": time.perf_counter() - started, "resumed_at": first_step})
            if self.step % c.save_every == 0 or self.step == c.max_steps:
                self.save_checkpoint()
            if self.rank == 0 and c.eval_data and (self.step % c.eval_every == 0 or self.step == c.max_steps):
                ev = self.evaluate()
                _append(log, {"step": self.step, **ev})
                bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
        bar.close()
        final = self.out / "final"
        if self.rank == 0:
            # The saved model encodes documents at the inference length, not the (shorter) training one.
            MODEL_KINDS[c.kind].set_lengths(self.model, c, saving=True)
            dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(c.save_dtype or "", None)
            self.model.save_pretrained(final, dtype=dtype)
            MODEL_KINDS[c.kind].set_lengths(self.model, c, saving=False)
        if self.distributed:
            dist.barrier()
        return final


def freeze_backbone(model: nn.Module, train_layers: int) -> list[nn.Module]:
    """Freeze a ColBERT's backbone but its top `train_layers` transformer layers; returns the frozen modules."""
    import re

    layer_of = re.compile(r"\.layer\.(\d+)\.")
    depth = 1 + max((int(m.group(1)) for n, _ in model.named_parameters() if (m := layer_of.search(n))), default=-1)
    if train_layers > depth:
        raise MedColbertError(f"train_layers {train_layers} is more than the backbone's {depth} layers")
    first_trained = depth - train_layers
    frozen: list[nn.Module] = []
    for name, module in model.backbone.named_children():
        if name == "encoder" and hasattr(module, "layer"):
            frozen += list(module.layer)[:first_trained]
        elif name != "pooler":
            frozen.append(module)   # embeddings and anything else outside the layer stack
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return frozen


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A saved model's weights under the trainee's own parameter names."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    if (folder / "artifact.metadata").is_file():  # colbert-ai layout: '<prefix>.<key>' + linear.weight
        out = {"linear.weight": weights.pop("linear.weight")}
        for k, v in weights.items():
            out["backbone." + k.split(".", 1)[1]] = v
        return out
    return {"backbone." + k: v for k, v in weights.items()}


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step`, written by a run that was interrupted before its next checkpoint."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def train(config: TrainConfig | str | Path, **overrides: Any) -> Path:
    """Run a training config (a TrainConfig or a YAML path) to the end; returns the final model folder."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_yaml(config, **overrides)
    return Trainer(cfg).fit()


__all__ = ["TrainConfig", "Trainer", "TripletStream", "train", "weight_sources"]
