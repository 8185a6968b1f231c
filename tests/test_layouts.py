"""Checkpoint layouts of other libraries, in and out: the same vectors as Sentence Transformers 6 computes.

Folders are written by Sentence Transformers itself (installed beside medcolbert) from the packaged MiniLM and
from tiny random ModernBERT and XLM-RoBERTa backbones with tokenizers trained here (byte-level BPE and a
SentencePiece-style unigram: the tokenizer families those backbones ship). PyLate's and colbert-ai's own
libraries run in their venvs in `make compat` (scripts/compat.py); the last test here runs them when present.
"""

from __future__ import annotations

import json
import string
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from medcolbert import ColBERT
from medcolbert.errors import CheckpointError
from medcolbert.modeling.checkpoint import default_model_path

st = pytest.importorskip("sentence_transformers", reason="sentence-transformers 6 is needed to write its layout")
MultiVectorEncoder = getattr(st, "MultiVectorEncoder", None)
pytestmark = pytest.mark.skipif(MultiVectorEncoder is None, reason="sentence-transformers < 6 has no MultiVectorEncoder")

QUERIES = ["do statins cause muscle pain?", "HbA1c, COVID-19 and 5-FU: what is IL-6?",
           "what is the first-line drug for type 2 diabetes in adults with obesity and kidney disease " * 2]
DOCS = ["Statin therapy is associated with myopathy, muscle pain and, rarely, rhabdomyolysis.",
        "Metformin (a biguanide) lowers hepatic glucose output; it's first-line in type-2 diabetes!", "Short."]
CORPUS = DOCS + QUERIES + ["The patient's HbA1c was 8.1% after 3 months of insulin; IL-6 and CRP were raised."] * 3


