import pytest
import torch

from medcolbert import ModelConfig
from tests.conftest import make_tiny_model


def test_query_tokens_marker_and_mask_augmentation(tiny_model):
    tok = tiny_model.tokenizer
    batch = tok.tokenize_queries(["statins and muscle pain", "a"])
    ids, mask = batch.input_ids, batch.attention_mask
    assert ids.shape == (2, tiny_model.config.query_maxlen)
    assert (ids[:, 0] == tok.tokenizer.cls_token_id).all()
    assert (ids[:, 1] == tok.tokenizer.convert_tokens_to_ids("[unused0]")).all()
    # Padding is replaced by [MASK]; the [MASK] positions are not attended to (attend_to_mask_tokens=False).
    assert not (ids == tok.tokenizer.pad_token_id).any()
    real = int(mask[1].sum())
    assert (ids[1, real:] == tok.tokenizer.mask_token_id).all()
    assert (mask[1, real:] == 0).all()


def test_long_query_is_truncated_at_query_maxlen(tiny_model):
    batch = tiny_model.tokenizer.tokenize_queries(["word " * 100])
    assert batch.input_ids.shape[1] == tiny_model.config.query_maxlen
    assert int(batch.attention_mask.sum()) == tiny_model.config.query_maxlen
    assert batch.input_ids[0, -1].item() == tiny_model.tokenizer.tokenizer.sep_token_id


def test_document_marker_truncation_and_punctuation_skiplist(tiny_model):
    tok = tiny_model.tokenizer
    batch = tok.tokenize_documents(["Aspirin, ibuprofen; and (naproxen).", "word " * 500])
    assert (batch.input_ids[:, 1] == tok.tokenizer.convert_tokens_to_ids("[unused1]")).all()
    assert batch.input_ids.shape[1] == tiny_model.config.doc_maxlen
    keep = tok.document_keep_mask(batch)
    comma = tok.tokenizer.convert_tokens_to_ids(",")
    assert (batch.input_ids[0] == comma).any()
    assert not keep[0][batch.input_ids[0] == comma].any()
    assert not keep[0][batch.attention_mask[0] == 0].any()


def test_vectors_are_unit_length_and_one_per_kept_token(tiny_model):
    q = tiny_model.encode(["statins and muscle pain"], is_query=True)
    assert q.shape == (1, tiny_model.config.query_maxlen, tiny_model.config.dim)
    assert torch.allclose(q.norm(dim=-1), torch.ones(1, tiny_model.config.query_maxlen), atol=1e-5)
    docs = tiny_model.encode(["Aspirin, ibuprofen; and naproxen.", "Statins."], is_query=False)
    batch = tiny_model.tokenizer.tokenize_documents(["Aspirin, ibuprofen; and naproxen."])
    assert docs[0].shape == (int(tiny_model.tokenizer.document_keep_mask(batch).sum()), tiny_model.config.dim)
    for d in docs:
        assert torch.allclose(d.norm(dim=-1), torch.ones(d.shape[0]), atol=1e-5)
    single = tiny_model.encode("Statins.", is_query=False)
    assert torch.allclose(single, docs[1], atol=1e-5)


def test_length_sorted_batches_give_the_same_vectors_as_one_at_a_time(tiny_model):
    texts = ["short", "a much longer document about statins, myopathy and muscle pain in adults", "mid length text"]
    batched = tiny_model.encode_documents(texts, batch_size=2)
    for text, vec in zip(texts, batched):
        alone = tiny_model.encode_documents([text])[0]
        assert torch.allclose(alone, vec, atol=1e-5)


def test_bf16_encoding_stays_close_to_fp32():
    model = make_tiny_model()
    full = model.encode_documents(["statins and muscle pain in elderly patients"])[0]
    model.to_device("cpu", dtype="bfloat16")
    half = model.encode_documents(["statins and muscle pain in elderly patients"])[0]
    assert half.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(full, half).min() > 0.98


def test_bad_inputs_are_clear_errors(tiny_model):
    with pytest.raises(TypeError, match="sequence of strings"):
        tiny_model.encode_documents("one string")
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        tiny_model.encode_documents(["ok", 3])
    with pytest.raises(ValueError, match="dtype"):
        tiny_model.to_device("cpu", dtype="int8")
    with pytest.raises(ValueError, match="positive integer"):
        ModelConfig(dim=0)
    with pytest.raises(ValueError, match="similarity"):
        ModelConfig(similarity="l2")
