"""The query encoder's precision, chosen by measuring this CPU; lower precision only within cos 0.999 of fp32."""

from __future__ import annotations

import json

import pytest
import torch

from medcolbert.modeling.precision import MIN_COSINE, choose_query_precision, decide


def test_decide_takes_a_faster_precision_only_when_it_keeps_the_vectors():
    fast_exact = {"p50_ms": {"float32": 10.0, "bfloat16": 6.0}, "min_cosine": {"float32": 1.0, "bfloat16": 0.9995}}
    assert decide(fast_exact) == "bfloat16"
    drifts = {"p50_ms": {"float32": 10.0, "bfloat16": 6.0}, "min_cosine": {"float32": 1.0, "bfloat16": MIN_COSINE - 1e-4}}
    assert decide(drifts) == "float32"
    tie = {"p50_ms": {"float32": 10.0, "bfloat16": 9.9}, "min_cosine": {"float32": 1.0, "bfloat16": 0.9999}}
    assert decide(tie) == "float32"
    missing = {"p50_ms": {"float32": 10.0}, "min_cosine": {"float32": 1.0, "bfloat16": None}}
    assert decide(missing) == "float32"


def test_choice_is_measured_once_remembered_and_applied(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCOLBERT_CACHE", str(tmp_path))
    monkeypatch.setenv("MEDCOLBERT_QUERY_PRECISION", "auto")
    tiny_model.trace_queries = True
    try:
        got = choose_query_precision(tiny_model)
        assert got["reason"] == "measured" and got["chosen"] in ("float32", "bfloat16")
        assert set(got["p50_ms"]) >= {"float32"} and got["min_cosine"]["float32"] == pytest.approx(1.0, abs=1e-5)
        assert tiny_model.query_dtype == (None if got["chosen"] == "float32" else torch.bfloat16)
        stored = json.loads((tmp_path / "query-precision.json").read_text())
        assert [e["chosen"] for e in stored.values()] == [got["chosen"]]
        again = choose_query_precision(tiny_model)   # from the cache: same answer, nothing re-measured
        assert again["chosen"] == got["chosen"] and again["p50_ms"] == got["p50_ms"]
        # Forced bf16: the traced graph runs a bf16 copy, and its vectors stay close to fp32's.
        ref = tiny_model.encode_queries(["statin muscle pain"], show_progress=False)
        choose_query_precision(tiny_model, force="bfloat16")
        low = tiny_model.encode_queries(["statin muscle pain"], show_progress=False)
        keep = ref.abs().sum(-1) > 0
        assert torch.nn.functional.cosine_similarity(low[keep], ref[keep], dim=-1).min() > 0.98
        assert next(tiny_model.parameters()).dtype == torch.float32   # the model itself is untouched
        with pytest.raises(ValueError, match="auto, float32 or bfloat16"):
            choose_query_precision(tiny_model, force="int8")
    finally:
        choose_query_precision(tiny_model, force="float32")
        tiny_model.trace_queries = False
