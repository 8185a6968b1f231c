"""The mission's recipe end to end offline: colbertv2.0 + MedEmbed's triplets under their hub names, a few steps.

Stand-ins of the same layouts are put into a Hugging Face cache made in the test (the hub client then resolves the
names from it, as it does for a user who fetched them once): a colbert-ai checkpoint with colbertv2.0's
configuration (BERT vocabulary, 768 hidden, 128-dimensional projection; 2 layers to keep the suite fast) and
random weights, a parquet data set in the triplets' columns, and MedEmbed-small as a single-vector Sentence
Transformers folder with CLS pooling.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertModel

from medcolbert import ColBERT, ModelConfig
from medcolbert.baselines.dense import PRESETS, BiEncoder
from medcolbert.cli import main
from medcolbert.config import COLBERT_AI_DEFAULTS
from medcolbert.modeling.checkpoint import default_model_path
from medcolbert.training.trainer import TrainConfig, train
from tests.conftest import SHARED_DATA, write_beir

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A local Hugging Face cache the hub client reads offline; put(repo_id, folder, repo_type) fills it."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def put(repo_id: str, folder: Path, repo_type: str = "model") -> None:
        storage = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, storage / "snapshots" / COMMIT)
        (storage / "refs").mkdir(parents=True)
        (storage / "refs" / "main").write_text(COMMIT)

    return put


def _colbertv2_standin(folder: Path) -> Path:
    """colbertv2.0's layout and configuration with random weights (2 layers instead of 12)."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))   # bert-base-uncased's vocabulary
    backbone = BertModel(BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                                    intermediate_size=3072, max_position_embeddings=512), add_pooling_layer=False)
    config = ModelConfig(dim=128, query_maxlen=32, doc_maxlen=180, query_augment_len=None)
    ColBERT(backbone, tokenizer, config, projection=torch.randn(128, 768) / 768 ** 0.5).save_pretrained(folder)
    # colbertv2.0's artifact.metadata is colbert-ai's own: none of medcolbert's keys.
    (folder / "artifact.metadata").write_text(json.dumps({**COLBERT_AI_DEFAULTS, "dim": 128, "query_maxlen": 32,
                                                          "doc_maxlen": 180, "checkpoint": "colbertv2.0"}))
    return folder


