"""Reciprocal rank fusion."""

import pytest

from medcolbert.search.fusion import rrf


def test_rrf_sums_reciprocal_ranks_and_keeps_documents_of_either_run():
    a = {"q": {"d1": 9.0, "d2": 5.0, "d3": 1.0}}
    b = {"q": {"d2": 0.9, "d4": 0.8}}
    fused = rrf([a, b], k=60)
    assert list(fused["q"]) == ["d2", "d1", "d4", "d3"]
    assert fused["q"]["d2"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["q"]["d4"] == pytest.approx(1 / 62)
    assert list(rrf([a, b], k=60, depth=2)["q"]) == ["d2", "d1"]
    assert list(rrf([a, b], k=60, weights=[1.0, 0.0])["q"])[:3] == ["d1", "d2", "d3"]
    assert rrf([a, {"other": {"x": 1.0}}])["other"] == {"x": pytest.approx(1 / 61)}
    with pytest.raises(ValueError):
        rrf([])
    with pytest.raises(ValueError):
        rrf([a, b], weights=[1.0])
