"""Single-vector (bi-encoder) baselines: one unit vector per text, MedEmbed / bge / sentence-transformers style."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..errors import CheckpointError, IndexFormatError, MedColbertError
from ..evaluation.datasets import Run
from ..fsutil import staged_folder
from ..modeling.checkpoint import _load_backbone, _quiet_transformers, resolve_model_folder
from ..modeling.encoder import resolve_autocast_dtype

CONFIG_FILE = "medcolbert_dense.json"
POOLINGS = ("mean", "cls")
# BGE v1.5's query instruction for short-query-to-passage retrieval (its model card); passages get none.
BGE_INSTRUCTION = "Represent this sentence for searching relevant passages: "
# Public single-vector baselines by short name: (hub id, pooling, query instruction) as their model cards give
# them. MedEmbed v0.1 is fine-tuned from BGE v1.5 (CLS pooling); its card encodes queries without an instruction.
PRESETS: dict[str, tuple[str, str, str]] = {
    "bge-small": ("BAAI/bge-small-en-v1.5", "cls", BGE_INSTRUCTION),
    "bge-base": ("BAAI/bge-base-en-v1.5", "cls", BGE_INSTRUCTION),
    "medembed-small": ("abhinand/MedEmbed-small-v0.1", "cls", ""),
    "medembed-base": ("abhinand/MedEmbed-base-v0.1", "cls", ""),
    "medembed-large": ("abhinand/MedEmbed-large-v0.1", "cls", ""),
}


class BiEncoder(nn.Module):
    """A transformer plus pooling: `encode(texts, is_query=...)` gives one unit vector per text."""

    def __init__(self, backbone: nn.Module, tokenizer, pooling: str = "mean", query_prefix: str = "",  # type: ignore[no-untyped-def]
                 max_length: int = 256, name: str = "bi-encoder", source: str | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone, self.tokenizer = backbone, tokenizer
        self.pooling, self.query_prefix, self.max_length = pooling, query_prefix, max_length
        self.name, self.source = name, source
        self.autocast_dtype: torch.dtype | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, pooling: str | None = None,
                        query_prefix: str | None = None, max_length: int | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = "auto") -> "BiEncoder":
        """A bi-encoder from an HF or sentence-transformers folder, hub id or PRESETS name; None = packaged MiniLM."""
        if isinstance(name_or_path, str) and name_or_path in PRESETS and not Path(name_or_path).exists():
            hub_id, preset_pooling, preset_prefix = PRESETS[name_or_path]
            name_or_path = hub_id
            pooling = pooling or preset_pooling
            query_prefix = preset_prefix if query_prefix is None else query_prefix
        folder, display = resolve_model_folder(name_or_path)
        saved = json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
        with _quiet_transformers():
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(folder))
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{folder}: cannot load the tokenizer ({exc})") from None
        model = cls(_load_backbone(folder), tokenizer,
                    pooling=pooling or saved.get("pooling") or _sentence_transformers_pooling(folder),
                    query_prefix=query_prefix if query_prefix is not None else saved.get("query_prefix", ""),
                    max_length=max_length or saved.get("max_length", 256),
                    name=saved.get("name", display), source=None if name_or_path is None else str(name_or_path))
        return model.to_device(device, dtype)

    def to_device(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = "auto") -> "BiEncoder":
        """Move to `device` (default: CUDA if present) and pick the encoding precision."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.to(device).eval()
        self.autocast_dtype = resolve_autocast_dtype(dtype, device)
        return self

    @property
    def device(self) -> torch.device:
        """The device the weights are on."""
        return next(self.backbone.parameters()).device

    def fingerprint(self) -> str:
        """A hash of weights, vocabulary, pooling, prefix and length, to key cached vectors and indexes."""
        h = hashlib.sha256(json.dumps([self.pooling, self.query_prefix, self.max_length]).encode())
        if self.autocast_dtype is not None:  # vectors encoded in lower precision never stand in for full-precision ones
            h.update(str(self.autocast_dtype).encode())
        h.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
        for key, tensor in sorted(self.backbone.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:24]

    @property
    def dim(self) -> int:
        """Output vector size."""
        return int(self.backbone.config.hidden_size)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write HF weights (safetensors), tokenizer and pooling config; sentence-transformers can load it too."""
        path = Path(path)
        with staged_folder(path) as tmp:
            state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in self.backbone.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            self.backbone.config.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            (tmp / CONFIG_FILE).write_text(json.dumps({"pooling": self.pooling, "query_prefix": self.query_prefix,
                                                       "max_length": self.max_length, "name": self.name}, indent=2))
            # The two files sentence-transformers reads to rebuild the same pooling.
            (tmp / "1_Pooling").mkdir()
            (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
                "word_embedding_dimension": self.dim, "pooling_mode_cls_token": self.pooling == "cls",
                "pooling_mode_mean_tokens": self.pooling == "mean"}, indent=2))
            (tmp / "modules.json").write_text(json.dumps([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2))
        return path

    # ----------------------------------------------------------------- forward and encoding
    def tokenize(self, texts: Sequence[str], is_query: bool) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, the query prefix added to queries."""
        if is_query and self.query_prefix:
            texts = [self.query_prefix + t for t in texts]
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device)}

    def forward_texts(self, texts: Sequence[str], is_query: bool) -> torch.Tensor:
        """Unit vectors [n, dim] with gradients (for training)."""
        return self.forward_batch(self.tokenize(texts, is_query))

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit vectors [n, dim] of an already tokenized batch."""
        out = self.backbone(**batch)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return nn.functional.normalize(pooled.float(), p=2, dim=-1)

    def encode(self, texts: Sequence[str], is_query: bool, batch_size: int = 64,
               show_progress: bool | None = None) -> torch.Tensor:
        """Unit vectors [n, dim], float32 on the CPU."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        texts = list(texts)
        # Length-sorted batches keep padding small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        show = len(texts) > batch_size if show_progress is None else show_progress
        was_training = self.training
        self.eval()
        amp = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else torch.autocast(self.device.type, enabled=False))
        try:
            with torch.inference_mode(), amp, tqdm(total=len(texts), disable=not show, unit="text",
                                                   desc="Encoding queries" if is_query else "Encoding documents") as bar:
                for start in range(0, len(texts), batch_size):
                    idx = order[start:start + batch_size]
                    out[idx] = self.forward_texts([texts[i] for i in idx], is_query).float().cpu()
                    bar.update(len(idx))
        finally:
            self.train(was_training)
        return out