def _triplets_standin(folder: Path) -> Path:
    """A parquet data set in MedEmbed's triplet columns (query, pos, neg), where its train split lies."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("what lowers LDL cholesterol besides statins", "Ezetimibe reduces intestinal cholesterol absorption.",
             "Influenza vaccination is recommended every autumn."),
            ("first-line treatment of type 2 diabetes", "Metformin is first-line therapy for type 2 diabetes.",
             "Statins can cause muscle pain."),
            ("side effects of inhaled corticosteroids", "Oral thrush and hoarseness follow inhaled steroid use.",
             "Aspirin lowers the risk of a second heart attack."),
            ("how is iron deficiency anaemia treated", "Oral ferrous sulfate restores iron stores over months.",
             "Short sleep is linked to obesity in children."),
            ("signs of hypothyroidism in adults", "Fatigue, weight gain and cold intolerance suggest hypothyroidism.",
             "Metformin lowers hepatic glucose output.")] * 4
    (folder / "data").mkdir(parents=True)
    table = pa.table({"query": [r[0] for r in rows], "pos": [r[1] for r in rows], "neg": [r[2] for r in rows]})
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    return folder


@pytest.mark.skipif(not (SHARED_DATA / "medquad").is_dir(), reason="needs ../shared/data for the held-out checks")
def test_colbertv2_medembed_recipe_runs_end_to_end_offline(tmp_path, hub):
    hub("colbert-ir/colbertv2.0", _colbertv2_standin(tmp_path / "colbertv2.0"))
    hub("abhinand/MedEmbed-training-triplets-v1", _triplets_standin(tmp_path / "triplets"), repo_type="dataset")
    mix = tmp_path / "mix.jsonl"
    assert main(["make-mix", "--data-root", str(SHARED_DATA), "--output", str(mix), "--no-shared",
                 "--triplets-dataset", "abhinand/MedEmbed-training-triplets-v1"]) == 0
    rows = [json.loads(line) for line in mix.read_text().splitlines()]
    assert len(rows) == 20 and rows[0]["source"] == "medembed-triplets" and rows[0]["neg"]
    start = ColBERT.from_pretrained("colbert-ir/colbertv2.0", device="cpu")
    assert start.layout == "colbert-ai" and start.config.augment_len == 32 and start.hidden_size == 768
    recipe = yaml.safe_load((ROOT / "experiments" / "releases" / "recipes" / "colbertv2-medembed.yaml").read_text())["train"]
    assert recipe["model"] == "colbert-ir/colbertv2.0" and recipe["bf16"] and recipe["grad_accum"] > 1
    # The recipe as shipped, made small: a few steps of 4 queries in 2 accumulated micro-batches, on the CPU.
    config = TrainConfig.from_yaml(ROOT / "experiments" / "releases" / "recipes" / "colbertv2-medembed.yaml",
                                   output_dir=str(tmp_path / "run"), train_files=[str(mix)], max_steps=3, batch_size=4,
                                   grad_accum=2, doc_maxlen=48, eval_data=None, save_every=2, device="cpu")
    final = train(config)
    tuned = ColBERT.from_pretrained(final, device="cpu")
    assert tuned.config.augment_len == 32 and tuned.config.dim == 128
    assert not torch.equal(tuned.linear.weight, start.linear.weight)   # it trained
    meta = json.loads((Path(final) / "artifact.metadata").read_text())
    assert meta["query_maxlen"] == 32 and meta["dim"] == 128          # what colbert-ai will read
    colbert_ai = ROOT / ".cache" / "colbert-ai-venv" / "bin" / "python"
    if colbert_ai.is_file():  # colbert-ai itself loads the result and encodes as medcolbert does (make compat builds it)
        import subprocess

        import numpy as np

        texts = {"queries": ["iron deficiency treatment"], "docs": ["Oral ferrous sulfate restores iron stores."]}
        (tmp_path / "texts.json").write_text(json.dumps(texts))
        res = subprocess.run([str(colbert_ai), str(ROOT / "scripts" / "compat_side.py"), "encode", "colbert-ai", str(final),
                              str(tmp_path / "texts.json"), str(tmp_path / "ref.npz")], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        ref = np.load(tmp_path / "ref.npz")
        assert np.abs(tuned.encode_queries(texts["queries"])[0].numpy() - ref["q0"]).max() <= 1e-5
        assert np.abs(tuned.encode_documents(texts["docs"])[0].numpy() - ref["d0"]).max() <= 1e-5


def test_single_vector_presets_resolve_with_their_cards_pooling_and_instruction(tmp_path, hub):
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128), add_pooling_layer=False)
    # MedEmbed ships a Sentence Transformers folder (Pooling with CLS): the stand-in is one, pooled by mean here
    # so that the preset's CLS is what decides.
    BiEncoder(bert, tokenizer, pooling="mean").save_pretrained(tmp_path / "medembed")
    hub(PRESETS["medembed-small"][0], tmp_path / "medembed")
    hub(PRESETS["bge-small"][0], tmp_path / "medembed")
    medembed, bge = BiEncoder.from_pretrained("medembed-small"), BiEncoder.from_pretrained("bge-small")
    assert (medembed.pooling, medembed.query_prefix) == ("cls", "")
    assert bge.pooling == "cls" and bge.query_prefix.startswith("Represent this sentence")
    data = write_beir(tmp_path / "data")
    spec = {"name": "presets", "datasets": [{"name": "tiny", "path": str(data), "split": "test"}],
            "systems": [{"name": "bm25", "type": "bm25"}, {"name": "MedEmbed-small", "type": "dense", "model": "medembed-small"},
                        {"name": "bge-small", "type": "dense", "model": "bge-small"}],
            "latency_queries": 2, "output_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work")}
    (tmp_path / "presets.yaml").write_text(yaml.safe_dump(spec))
    assert main(["experiment", str(tmp_path / "presets.yaml")]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["datasets"]["tiny"]["systems"]
    assert set(rows) == {"bm25", "MedEmbed-small", "bge-small"} and 0 <= rows["MedEmbed-small"]["ndcg@10"] <= 1
