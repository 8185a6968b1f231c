import json

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import BertModel, BertPreTrainedModel

from medcolbert import ColBERT
from medcolbert.errors import CheckpointError
from medcolbert.modeling.checkpoint import BASE_MODEL_ID, default_model_path
from tests.conftest import make_tiny_model


class HF_ColBERT(BertPreTrainedModel):
    """colbert-ai's model class as it loads and saves checkpoints: `bert.*` plus a bias-free `linear`."""

    _keys_to_ignore_on_load_unexpected = [r"cls"]

    def __init__(self, config, colbert_dim: int = 16):
        super().__init__(config)
        self.linear = nn.Linear(config.hidden_size, colbert_dim, bias=False)
        self.bert = BertModel(config)
        self.post_init()


# The fields colbert-ai's ColBERTConfig reads back from artifact.metadata that shape encoding.
COLBERT_AI_ENCODING_FIELDS = {"dim", "doc_maxlen", "query_maxlen", "query_token_id", "doc_token_id",
                              "query_token", "doc_token", "mask_punctuation", "attend_to_mask_tokens",
                              "similarity", "interaction", "checkpoint", "nbits"}


def test_round_trip_gives_identical_vectors(tmp_path, tiny_model):
    path = tiny_model.save_pretrained(tmp_path / "ckpt")
    loaded = ColBERT.from_pretrained(path, device="cpu")
    assert loaded.config == tiny_model.config
    texts = ["statins and muscle pain, in adults", "metformin"]
    assert torch.allclose(loaded.encode_queries(texts), tiny_model.encode_queries(texts), atol=1e-6)
    for a, b in zip(loaded.encode_documents(texts), tiny_model.encode_documents(texts)):
        assert torch.allclose(a, b, atol=1e-6)


def test_saved_layout_is_what_colbert_ai_reads(tmp_path, tiny_model):
    path = tiny_model.save_pretrained(tmp_path / "ckpt")
    assert {"config.json", "model.safetensors", "artifact.metadata", "tokenizer_config.json"} <= {p.name for p in path.iterdir()}
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("linear.weight").shape == (16, 32)
    assert "linear.bias" not in keys
    assert all(k == "linear.weight" or k.startswith("bert.") for k in keys)
    meta = json.loads((path / "artifact.metadata").read_text())
    assert COLBERT_AI_ENCODING_FIELDS <= set(meta)
    assert (meta["dim"], meta["doc_maxlen"], meta["query_maxlen"]) == (16, 64, 12)
    assert meta["checkpoint"] == path.name   # colbert-ai sets the real folder itself; no machine path is stored
    # colbert-ai's own model class loads the weights with nothing missing.
    model, info = HF_ColBERT.from_pretrained(str(path), colbert_dim=16, output_loading_info=True)
    assert not info["missing_keys"]
    assert torch.equal(model.linear.weight, tiny_model.linear.weight)
    emb = tiny_model.backbone.embeddings.word_embeddings.weight
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, emb)


@pytest.mark.parametrize("safe", [True, False])
def test_loads_a_checkpoint_written_by_colbert_ai(tmp_path, safe):
    tiny = make_tiny_model(seed=3)
    folder = tmp_path / "colbert-ai-ckpt"
    reference = HF_ColBERT(tiny.backbone.config, colbert_dim=16)
    reference.save_pretrained(str(folder), safe_serialization=safe)  # False: pytorch_model.bin, read weights-only
    tiny.tokenizer.tokenizer.save_pretrained(str(folder))
    # colbert-ai's export wraps nothing, carries many fields medcolbert ignores, and a `meta` block.
    (folder / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "dim": 16, "doc_maxlen": 40,
        "query_maxlen": 10, "mask_punctuation": True, "attend_to_mask_tokens": False, "similarity": "cosine",
        "nbits": 2, "kmeans_niters": 4, "bsize": 32, "lr": 1e-05, "checkpoint": "somewhere/else",
        "meta": {"version": "colbert-v0.4"}}))
    loaded = ColBERT.from_pretrained(folder, device="cpu")
    assert (loaded.config.dim, loaded.config.doc_maxlen, loaded.config.query_maxlen) == (16, 40, 10)
    assert torch.equal(loaded.linear.weight, reference.linear.weight)
    assert torch.equal(loaded.backbone.encoder.layer[0].attention.self.query.weight,
                       reference.bert.encoder.layer[0].attention.self.query.weight)


def test_plain_hf_encoder_gets_a_reproducible_fresh_projection(tmp_path):
    a = ColBERT.from_pretrained(default_model_path(), device="cpu", doc_maxlen=80, new_projection=True)
    b = ColBERT.from_pretrained(BASE_MODEL_ID, device="cpu", doc_maxlen=80)
    assert a.config.doc_maxlen == 80 and a.config.dim == 128
    assert torch.equal(a.linear.weight, b.linear.weight)
    w = a.linear.weight
    assert torch.allclose(w @ w.T, torch.eye(128), atol=1e-4)  # orthonormal rows