def _sentence_transformers_pooling(folder: Path) -> str:
    """The pooling a sentence-transformers folder declares (mean when it declares none)."""
    cfg = folder / "1_Pooling" / "config.json"
    if cfg.is_file():
        if json.loads(cfg.read_text()).get("pooling_mode_cls_token"):
            return "cls"
    return "mean"




DENSE_FORMAT = "medcolbert-dense-index"
DENSE_VERSION = 1


class DenseIndex:
    """A corpus as unit vectors in a faiss inner-product index: flat (exact) or HNSW (large corpora).

    Saved as a folder like the multi-vector index: `vectors.npy` (float32), `doc_ids.npy`, for HNSW the
    graph as `hnsw.faiss`, and a `manifest.json` with the model's fingerprint and every file's checksum.
    """

    def __init__(self, model: BiEncoder, kind: str = "flat", hnsw_m: int = 32) -> None:
        if kind not in ("flat", "hnsw"):
            raise ValueError(f"kind must be 'flat' or 'hnsw', got {kind!r}")
        self.model, self.kind, self.hnsw_m = model, kind, hnsw_m
        self.doc_ids: list[str] = []
        self.vectors = np.zeros((0, model.dim), dtype=np.float32)
        self._faiss = None

    def _make_faiss(self):  # noqa: ANN202 - a faiss index
        import faiss

        dim = self.vectors.shape[1]
        index = faiss.IndexFlatIP(dim) if self.kind == "flat" else faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        # faiss-gpu, where installed and a GPU is visible, serves flat search from GPU memory.
        if self.kind == "flat" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        return index

    def index(self, corpus: Mapping[str, str], batch_size: int = 64, show_progress: bool | None = None,
              known: Mapping[str, np.ndarray] | None = None) -> "DenseIndex":
        """Encode {doc id: text} and index it; `known` maps texts to vectors this model already made (not re-encoded)."""
        if not corpus:
            raise ValueError("cannot index an empty corpus")
        texts = list(corpus.values())
        known = known or {}
        todo = [i for i, t in enumerate(texts) if t not in known]
        self.vectors = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        if todo:
            fresh = self.model.encode([texts[i] for i in todo], is_query=False, batch_size=batch_size,
                                      show_progress=show_progress).numpy()
            self.vectors[todo] = fresh
        for i, t in enumerate(texts):
            if t in known:
                self.vectors[i] = known[t]
        self.doc_ids = list(corpus)
        self._faiss = self._make_faiss()
        self._faiss.add(self.vectors)
        return self

    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically."""
        import faiss

        from ..indexing.storage import encode_ids, save_array

        path = Path(path)
        with staged_folder(path) as tmp:
            files = {"vectors.npy": save_array(tmp / "vectors.npy", self.vectors),
                     "doc_ids.npy": save_array(tmp / "doc_ids.npy", encode_ids(self.doc_ids))}
            if self.kind == "hnsw":
                from ..indexing.storage import sha256_file

                faiss.write_index(self._faiss, str(tmp / "hnsw.faiss"))
                files["hnsw.faiss"] = {"bytes": (tmp / "hnsw.faiss").stat().st_size, "sha256": sha256_file(tmp / "hnsw.faiss")}
            manifest = {"format": DENSE_FORMAT, "format_version": DENSE_VERSION, "kind": self.kind, "hnsw_m": self.hnsw_m,
                        "model": {"name": self.model.name, "source": self.model.source,
                                  "fingerprint": self.model.fingerprint()},
                        "dim": int(self.vectors.shape[1]), "num_documents": len(self.doc_ids), "files": files}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, model: BiEncoder) -> "DenseIndex":
        """Open a saved index for `model` (a model with other weights is refused)."""
        import faiss

        from ..indexing.storage import decode_ids, load_array, read_manifest

        path = Path(path)
        m = read_manifest(path, DENSE_FORMAT, DENSE_VERSION)
        if m["model"]["fingerprint"] != model.fingerprint():
            raise MedColbertError(f"{path} was built with another model ({m['model']['name']}); rebuild it or load "
                                  "that model")
        out = cls(model, kind=m["kind"], hnsw_m=m.get("hnsw_m", 32))
        out.vectors = np.ascontiguousarray(load_array(path, "vectors.npy", m["files"]), dtype=np.float32)
        out.doc_ids = decode_ids(load_array(path, "doc_ids.npy", m["files"]))
        if out.vectors.shape != (m["num_documents"], m["dim"]) or len(out.doc_ids) != m["num_documents"]:
            raise IndexFormatError(f"{path}: arrays disagree with the manifest (damaged index)")
        if out.kind == "hnsw":
            if not (path / "hnsw.faiss").is_file():
                raise IndexFormatError(f"{path}: the index is missing hnsw.faiss")
            out._faiss = faiss.read_index(str(path / "hnsw.faiss"))
        else:
            out._faiss = out._make_faiss()
            out._faiss.add(out.vectors)
        return out

    def search(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """Top-k documents of each query, as {query id: {doc id: score}}."""
        if self._faiss is None:
            raise RuntimeError("DenseIndex.search called before index() or load()")
        qids = list(queries)
        if not qids:
            return {}
        q = self.model.encode([queries[i] for i in qids], is_query=True, show_progress=False).numpy()
        scores, idx = self._faiss.search(np.ascontiguousarray(q, dtype=np.float32), min(k, len(self.doc_ids)))
        return {qid: {self.doc_ids[j]: float(s) for s, j in zip(scores[r], idx[r]) if j >= 0}
                for r, qid in enumerate(qids)}
