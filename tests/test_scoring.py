import pytest
import torch

from medcolbert.scoring import maxsim, maxsim_one, pad_vectors


def naive(q: torch.Tensor, d: torch.Tensor) -> float:
    """MaxSim written out: for each query token, the best dot product over document tokens."""
    total = 0.0
    for i in range(q.shape[0]):
        total += max(float(q[i] @ d[j]) for j in range(d.shape[0]))
    return total


def unit(*shape: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1).float()


def test_maxsim_matches_naive_loop_with_variable_lengths():
    torch.manual_seed(0)
    queries = unit(3, 8, 16)
    docs = [unit(n, 16) for n in (5, 1, 17, 9, 30)]
    padded, mask = pad_vectors(docs)
    scores = maxsim(queries, padded, document_mask=mask)
    assert scores.shape == (3, 5)
    for qi in range(3):
        for di, d in enumerate(docs):
            assert scores[qi, di].item() == pytest.approx(naive(queries[qi], d), abs=1e-5)
        assert torch.allclose(maxsim_one(queries[qi], docs), scores[qi], atol=1e-5)


def test_query_mask_drops_tokens():
    torch.manual_seed(1)
    q, d = unit(1, 6, 8), unit(1, 4, 8)
    qmask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    full = maxsim(q[:, :3], d)
    assert maxsim(q, d, query_mask=qmask).item() == pytest.approx(full.item(), abs=1e-6)


def test_padding_never_wins_even_when_real_scores_are_negative():
    # Zero padding vectors would score 0 > negative similarities if the mask were ignored.
    q = torch.tensor([[[1.0, 0.0]]])
    d = torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    assert maxsim(q, d, document_mask=mask).item() == pytest.approx(-1.0)


def test_chunking_gives_the_same_scores(monkeypatch):
    import medcolbert.scoring as scoring

    torch.manual_seed(2)
    q = unit(2, 4, 8)
    docs = [unit(n, 8) for n in range(1, 40)]
    padded, mask = pad_vectors(docs)
    expected = maxsim(q, padded, document_mask=mask)
    monkeypatch.setattr(scoring, "MAX_CHUNK_ELEMENTS", 1)  # one document per chunk
    assert torch.allclose(scoring.maxsim(q, padded, document_mask=mask), expected, atol=1e-6)


def test_empty_document_scores_zero_and_dim_mismatch_is_an_error():
    q = unit(4, 8)
    assert maxsim_one(q, [torch.zeros(0, 8), unit(3, 8)])[0].item() == 0.0
    assert maxsim_one(q, []).numel() == 0
    with pytest.raises(ValueError, match="dim"):
        maxsim(q, unit(3, 9))
    with pytest.raises(ValueError, match="expected"):
        pad_vectors([unit(3, 8), unit(3, 9)])


def test_the_pooled_term_of_a_long_query_stays_finite_from_half_precision_scores():
    """A length power takes the pooled weight to thousands (128 vectors, power 6: 4096 x 128 per unit cosine),
    past float16's range: add_dense_term sums in float32 whatever the scores' dtype, and counts only real rows."""
    from medcolbert.config import ModelConfig
    from medcolbert.scoring import add_dense_term

    config = ModelConfig(query_maxlen=128, query_augment_len=32, dense_weight=1.0, dense_length_power=6.0)
    query = torch.nn.functional.normalize(torch.randn(130, 8), dim=-1)
    query[128:] = 0.0  # [PAD] rows are not counted
    scores = torch.tensor([20.0, 30.0], dtype=torch.float16)
    cosines = torch.tensor([0.9, 0.5], dtype=torch.float16)
    out = add_dense_term(scores, query, cosines, config)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    weight = 4.0 ** 6 * 128
    assert out.tolist() == pytest.approx([20.0 + weight * float(cosines[0]), 30.0 + weight * float(cosines[1])], rel=1e-6)
    assert add_dense_term(scores, query[:20], cosines, config).tolist() == pytest.approx(
        [20.0 + 20 * float(cosines[0]), 30.0 + 20 * float(cosines[1])], rel=1e-6)  # at most 32 vectors: weight 1


def _reference_score(q, docs, weight, q_pooled=None, d_pooled=None, units=None, augment=None, power=0.0):
    """Plain loops: sum over query rows of the best dot product, plus weight x rows x cosine, best unit per document."""
    rows = [r for r in q.tolist() if any(x != 0 for x in r)]
    out = []
    for j, d in enumerate(docs):
        s = sum(max(sum(a * b for a, b in zip(r, v)) for v in d.tolist()) for r in rows)
        if q_pooled is not None:
            w = weight if not power or len(rows) <= augment else weight * (len(rows) / augment) ** power
            s += w * len(rows) * sum(a * b for a, b in zip(q_pooled.tolist(), d_pooled[j].tolist()))
        out.append(s)
    if units is not None:
        grouped, at = [], 0
        for n in units:
            grouped.append(max(out[at:at + n]))
            at += n
        out = grouped
    return out


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("units", [None, [2, 1, 3]])
@pytest.mark.parametrize("power", [0.0, 2.0])
def test_score_candidates_equals_a_plain_reference(pooled, units, power):
    from medcolbert.config import ModelConfig
    from medcolbert.scoring import score_candidates

    g = torch.Generator().manual_seed(3)
    unit = lambda t: torch.nn.functional.normalize(t, dim=-1)  # noqa: E731
    q = unit(torch.randn(7, 8, generator=g))
    q[5:] = 0                                     # padding rows count for nothing
    docs = [unit(torch.randn(n, 8, generator=g)) for n in (3, 5, 1, 4, 2, 6)]
    qp, dp = unit(torch.randn(12, generator=g)), unit(torch.randn(6, 12, generator=g))
    config = ModelConfig(dim=8, query_augment_len=3, dense_weight=0.7, dense_length_power=power)
    got = score_candidates(q, docs, config, qp if pooled else None, dp if pooled else None, units_per_document=units)
    want = _reference_score(q, docs, 0.7, qp if pooled else None, dp, units, augment=3, power=power)
    assert torch.allclose(got, torch.tensor(want), atol=1e-4)
    # Precomputed MaxSim and cosines give the same scores as vectors do.
    again = score_candidates(q, weight=config, maxsim_scores=score_candidates(q, docs),
                             cosines=dp @ qp if pooled else None, units_per_document=units)
    assert torch.allclose(again, got, atol=1e-5)
    with pytest.raises(ValueError, match="do not cover"):
        score_candidates(q, docs, units_per_document=[2, 2])