def _tokenizer(kind: str):  # type: ignore[no-untyped-def]
    """A tiny trained tokenizer of a backbone family: 'bpe' (ModernBERT's byte-level BPE) or 'unigram' (XLM-R's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        bos, eos, pad, mask, unk = "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=specials, unk_token="<unk>")
        bos, eos, pad, mask, unk = "<s>", "</s>", "<pad>", "<mask>", "<unk>"
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}",
                                                       special_tokens=[(t, tok.token_to_id(t)) for t in (bos, eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token=bos, bos_token=bos, sep_token=eos, eos_token=eos,
                                   pad_token=pad, mask_token=mask, unk_token=unk, model_max_length=128)


def _backbone_folder(tmp: Path, family: str) -> Path:
    """A tiny random backbone of `family` ('modernbert' or 'xlm-roberta') with its tokenizer, saved as HF does."""
    from transformers import ModernBertConfig, ModernBertModel, XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(0)
    tokenizer = _tokenizer("bpe" if family == "modernbert" else "unigram")
    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, pad_token_id=tokenizer.pad_token_id)
    if family == "modernbert":
        model = ModernBertModel(ModernBertConfig(**common, max_position_embeddings=512, global_attn_every_n_layers=1,
                                                 bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                                 cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id))
    else:
        model = XLMRobertaModel(XLMRobertaConfig(**common, max_position_embeddings=514, type_vocab_size=1),
                                add_pooling_layer=False)
    folder = tmp / family
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _st_vectors(folder: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    m = MultiVectorEncoder(str(folder), device="cpu")
    return ([torch.as_tensor(x).float() for x in m.encode_query(QUERIES)],
            [torch.as_tensor(x).float() for x in m.encode_document(DOCS)])


def _assert_same(model: ColBERT, ref: tuple[list[torch.Tensor], list[torch.Tensor]], tol: float = 1e-5) -> None:
    """medcolbert's vectors equal the reference's, row for row (queries: the rows the reference gives)."""
    q, d = model.encode_queries(QUERIES), model.encode_documents(DOCS)
    rq, rd = ref
    for i, r in enumerate(rq):
        assert (q[i].norm(dim=-1) > 0).sum() == len(r), f"query {i}: {len(r)} vectors expected"
        assert float((q[i, : len(r)] - r).abs().max()) <= tol
    for i, r in enumerate(rd):
        assert d[i].shape == r.shape, f"document {i}: {tuple(r.shape)} expected, got {tuple(d[i].shape)}"
        assert float((d[i] - r).abs().max()) <= tol


def _save_st(base: Path, out: Path, configure=None) -> Path:  # type: ignore[no-untyped-def]
    m = MultiVectorEncoder(str(base), device="cpu")
    if configure is not None:
        configure(m)
    m.save(str(out))
    return out


def test_sentence_transformers_folder_of_minilm_loads_with_its_vectors(tmp_path):
    folder = _save_st(default_model_path(), tmp_path / "st-minilm")
    model = ColBERT.from_pretrained(folder, device="cpu")
    assert model.layout == "sentence-transformers" and model.config.query_token_id == ""
    _assert_same(model, _st_vectors(folder))


@pytest.mark.parametrize("family", ["modernbert", "xlm-roberta"])
def test_sentence_transformers_folders_of_other_backbones_load_with_their_vectors(tmp_path, family):
    base = _backbone_folder(tmp_path, family)

    def colbert_style(m):  # type: ignore[no-untyped-def]
        # ColBERT's recipe in Sentence Transformers' terms: [MASK] expansion (min: longer queries run on),
        # punctuation skipped in documents, text prompts.
        m[0].query_length, m[0].document_length = 48, 40
        m[0].query_expansion = {"strategy": "min" if family == "modernbert" else "fixed", "length": 16}
        m.prompts = {"query": "query: ", "document": "passage: "}
        mask = [mod for mod in m if type(mod).__name__ == "MultiVectorMask"][0]
        mask.skiplist_words = list(string.punctuation)
        mask.resolve_with_tokenizer(m.tokenizer)

    folder = _save_st(base, tmp_path / f"st-{family}", colbert_style)
    model = ColBERT.from_pretrained(folder, device="cpu")
    assert model.config.query_prompt == "query: " and model.config.doc_maxlen == 40
    _assert_same(model, _st_vectors(folder))


def test_two_dense_modules_fold_into_one_projection(tmp_path):
    from sentence_transformers.base.modules import Dense

    def two_dense(m):  # type: ignore[no-untyped-def]
        dense = [i for i, mod in enumerate(m) if type(mod).__name__ == "Dense"][0]
        m.insert(dense + 1, Dense(128, 64, bias=True, activation_function=torch.nn.Identity(),
                                  module_input_name="token_embeddings", module_output_name="token_embeddings"))

    folder = _save_st(default_model_path(), tmp_path / "st-two-dense", two_dense)
    assert len([m for m in json.loads((folder / "modules.json").read_text()) if "Dense" in m["type"]]) == 2
    model = ColBERT.from_pretrained(folder, device="cpu")
    assert model.config.dim == 64 and model.linear.bias is not None
    _assert_same(model, _st_vectors(folder))


@pytest.mark.parametrize("fmt", ["sentence-transformers", "pylate", "colbert-ai"])
def test_the_release_saved_in_each_layout_encodes_in_sentence_transformers_as_in_medcolbert(tmp_path, fmt):
    release = ColBERT.from_pretrained("medcolbert-minilm-v5", device="cpu", dtype="float32")
    folder = release.save_pretrained(tmp_path / fmt, format=fmt)
    ours_q, ours_d = release.encode_queries(QUERIES), release.encode_documents(DOCS)
    st_q, st_d = _st_vectors(folder)
    long_query = release.tokenizer.query_length(release.tokenizer.query_token_ids(QUERIES[2:])[0]) > 32
    for i, r in enumerate(st_q):
        if fmt != "sentence-transformers" and i == 2 and long_query:
            # PyLate's and colbert-ai's layouts can only say "pad to 32 and cut there": a longer query differs.
            assert len(r) == release.config.augment_len
            continue
        n = int((ours_q[i].norm(dim=-1) > 0).sum())
        assert len(r) == n and float((ours_q[i, :n] - r).abs().max()) <= 1e-5
    for ours, r in zip(ours_d, st_d):
        assert ours.shape == r.shape and float((ours - r).abs().max()) <= 1e-5
    # medcolbert reads its own save back whole: the pooled head's weight and the query rule survive.
    back = ColBERT.from_pretrained(folder, device="cpu", dtype="float32")
    assert back.config.dense_weight == release.config.dense_weight
    assert (back.config.query_maxlen, back.config.augment_len) == (release.config.query_maxlen, release.config.augment_len)
    assert torch.allclose(back.encode_queries(QUERIES), ours_q, atol=1e-5)


def test_a_plain_encoder_needs_new_projection_and_unknown_modules_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="new_projection"):
        ColBERT.from_pretrained(default_model_path())
    assert ColBERT.from_pretrained(default_model_path(), new_projection=True).config.dim == 128
    folder = _save_st(default_model_path(), tmp_path / "odd")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 9, "name": "9", "path": "9_Odd", "type": "somewhere.OddModule"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="OddModule"):
        ColBERT.from_pretrained(folder)
    config = json.loads((folder / "1_Dense" / "config.json").read_text())
    (folder / "1_Dense" / "config.json").write_text(json.dumps({**config, "activation_function": "torch.nn.modules.activation.Tanh"}))
    modules.pop()
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="Tanh"):
        ColBERT.from_pretrained(folder)


def _peer(name: str) -> Path | None:
    python = Path(__file__).resolve().parents[1] / ".cache" / f"{name}-venv" / "bin" / "python"
    return python if python.is_file() else None


@pytest.mark.parametrize(("library", "backbone"), [("pylate", "minilm"), ("pylate", "modernbert"),
                                                   ("pylate", "xlm-roberta"), ("colbert-ai", "minilm")])
def test_folders_written_by_pylate_and_colbert_ai_load_with_their_vectors(tmp_path, library, backbone):
    """Runs each peer in its own venv (scripts/pylate_venv.sh, scripts/colbert_ai_venv.sh) when it is there."""
    python = _peer(library)
    if python is None:
        pytest.skip(f"no {library} venv in .cache (make compat builds it)")
    side = Path(__file__).resolve().parents[1] / "scripts" / "compat_side.py"
    base = default_model_path() if backbone == "minilm" else _backbone_folder(tmp_path, backbone)
    folder, texts = tmp_path / library, tmp_path / "texts.json"
    texts.write_text(json.dumps({"queries": QUERIES, "docs": DOCS}))
    for args in (["save", library, str(base), str(folder)],
                 ["encode", library, str(folder), str(texts), str(tmp_path / "ref.npz")]):
        res = subprocess.run([str(python), str(side), *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    ref = np.load(tmp_path / "ref.npz")
    model = ColBERT.from_pretrained(folder, device="cpu", dtype="float32")
    assert model.layout == ("pylate" if library == "pylate" else "colbert-ai")
    _assert_same(model, ([torch.from_numpy(ref[f"q{i}"]) for i in range(len(QUERIES))],
                         [torch.from_numpy(ref[f"d{i}"]) for i in range(len(DOCS))]))


def test_a_folder_in_both_layouts_reads_colbert_ai_s_projection(tmp_path, tiny_model):
    """answerai-colbert-small-v1 ships colbert-ai's files and PyLate's in one folder: colbert-ai's are read."""
    folder = tiny_model.save_pretrained(tmp_path / "both")
    pylate = tiny_model.save_pretrained(tmp_path / "pylate", format="pylate")
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"):
        (folder / name).write_bytes((pylate / name).read_bytes())
    (folder / "1_Dense").mkdir()
    for f in (pylate / "1_Dense").iterdir():
        (folder / "1_Dense" / f.name).write_bytes(f.read_bytes())
    model = ColBERT.from_pretrained(folder, device="cpu")
    assert model.layout == "colbert-ai"
    assert torch.equal(model.encode_queries(QUERIES), tiny_model.encode_queries(QUERIES))
    # Without linear.weight among the weights, the folder's Dense module is the projection.
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    del weights["linear.weight"]
    save_file(weights, str(folder / "model.safetensors"))
    assert ColBERT.from_pretrained(folder, device="cpu").layout == "pylate"


