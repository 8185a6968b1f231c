"""Long queries: [MASK] augmentation up to a length, longer queries unpadded, truncation reported, vectors consistent."""

import json
import warnings

import pytest
import torch

from medcolbert import ColBERT, ModelConfig
from medcolbert.scoring import maxsim_one
from tests.conftest import make_tiny_model

SHORT = "statins and muscle pain"
LONG = "I have been taking a statin for my cholesterol for two years and now my legs ache at night " * 2


@pytest.fixture()
def model() -> ColBERT:
    m = make_tiny_model(query_maxlen=64, seed=2, dropout=0.0)
    return m.reconfigure(query_augment_len=12)


def test_short_queries_are_padded_with_mask_and_long_ones_are_not(model):
    tok = model.tokenizer
    batch = tok.tokenize_queries([SHORT, LONG])
    ids = batch.input_ids
    long_len = len(tok.tokenizer(". " + LONG)["input_ids"])
    assert 12 < long_len <= 64 and ids.shape[1] == long_len
    short_len = len(tok.tokenizer(". " + SHORT)["input_ids"])
    # The short query: its tokens, [MASK] up to the augmentation length, then [PAD] to the batch width.
    assert (ids[0, short_len:12] == tok.mask_token_id).all()
    assert (ids[0, 12:] == tok.pad_token_id).all()
    assert not (ids[1] == tok.mask_token_id).any()          # a long query gets no [MASK]
    keep = tok.query_keep_mask(batch)
    assert keep[0].sum() == 12 and keep[1].sum() == long_len


def test_query_vectors_do_not_depend_on_the_batch(model):
    alone_short = model.encode_queries([SHORT])[0]
    alone_long = model.encode_queries([LONG])[0]
    both = model.encode_queries([SHORT, LONG])
    assert alone_short.shape[0] == 12 and both.shape[1] == alone_long.shape[0]
    assert torch.allclose(both[0, :12], alone_short, atol=1e-5)
    assert (both[0, 12:] == 0).all()                          # rows past a query's own vectors are zero
    assert torch.allclose(both[1], alone_long, atol=1e-5)
    docs = model.encode_documents(["Statin therapy causes myopathy.", "Influenza vaccines work."])
    assert torch.allclose(maxsim_one(both[0], docs), maxsim_one(alone_short, docs), atol=1e-5)


def test_traced_query_graph_gives_the_eager_vectors(model):
    eager = model.encode_queries([SHORT, LONG])
    model.trace_queries = True
    traced_long = model.encode_queries([LONG])        # padded to a multiple of 16 for the graph, then cut back
    traced_short = model.encode_queries([SHORT])
    assert torch.allclose(traced_long[0], eager[1], atol=1e-4)
    assert torch.allclose(traced_short[0], eager[0, :12], atol=1e-4)


def test_truncation_warns_once(model):
    with pytest.warns(UserWarning, match="longer than query_maxlen=64"):
        q = model.encode_queries(["word " * 200])
    assert q.shape[1] == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode_queries(["word " * 200])


def test_augmentation_rule_round_trips_and_colbert_ai_checkpoints_keep_theirs(model, tmp_path):
    path = model.save_pretrained(tmp_path / "m")
    meta = json.loads((path / "artifact.metadata").read_text())
    # colbert-ai, PyLate and Sentence Transformers pad every query to query_maxlen: they are told the padded
    # length, and medcolbert keeps its own limit in a key of its own.
    assert meta["query_maxlen"] == 12 and meta["medcolbert_query_maxlen"] == 64 and meta["query_augment_len"] == 12
    back = ColBERT.from_pretrained(path, device="cpu").config
    assert (back.augment_len, back.query_maxlen) == (12, 64)
    # A checkpoint colbert-ai wrote has neither key: every query is padded to its query_maxlen.
    del meta["query_augment_len"], meta["medcolbert_query_maxlen"]
    meta["query_maxlen"] = 64
    (path / "artifact.metadata").write_text(json.dumps(meta))
    loaded = ColBERT.from_pretrained(path, device="cpu")
    assert loaded.config.query_augment_len is None and loaded.config.augment_len == 64
    assert loaded.encode_queries([SHORT]).shape[1] == 64


def test_bad_augmentation_length_is_refused():
    with pytest.raises(ValueError, match="query_augment_len"):
        ModelConfig(query_augment_len=1)