def test_saving_the_packaged_base_writes_no_path_of_this_machine(tmp_path):
    """The base is loaded from site-packages; a checkpoint saved from it must not name that folder."""
    base = ColBERT.from_pretrained(BASE_MODEL_ID, device="cpu")
    out = base.save_pretrained(tmp_path / "saved")
    written = {f.name: f.read_text() for f in out.iterdir() if f.suffix in (".json", ".metadata")}
    site = str(default_model_path().parent)
    assert written and not [name for name, text in written.items() if site in text or str(tmp_path) in text]
    assert ColBERT.from_pretrained(out, device="cpu").config.dim == 128


def test_fp16_release_is_half_the_size_and_loads_as_float32(tmp_path, tiny_model):
    full = tiny_model.save_pretrained(tmp_path / "fp32")
    half = tiny_model.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded = ColBERT.from_pretrained(half, device="cpu")
    assert loaded.linear.weight.dtype == torch.float32
    q = ["statins and muscle pain"]
    assert torch.allclose(loaded.encode_queries(q), tiny_model.encode_queries(q), atol=5e-3)


def test_overwrite_is_atomic_and_leaves_no_temp_folders(tmp_path, tiny_model):
    path = tmp_path / "ckpt"
    tiny_model.save_pretrained(path)
    tiny_model.save_pretrained(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_bad_checkpoints_are_clear_errors(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="no such model folder"):
        ColBERT.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        ColBERT.from_pretrained(tmp_path / "empty")
    path = tiny_model.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((path / "artifact.metadata").read_text())
    (path / "artifact.metadata").write_text(json.dumps({**meta, "dim": 64}))
    with pytest.raises(CheckpointError, match="dim=64"):
        ColBERT.from_pretrained(path)
    (path / "artifact.metadata").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ColBERT.from_pretrained(path)
    (path / "artifact.metadata").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="exceed"):
        ColBERT.from_pretrained(path, doc_maxlen=4096)


def test_hub_ids_resolve_through_the_hub_client(tmp_path, tiny_model, monkeypatch):
    import huggingface_hub

    saved = tiny_model.save_pretrained(tmp_path / "snapshot")
    asked = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        asked.append((repo_id, allow_patterns))
        if repo_id != "colbert-ir/colbertv2.0":
            raise OSError("offline and not in the local cache")
        return str(saved)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = ColBERT.from_pretrained("colbert-ir/colbertv2.0", device="cpu")
    assert model.name == "colbert-ir/colbertv2.0" and torch.equal(model.linear.weight, tiny_model.linear.weight)
    assert "artifact.metadata" in asked[0][1] and "*.safetensors" in asked[0][1]
    with pytest.raises(CheckpointError, match="could not be fetched from the Hugging Face hub"):
        ColBERT.from_pretrained("abhinand/not-a-colbert")


def test_fresh_projection_bits_do_not_depend_on_thread_count():
    from medcolbert.modeling.encoder import fresh_projection

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fresh_projection(384, 128)
        torch.set_num_threads(2)
        two = fresh_projection(384, 128)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.allclose(one @ one.T, torch.eye(128), atol=1e-5)


def test_wise_ft_interpolation_mixes_every_weight(tmp_path):
    from medcolbert import ColBERT
    from medcolbert.modeling.checkpoint import interpolate_colbert
    from tests.conftest import make_tiny_model

    a = make_tiny_model(seed=1).save_pretrained(tmp_path / "a")
    b = make_tiny_model(seed=2).save_pretrained(tmp_path / "b")
    out = interpolate_colbert(a, b, 0.25, tmp_path / "mix")
    ma, mb, mix = (ColBERT.from_pretrained(p, device="cpu") for p in (a, b, out))
    for key, value in mix.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.25 * ma.state_dict()[key] + 0.75 * mb.state_dict()[key], atol=1e-6), key
    assert torch.equal(ColBERT.from_pretrained(interpolate_colbert(a, b, 1.0, tmp_path / "one"), device="cpu").linear.weight,
                       ma.linear.weight)


def test_interpolation_writes_the_mix_in_the_precision_asked(tmp_path):
    from safetensors import safe_open

    from medcolbert import ColBERT
    from medcolbert.cli import main
    from tests.conftest import make_tiny_model

    a = make_tiny_model(seed=1).save_pretrained(tmp_path / "a")
    b = make_tiny_model(seed=2).save_pretrained(tmp_path / "b")
    assert main(["interpolate", "--model", str(a), "--start", str(b), "--alpha", "0.5", "--dtype", "float16",
                 "--output", str(tmp_path / "half")]) == 0
    with safe_open(str(tmp_path / "half" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    ma, mb, half = (ColBERT.from_pretrained(p, device="cpu") for p in (a, b, tmp_path / "half"))
    # The mix is taken in float32 and rounded once, so it equals the float32 mix rounded to float16.
    expected = (0.5 * ma.linear.weight.float() + 0.5 * mb.linear.weight.float()).half().float()
    assert torch.equal(half.linear.weight.float(), expected)