@pytest.mark.parametrize("release", ["medcolbert-minilm-v1", "medcolbert-minilm-v2", "medcolbert-minilm-v3",
                                     "medcolbert-minilm-v4", "medcolbert-minilm-v5"])
def test_every_release_tells_other_libraries_the_length_medcolbert_pads_queries_to(release):
    """colbert-ai, PyLate and Sentence Transformers pad every query to artifact.metadata's query_maxlen."""
    from medcolbert.modeling.checkpoint import release_model_path

    folder = release_model_path(release)
    if folder is None:
        pytest.skip(f"{release} is not part of this install")
    meta = json.loads((folder / "artifact.metadata").read_text())
    model = ColBERT.from_pretrained(release, device="cpu")
    assert meta["query_maxlen"] == model.config.augment_len
    assert meta.get("medcolbert_query_maxlen", meta["query_maxlen"]) == model.config.query_maxlen


@pytest.mark.parametrize("fmt", ["pylate", "sentence-transformers"])
def test_a_modules_json_save_honours_dtype_like_colbert_ai_s(tmp_path, tiny_model, fmt):
    full = tiny_model.save_pretrained(tmp_path / "fp32", format=fmt)
    half = tiny_model.save_pretrained(tmp_path / "fp16", dtype=torch.float16, format=fmt)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded = ColBERT.from_pretrained(half, device="cpu", dtype="float32")
    assert torch.allclose(loaded.encode_queries(QUERIES), tiny_model.encode_queries(QUERIES), atol=5e-2)
