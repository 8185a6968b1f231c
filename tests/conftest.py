"""Shared fixtures: a tiny ColBERT built from a config, a tiny BEIR folder, the real data folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from medcolbert import ColBERT, ModelConfig
from medcolbert.modeling.checkpoint import default_model_path

# Searches measure the query precision once per model and CPU; tests pin it (tests/test_precision.py measures).
os.environ.setdefault("MEDCOLBERT_QUERY_PRECISION", "float32")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_tiny_model(dim: int = 16, doc_maxlen: int = 64, query_maxlen: int = 12, seed: int = 0,
                    dropout: float = 0.1) -> ColBERT:
    """A 2-layer, 32-wide BERT with the packaged MiniLM vocabulary and a random projection."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    backbone = BertModel(config).eval()
    model = ColBERT(backbone, tokenizer, ModelConfig(dim=dim, doc_maxlen=doc_maxlen, query_maxlen=query_maxlen),
                    projection=torch.randn(dim, 32), name="tiny")
    return model.to_device("cpu")


@pytest.fixture(scope="session")
def tiny_model() -> ColBERT:
    return make_tiny_model()


DOCS = {
    "d1": ("Statins and muscle pain", "Statin therapy is associated with myopathy and muscle pain in some patients."),
    "d2": ("Influenza vaccination", "Annual influenza vaccination reduces hospital admissions in the elderly."),
    "d3": ("", "Metformin is a first-line treatment for type 2 diabetes mellitus."),
    "d4": ("Aspirin", "Low-dose aspirin lowers the risk of a second myocardial infarction."),
    "d5": ("Sleep", "Short sleep duration is linked to obesity in children."),
    "d6": ("Asthma", "Inhaled corticosteroids control persistent asthma symptoms."),
}
QUERIES = {"q1": "do statins cause muscle pain", "q2": "metformin for diabetes", "q3": "aspirin after heart attack",
           "q4": "flu vaccine in older people"}
QRELS = {"q1": {"d1": 1}, "q2": {"d3": 1}, "q3": {"d4": 1}, "q4": {"d2": 1}}


def write_beir(folder: Path, docs=DOCS, queries=QUERIES, qrels=QRELS, split: str = "test") -> Path:
    """Write a BEIR folder with the given content."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for d, (title, text) in docs.items():
            f.write(json.dumps({"_id": d, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for q, text in queries.items():
            f.write(json.dumps({"_id": q, "text": text}) + "\n")
    with (folder / "qrels" / f"{split}.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, rels in qrels.items():
            for d, r in rels.items():
                f.write(f"{q}\t{d}\t{r}\n")
    return folder


@pytest.fixture()
def tiny_beir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tiny")


def random_change(data, index, model, live: dict, step: int, new_docs) -> None:  # type: ignore[no-untyped-def]
    """One random add, delete or compaction of `index`, mirrored in `live` ({id: value}) for a property test;
    new_docs(step) gives the documents to add as {id: (text, metadata or None, value for live)}."""
    from hypothesis import strategies as st

    from medcolbert.indexing.encoded import EncodedDocuments

    action = data.draw(st.sampled_from(["add", "delete", "compact"]))
    if action == "add":
        new = new_docs(step)
        index.add(EncodedDocuments.encode(model, {d: t for d, (t, _, _) in new.items()},
                                          {d: m for d, (_, m, _) in new.items() if m is not None}, index=index))
        live.update({d: v for d, (_, _, v) in new.items()})
    elif action == "delete" and len(live) > 2:
        gone = data.draw(st.lists(st.sampled_from(sorted(live)), min_size=1, max_size=3, unique=True))
        index.delete(gone)
        for d in gone:
            live.pop(d)
    else:
        index.compact()
