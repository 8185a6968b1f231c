"""The distilled query encoder: a student of fewer layers for queries, the full model for documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from medcolbert import ColBERT, ModelConfig
from medcolbert.errors import CheckpointError
from medcolbert.modeling.checkpoint import default_model_path
from medcolbert.modeling.query_encoder import load_query_encoder, make_student, save_query_encoder
from medcolbert.training.distill_query import DistillConfig, distill_query, question_texts

from tests.conftest import SHARED_DATA

TEXTS = [f"{w} {v} in {p}" for w in ("does metformin", "can aspirin", "do statins", "will insulin", "is ibuprofen")
         for v in ("cause pain", "help sleep", "lower risk", "harm kidneys", "change weight", "reduce fever")
         for p in ("children", "adults", "pregnancy", "older people")]


def _four_layer_model(folder: Path) -> Path:
    """A 4-layer, 32-wide BERT ColBERT saved in colbert-ai's layout: no dropout, so a student can match it, and
    large random weights, so that leaving out layers changes its vectors (at BERT's usual 0.02 they hardly do)."""
    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.6)
    model = ColBERT(BertModel(config).eval(), tokenizer, ModelConfig(dim=16, doc_maxlen=64, query_maxlen=24),
                    projection=torch.randn(16, 32), name="tiny4")
    return model.save_pretrained(folder / "tiny4")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_distilled_student_comes_closer_to_the_teacher_resumes_and_loads(tmp_path: Path) -> None:
    folder = _four_layer_model(tmp_path)
    run = tmp_path / "run"
    config = DistillConfig(model=str(folder), out=str(run), num_layers=2, layers=[0, 3], steps=30, batch_size=8,
                           lr=2e-3, warmup=5, validation=24, save_every=10)
    distill_query(config, TEXTS)
    first = _records(run)
    before = next(r["validation"] for r in first if r.get("step") == 0)
    after = first[-1]["validation"]
    assert after["token_cosine"] > before["token_cosine"] + 0.02
    assert after["pooled_cosine"] >= before["pooled_cosine"] - 0.01
    # Started again with more steps, it resumes from step 30 (no new step-0 record) and ends at 40.
    distill_query(DistillConfig(model=str(folder), out=str(run), num_layers=2, layers=[0, 3], steps=40, batch_size=8,
                                lr=2e-3, warmup=5, validation=24, save_every=10), TEXTS)
    records = _records(run)[len(first):]
    assert not any(r.get("step") == 0 for r in records)
    assert records[-1]["step"] == 40 and min(r["step"] for r in records if "token_loss" in r) > 30
    stored = json.loads((run / "query_encoder" / "query_encoder.json").read_text())
    assert stored["num_hidden_layers"] == 2 and stored["initialized_from_layers"] == [0, 3]
    assert str(tmp_path) not in (run / "query_encoder" / "query_encoder.json").read_text()

    full = ColBERT.from_pretrained(folder, device="cpu")
    fast = ColBERT.from_pretrained(folder, device="cpu", query_encoder=run / "query_encoder")
    assert len(fast.query_backbone.encoder.layer) == 2
    # Documents, and so indexes and caches, are the full model's: same vectors, same fingerprint.
    docs = ["Metformin lowers blood glucose.", "Aspirin thins the blood and lowers the risk of stroke."]
    for a, b in zip(full.encode_documents(docs), fast.encode_documents(docs)):
        assert torch.equal(a, b)
    assert full.fingerprint() == fast.fingerprint()
    # Queries come from the student: close to the teacher's, not equal, and the same traced or eager.
    q_full, q_fast = full.encode_queries(TEXTS[:6]), fast.encode_queries(TEXTS[:6])
    cos = (q_full * q_fast).sum(-1)[q_full.norm(dim=-1) > 0]
    assert not torch.allclose(q_full, q_fast) and float(cos.mean()) > 0.5
    fast.trace_queries = True
    assert torch.allclose(fast.encode_queries(TEXTS[:6]), q_fast, atol=1e-5)


