"""ONNX export in next-plaid's layout: one `model.onnx` (backbone + projection + L2 norm), the tokenizer and the
PyLate-style `config_sentence_transformers.json` that says how to tokenize queries and documents.

Queries and documents run through the same graph, as in colbert-ai, PyLate and next-plaid: what differs is the
tokenization (marker, [MASK] expansion, lengths) and which rows are kept (the skiplist), which the config describes.
The pooled head of medcolbert v3-v5 is not in the graph (next-plaid scores MaxSim only).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..fsutil import replace_folder
from .encoder import ColBERT
from .tokenization import TokenBatch

# int8 is written only where every token vector keeps this cosine to float32's (issue 39's bar).
INT8_MIN_COSINE = 0.99


class _Graph(nn.Module):
    """(input_ids, attention_mask) -> unit token vectors [B, L, dim], every position (masks applied outside)."""

    def __init__(self, model: ColBERT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model._project(TokenBatch(input_ids, attention_mask))
        return nn.functional.normalize(hidden.float(), p=2, dim=-1)


def _session(path: Path):  # type: ignore[no-untyped-def]
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("checking the ONNX graphs needs onnxruntime (pip install 'medcolbert[onnx]')") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _rows(model: ColBERT, texts: list[str], is_query: bool) -> tuple[TokenBatch, torch.Tensor]:
    """A batch as medcolbert tokenizes it, and the mask of the rows it keeps."""
    tok = model.tokenizer
    if is_query:
        batch = tok.query_batch(tok.query_token_ids(texts))
        return batch, tok.query_keep_mask(batch)
    batch = tok.tokenize_documents(texts)
    return batch, tok.document_keep_mask(batch)


def compare(model: ColBERT, path: Path, queries: list[str], docs: list[str]) -> dict[str, float]:
    """Max abs difference and lowest cosine of the graph's kept rows against torch's, queries and documents."""
    session = _session(path)
    out: dict[str, float] = {}
    for name, texts, is_query in (("queries", queries, True), ("documents", docs, False)):
        diffs, cosines = [], []
        for start in range(0, len(texts), 16):
            batch, keep = _rows(model, texts[start:start + 16], is_query)
            with torch.inference_mode():
                ref = _Graph(model)(batch.input_ids, batch.attention_mask)[keep].numpy()
            got = session.run(None, {"input_ids": batch.input_ids.numpy(),
                                     "attention_mask": batch.attention_mask.numpy()})[0][keep.numpy()]
            diffs.append(float(np.abs(ref - got).max()))
            cosines.append(float((np.sum(ref * got, axis=1) / np.linalg.norm(got, axis=1).clip(1e-12)).min()))
        out[f"{name}_max_abs_diff"], out[f"{name}_min_cosine"] = max(diffs), min(cosines)
    return out


def export_onnx(model: ColBERT, output: str | Path, queries: list[str], docs: list[str], int8: bool = True,
                opset: int = 17) -> dict[str, Any]:
    """Write `output/` (model.onnx, tokenizer, config; model_int8.onnx where it keeps INT8_MIN_COSINE), checked
    with onnxruntime against torch on `queries` and `docs`; returns the figures."""
    from .checkpoint import _marker_tokenizer, _prepare, _version
    from .layouts import write_sentence_transformers

    if not queries or not docs:
        raise CheckpointError("export-onnx needs some queries and documents to check the graphs with")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    model = model.to_device("cpu", "float32")
    try:
        batch, _ = _rows(model, docs[:2], is_query=False)
        with torch.inference_mode():
            torch.onnx.export(_Graph(model).eval(), (batch.input_ids, batch.attention_mask), str(tmp / "model.onnx"),
                              input_names=["input_ids", "attention_mask"], output_names=["embeddings"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"},
                                            "embeddings": {0: "batch", 1: "sequence"}},
                              opset_version=opset, dynamo=False)
        figures: dict[str, Any] = {"float32": compare(model, tmp / "model.onnx", queries, docs)}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model_int8.onnx"), weight_type=QuantType.QInt8)
            figures["int8"] = compare(model, tmp / "model_int8.onnx", queries, docs)
            worst = min(figures["int8"]["queries_min_cosine"], figures["int8"]["documents_min_cosine"])
            figures["int8"]["kept"] = worst >= INT8_MIN_COSINE
            if not figures["int8"]["kept"]:  # below the bar: not shipped, only reported
                (tmp / "model_int8.onnx").unlink()
        _marker_tokenizer(model).save_pretrained(str(tmp))
        dense = {"linear.weight": _prepare(model.linear.weight, None)}
        write_sentence_transformers(tmp, model.config, dense, model.hidden_size, pylate=True,
                                    extra={"name": model.name, "medcolbert_version": _version()})
        # Only the ONNX side is wanted here: the PyLate module files describe weights this folder does not hold.
        for leftover in ("modules.json", "sentence_bert_config.json"):
            (tmp / leftover).unlink()
        shutil.rmtree(tmp / "1_Dense")
        replace_folder(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return figures
