"""Text that is empty in all but bytes (control, format and zero-width characters) is refused everywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcolbert.search.rerank import rerank
from medcolbert.validation import check_text, is_blank
from tests.test_service import served  # noqa: F401  (the module-scoped service over a tiny index)

INVISIBLE = ["\u200b", "\x00", "\x01\x02\x03", "\ufeff", "\u00ad", "\ufe0f\ufe0e", "\u2028", "\t \u3000", "\U000e0100"]


@pytest.mark.parametrize("text", INVISIBLE + ["", "   "])
def test_invisible_texts_are_blank(text):
    assert is_blank(text)
    with pytest.raises(ValueError, match="query is empty"):
        check_text(text, "query")


@pytest.mark.parametrize("text", ["a", "\u200bflu", "é", "日本", "1", "\u00adx"])
def test_texts_with_a_visible_character_are_not_blank(text):
    assert not is_blank(text) and check_text(text) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(whitelist_categories=("Cc", "Cf", "Zs", "Zl", "Zp")), max_size=20))
def test_any_mix_of_whitespace_control_and_format_characters_is_blank(text):
    assert is_blank(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.characters(whitelist_categories=("Lu", "Ll", "Lo", "Nd")), st.text(max_size=20))
def test_one_letter_or_digit_makes_a_text_not_blank(before, letter, after):
    assert not is_blank(before + letter + after)


@pytest.mark.parametrize("text", INVISIBLE)
def test_rerank_refuses_an_invisible_query_or_candidate(tiny_model, text):
    with pytest.raises(ValueError, match="query is empty"):
        rerank(tiny_model, text, ["statins and muscle pain", "flu vaccine"])
    with pytest.raises(ValueError, match=r"candidates\[1\] is empty"):
        rerank(tiny_model, "statins", ["statins and muscle pain", text])


def test_service_refuses_invisible_queries_candidates_and_documents(served):  # noqa: F811
    client = served[0]
    for text in INVISIBLE:
        r = client.post("/search", json={"query": text, "k": 3})
        assert r.status_code == 422 and "query is empty" in r.text, (text, r.text)
        r = client.post("/rerank", json={"query": "statins", "candidates": ["statins and muscle pain", text]})
        assert r.status_code == 422 and "candidates[1] is empty" in r.text, (text, r.text)
        r = client.post("/documents", json={"documents": {"zz": text}})
        assert r.status_code == 422 and "is empty" in r.text, (text, r.text)