def test_the_student_is_saved_beside_the_model_and_chosen_by_name(tmp_path: Path) -> None:
    folder = _four_layer_model(tmp_path)
    model = ColBERT.from_pretrained(folder, device="cpu")
    with pytest.raises(CheckpointError, match="has no query_encoder/ folder"):
        ColBERT.from_pretrained(folder, device="cpu", query_encoder="distilled")
    with pytest.raises(CheckpointError, match="use one of full, distilled"):
        ColBERT.from_pretrained(folder, device="cpu", query_encoder="fastest")
    model.query_backbone = make_student(model, [1, 2])
    save_query_encoder(model, folder, info={"note": "test"})
    loaded = ColBERT.from_pretrained(folder, device="cpu", query_encoder="distilled")
    for a, b in zip(model.query_backbone.encoder.layer.parameters(), loaded.query_backbone.encoder.layer.parameters()):
        assert torch.allclose(a.float(), b.float(), atol=1e-3)   # stored as float16
    assert loaded.query_encoder_info["note"] == "test"
    assert ColBERT.from_pretrained(folder, device="cpu", query_encoder="full").query_backbone is None
    # A student of another model's shape is refused by name, not loaded half-way.
    other = ColBERT.from_pretrained(folder, device="cpu")
    with pytest.raises(ValueError, match="increasing indexes"):
        make_student(other, [2, 1])
    (folder / "query_encoder" / "query_encoder.json").write_text(json.dumps({"num_hidden_layers": 9}))
    with pytest.raises(CheckpointError, match="num_hidden_layers 9 is outside 1..4"):
        load_query_encoder(other, folder)


def test_search_names_a_missing_query_encoder_in_one_line(tiny_beir: Path, tmp_path: Path) -> None:
    folder = _four_layer_model(tmp_path)
    index = tmp_path / "index"
    cli = [sys.executable, "-m", "medcolbert"]
    built = subprocess.run([*cli, "index", "--model", str(folder), "--data", str(tiny_beir), "--index", str(index),
                            "--nbits", "2"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    got = subprocess.run([*cli, "search", "--index", str(index), "--query", "statins", "--query-encoder", "distilled"],
                         capture_output=True, text=True)
    assert got.returncode != 0 and "Traceback" not in got.stderr
    assert "has no query_encoder/ folder" in got.stderr and len(got.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not (SHARED_DATA / "medquad").is_dir(), reason="needs ../shared/data")
def test_the_training_texts_hold_no_evaluation_question() -> None:
    texts, counts = question_texts(SHARED_DATA)
    assert counts["unique"] == len(texts) > 10_000
    held = set()
    for name in ("dev-retrieval/queries.jsonl",):
        for line in (SHARED_DATA / "consumer-health" / name).read_text().splitlines():
            held.add(json.loads(line)["text"].strip())
    for line in (SHARED_DATA / "mediqa-qa" / "queries.jsonl").read_text().splitlines():
        held.add(json.loads(line)["text"].strip())
    for line in (SHARED_DATA / "medquad" / "dev-retrieval" / "queries.jsonl").read_text().splitlines():
        held.add(json.loads(line)["text"].strip())
    assert not held & set(texts)


def test_a_run_continues_another_students_weights_with_layer_matching(tmp_path: Path) -> None:
    folder = _four_layer_model(tmp_path)
    first = tmp_path / "first"
    distill_query(DistillConfig(model=str(folder), out=str(first), num_layers=2, layers=[0, 3], steps=20, batch_size=8,
                                lr=2e-3, warmup=5, validation=24, save_every=10), TEXTS)
    second = tmp_path / "second"
    distill_query(DistillConfig(model=str(folder), out=str(second), num_layers=2, steps=20, batch_size=8, lr=1e-3,
                                warmup=5, validation=24, save_every=10, layer_weight=1.0, pooled_weight=2.0,
                                init=str(first / "query_encoder")), TEXTS)
    start = _records(second)[0]
    # It starts where the first run ended (its validation before training is the first run's after, up to the
    # float16 the student is stored in), not afresh.
    ended = _records(first)[-1]["validation"]
    assert start["validation"] == pytest.approx(ended, abs=2e-3)
    info = json.loads((second / "query_encoder" / "query_encoder.json").read_text())
    assert info["initialized_from_layers"] == [0, 3] and info["continued_from"] == 20 and info["layer_weight"] == 1.0
