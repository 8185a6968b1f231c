"""medcolbert export-onnx: the graph onnxruntime runs gives torch's vectors; int8 only where it keeps 0.99 cosine."""

from __future__ import annotations

import json

import pytest

from medcolbert.cli import main
from medcolbert.modeling.onnx_export import INT8_MIN_COSINE, export_onnx

pytest.importorskip("onnxruntime", reason="export-onnx checks its graphs with onnxruntime")

TEXTS = ["do statins cause muscle pain?", "Statin therapy is associated with myopathy, muscle pain and cramps.",
         "metformin " * 30]


def test_export_matches_torch_and_int8_is_kept_only_above_the_bar(tmp_path, tiny_model):
    figures = export_onnx(tiny_model, tmp_path / "onnx", TEXTS, TEXTS)
    assert figures["float32"]["queries_max_abs_diff"] <= 1e-5 and figures["float32"]["documents_max_abs_diff"] <= 1e-5
    worst = min(figures["int8"]["queries_min_cosine"], figures["int8"]["documents_min_cosine"])
    assert figures["int8"]["kept"] == (worst >= INT8_MIN_COSINE)
    assert (tmp_path / "onnx" / "model_int8.onnx").is_file() == figures["int8"]["kept"]
    config = json.loads((tmp_path / "onnx" / "config_sentence_transformers.json").read_text())
    assert config["query_length"] == tiny_model.config.augment_len and config["document_length"] == tiny_model.config.doc_maxlen
    assert (tmp_path / "onnx" / "tokenizer.json").is_file() and not (tmp_path / "onnx" / "modules.json").exists()


def test_cli_export_and_convert(tmp_path, tiny_model, capsys):
    model = tiny_model.save_pretrained(tmp_path / "m")
    assert main(["export-onnx", "--model", str(model), "--output", str(tmp_path / "o"), "--no-int8",
                 "--json", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["float32"]["documents_max_abs_diff"] <= 1e-5
    assert main(["convert", "--model", str(model), "--format", "pylate", "--output", str(tmp_path / "pl")]) == 0
    assert "pylate" in json.loads((tmp_path / "pl" / "modules.json").read_text())[1]["type"]
    assert main(["convert", "--model", str(tmp_path / "nowhere"), "--format", "pylate", "--output", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
