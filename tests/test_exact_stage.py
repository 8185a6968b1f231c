"""The exact stage's variants: scoring from the compressed codes (lookups) against rebuilding vectors, and the
per-machine choice between them."""

import json

import numpy as np
import pytest
import torch

from medcolbert.indexing.codec import ResidualCodec, dequantize
from medcolbert.search import cpu_kernel

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason="compiled PLAID stages not built")


@pytest.mark.parametrize("nbits,dim,lq", [(1, 32, 32), (2, 128, 32), (2, 128, 7), (2, 24, 32), (4, 32, 32), (4, 64, 13),
                                          (2, 128, 33), (2, 128, 48), (2, 128, 65), (1, 64, 128), (2, 128, 129)])
def test_lookup_scores_equal_decompress_then_maxsim(nbits, dim, lq):
    # Where the CPU has AVX-512: Lq 32 takes its own loop, other Lq up to 128 the blocked one (a zero-padded lookup
    # table, a masked last block of centroid scores); longer queries and other CPUs the portable loop.
    torch.manual_seed(dim + nbits + lq)
    vecs = torch.nn.functional.normalize(torch.randn(1200, dim), dim=-1)
    codec = ResidualCodec.fit(torch.nn.functional.normalize(vecs[:40] + 0.01, dim=-1).numpy(), vecs[600:].numpy(), nbits)
    codes, packed = codec.compress(vecs[:600])
    q = torch.nn.functional.normalize(torch.randn(lq, dim), dim=-1)
    full = dequantize(torch.from_numpy(codes), torch.from_numpy(packed), codec.centroids_f32, codec._byte_table,
                      codec._row_base)
    unit = full / full.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lens = np.array([5, 1, 40, 0, 17, 100], dtype=np.int64)
    starts = np.array([0, 7, 20, 60, 300, 450], dtype=np.int64)
    want = [float((unit[s:s + n] @ q.T).max(dim=0).values.sum()) if n else -np.inf for s, n in zip(starts, lens)]
    table = (codec.centroids_f32 @ q.T).numpy()
    per_byte = 8 // nbits
    bt = codec._byte_table.numpy().reshape(-1, 256, per_byte)
    kernel = cpu_kernel.load()
    width = kernel.lut_width(lq)
    assert width >= lq and (width == lq or width % 16 == 0)
    padded = np.zeros((width, dim), dtype=np.float32)
    padded[:lq] = q.numpy()
    lut = np.ascontiguousarray(np.matmul(bt, padded.T.reshape(-1, per_byte, width)), dtype=np.float32)
    norms = full.norm(dim=-1).clamp_min(1e-12).numpy()
    got = kernel.exact_lut(np.ascontiguousarray(table), lut, codes.astype(np.int32), packed, norms, starts, lens)
    assert np.allclose(got, want, atol=1e-5)
    with pytest.raises(IndexError):
        cpu_kernel.load().exact_lut(np.ascontiguousarray(table), lut, codes.astype(np.int32), packed, norms,
                                    starts + 600, lens)
    with pytest.raises(ValueError, match="do not fit"):
        cpu_kernel.load().exact_lut(np.ascontiguousarray(table), lut[:-1], codes.astype(np.int32), packed, norms,
                                    starts, lens)
    if width != lq:
        with pytest.raises(ValueError, match="do not fit"):   # a table of Lq columns where the loop reads `width`
            kernel.exact_lut(np.ascontiguousarray(table), np.ascontiguousarray(lut[:, :, :lq]), codes.astype(np.int32),
                             packed, norms, starts, lens)


def test_the_choice_is_measured_once_remembered_and_can_be_forced(tmp_path, monkeypatch, tiny_model):
    from medcolbert.indexing.index import Index
    from medcolbert.search.engine import EXACT_STAGES, PlaidEngine
    from tests.test_index import make_corpus

    monkeypatch.setenv("MEDCOLBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDCOLBERT_EXACT_STAGE", raising=False)
    index = Index.build(tmp_path / "idx", tiny_model, make_corpus(40), nbits=2)
    engine = PlaidEngine(index, "cpu")
    choice = engine.exact_choice
    assert choice["reason"] == "measured" and set(choice["p50_ms"]) == set(choice["best_ms"]) == set(EXACT_STAGES)
    assert choice["chosen"] == min(choice["best_ms"], key=choice["best_ms"].get) == engine.exact_stage
    # Every variant agreed with decompress-then-multiply on the probe before it was timed.
    assert max(choice["max_abs_diff"].values()) < 1e-4
    stored = json.loads((tmp_path / "cache" / "exact-stage.json").read_text())
    (key, entry), = stored.items()
    assert entry["chosen"] == choice["chosen"] and key.endswith(f"|dim 16|nbits 2|kernel r{engine.kernel.revision}")
    # The remembered entry is used as it is: a different stored choice is taken without measuring again.
    other = next(s for s in EXACT_STAGES if s != choice["chosen"])
    (tmp_path / "cache" / "exact-stage.json").write_text(json.dumps({key: {**entry, "chosen": other}}))
    assert PlaidEngine(index, "cpu").exact_stage == other
    monkeypatch.setenv("MEDCOLBERT_EXACT_STAGE", "torch")
    assert PlaidEngine(index, "cpu").exact_choice == {"chosen": "torch", "reason": "forced"}
    monkeypatch.setenv("MEDCOLBERT_EXACT_STAGE", "gpu")
    with pytest.raises(ValueError, match="MEDCOLBERT_EXACT_STAGE must be auto or one of lut"):
        PlaidEngine(index, "cpu")
