import json
import random
import shutil

import numpy as np
import pytest
import torch

from medcolbert.indexing.encoded import EncodedDocuments
from medcolbert.errors import DataError, IndexFormatError, MedColbertError
from medcolbert.indexing import builder
from medcolbert.indexing.codec import ResidualCodec
from medcolbert.search.cpu_kernel import ISAS
from medcolbert.indexing.index import Index
from medcolbert.indexing.storage import decode_code_deltas, encode_code_deltas, sort_within_documents
from medcolbert.scoring import maxsim_one
from medcolbert.search.plaid import SearchConfig, Searcher
from tests.conftest import make_tiny_model

WORDS = ("statin myopathy muscle pain insulin metformin diabetes aspirin infarction asthma steroid vaccine "
         "influenza elderly children sleep obesity cancer chemotherapy leukemia kidney dialysis liver "
         "hepatitis virus antibody fever cough heart failure stroke").split()


def make_corpus(n: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"doc{i}": " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) for i in range(n)}


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=11)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(80)


@pytest.fixture(scope="module")
def built(tmp_path_factory, model, corpus):
    path = tmp_path_factory.mktemp("idx") / "tiny"
    return Index.build(path, model, corpus, nbits=2, chunk_size=32, show_progress=False)


def test_codes_delta_encoding_round_trips_with_escapes():
    rng = np.random.default_rng(0)
    doclens = rng.integers(1, 40, size=50)
    codes = rng.integers(0, 40000, size=int(doclens.sum()))
    codes = codes[sort_within_documents(codes, doclens)]
    deltas, escapes = encode_code_deltas(codes, doclens)
    assert deltas.dtype == np.uint8 and len(escapes) > 0
    assert np.array_equal(decode_code_deltas(deltas, escapes, doclens), codes)
    # Decoding a few documents at a time (how a large index opens) gives the same codes, into a given array.
    out = np.empty(len(codes), dtype=np.int32)
    assert np.array_equal(decode_code_deltas(deltas, escapes, doclens, out=out, block=50), codes)
    with pytest.raises(IndexFormatError, match="escapes"):
        decode_code_deltas(deltas, escapes[:-1], doclens, block=50)


def test_inverted_lists_built_in_blocks_equal_one_pass(built):
    """Opening builds the (document, centroid) pairs and inverted lists block by block: any block size gives
    the lists that one argsort over all pairs gives, int32, documents ascending in every list."""
    index = Index.open(built.path)
    doc_of = np.repeat(np.arange(len(index.doclens)), index.doclens)
    start = np.ones(len(index.codes), dtype=bool)
    start[1:] = (index.codes[1:] != index.codes[:-1]) | (doc_of[1:] != doc_of[:-1])
    pair_codes, pair_docs = index.codes[start], doc_of[start]
    expected_docs = pair_docs[np.argsort(pair_codes, kind="stable")]
    for block in (7, 300, 1 << 22):
        index._build_inverted_lists(block=block)
        assert index.pair_codes.dtype == index.ivf_docs.dtype == np.int32
        assert np.array_equal(index.pair_codes, pair_codes)
        assert np.array_equal(index.pair_offsets, np.searchsorted(pair_docs, np.arange(len(index.doclens) + 1)))
        assert np.array_equal(index.ivf_docs, expected_docs)
        assert np.array_equal(np.diff(index.ivf_offsets), np.bincount(pair_codes, minlength=index.codec.num_centroids))


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_codec_round_trip_improves_with_bits(nbits):
    torch.manual_seed(0)
    vecs = torch.nn.functional.normalize(torch.randn(2000, 32), dim=-1)
    centroids = torch.nn.functional.normalize(vecs[:64] + 0.01, dim=-1).numpy()
    codec = ResidualCodec.fit(centroids, vecs[1000:].numpy(), nbits)
    codes, packed = codec.compress(vecs[:1000])
    assert packed.shape == (1000, 32 * nbits // 8)
    approx = codec.decompress(codes, packed)
    cos = (approx * vecs[:1000]).sum(-1).mean().item()
    assert cos > {1: 0.75, 2: 0.85, 4: 0.95}[nbits]
    assert torch.allclose(approx.norm(dim=-1), torch.ones(1000), atol=1e-5)


def test_build_writes_a_folder_of_plain_arrays_with_checksums(built, corpus):
    files = {p.relative_to(built.path).as_posix() for p in built.path.rglob("*") if p.is_file()}
    assert "manifest.json" in files and all(f.endswith(".npy") for f in files - {"manifest.json"})
    manifest = json.loads((built.path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["nbits"] == 2 and manifest["num_documents"] == 80
    assert set(manifest["files"]) == files - {"manifest.json"}
    Index.open(built.path, verify=True)
    assert len(built) == 80 and set(built.doc_ids) == set(corpus)
    assert not list(built.path.parent.glob(".*building*"))  # the work folder is gone


def test_document_vectors_approximate_the_encoder(built, model, corpus):
    pos = built.position["doc3"]
    approx = built.document_vectors([pos])[0]
    exact = model.encode_documents([corpus["doc3"]])[0]
    assert approx.shape == exact.shape
    # Vectors are stored sorted by centroid, so compare as sets: each exact vector has a close twin.
    assert (exact @ approx.T).max(dim=1).values.min() > 0.8


def test_exact_search_is_brute_force_maxsim(built, model):
    q = model.encode_queries(["statin muscle pain"])[0]
    searcher = Searcher(built, model)
    hits = searcher.search_vectors(q, k=5, exact=True)
    every = maxsim_one(q, built.document_vectors(np.arange(len(built.doc_ids))))
    order = torch.argsort(every, descending=True)[:5]
    assert [d for d, _ in hits] == [built.doc_ids[i] for i in order]
    assert [s for _, s in hits] == pytest.approx(every[order].tolist(), abs=1e-4)


def test_plaid_with_wide_settings_equals_exact(built, model):
    searcher = Searcher(built, model, SearchConfig(ncells=64, centroid_score_threshold=-1.0, ndocs=400))
    for query in ["statin muscle pain", "insulin diabetes kidney", "vaccine influenza elderly"]:
        plaid = searcher.search(query, k=10)
        exact = searcher.search(query, k=10, exact=True)
        assert [d for d, _ in plaid] == [d for d, _ in exact]
    default = Searcher(built, model).search("statin muscle pain", k=5)
    assert len(default) == 5 and default == sorted(default, key=lambda h: -h[1])
    run = searcher.search_all({"a": "statin", "b": "asthma steroid"}, k=3)
    assert set(run) == {"a", "b"} and all(len(h) == 3 for h in run.values())


def test_engine_scores_equal_decompress_then_matmul_and_threads_agree(built, model):
    from concurrent.futures import ThreadPoolExecutor

    from medcolbert.search.engine import PlaidEngine

    engine = PlaidEngine(built, "cpu", compiled=False)
    rows = torch.arange(0, built.num_embeddings, 3)
    q = model.encode_queries(["statin muscle pain"])[0]
    fused = engine.similarities(rows, q, chunk=100)   # several chunks
    reference = built.codec.decompress(built.codes[rows.numpy()], built.residual_rows(rows.numpy())) @ q.T
    assert torch.allclose(fused, reference, atol=1e-5)
    # One searcher shared by threads gives every thread the answer it gives alone.
    searcher = Searcher(built, model, SearchConfig(ncells=2, centroid_score_threshold=0.0, ndocs=8))
    queries = ["statin muscle pain", "insulin diabetes kidney", "vaccine influenza elderly", "asthma steroid"] * 5
    alone = [searcher.search(x, k=5) for x in queries]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: searcher.search(x, k=5), queries))
    assert together == alone


@pytest.mark.skipif(__import__("medcolbert.search.cpu_kernel", fromlist=["load"]).load() is None,
                    reason="compiled PLAID stages not built")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nbits,dim", [(1, 32), (2, 32), (2, 128), (2, 24), (4, 32)])
def test_compiled_decompression_is_bit_identical_to_torch(nbits, dim, isa):
    # nbits 2 with dim a multiple of 16 takes the AVX-512 or AVX2 loop; the rest the generic one compiled for `isa`.
    from medcolbert.indexing.codec import dequantize
    from medcolbert.search.cpu_kernel import load

    kernel = _forced(isa)

    torch.manual_seed(dim + nbits)
    vecs = torch.nn.functional.normalize(torch.randn(1500, dim), dim=-1)
    codec = ResidualCodec.fit(torch.nn.functional.normalize(vecs[:50] + 0.01, dim=-1).numpy(), vecs[500:].numpy(), nbits)
    codes, packed = codec.compress(vecs[:500])
    rows = np.arange(3, 500, 3)
    with kernel.using(isa):
        out, norms = kernel.decompress(codes.astype(np.int32), packed, codec.centroids,
                                       codec.centroid_scales.astype(np.float32), codec._byte_table.numpy(), rows=rows)
    reference = dequantize(torch.from_numpy(codes[rows]), torch.from_numpy(packed[rows]), codec.centroids_f32,
                           codec._byte_table, codec._row_base).numpy()
    assert np.array_equal(out, reference)
    assert np.allclose(norms, np.linalg.norm(reference, axis=1), rtol=1e-6)


@pytest.mark.skipif(__import__("medcolbert.search.cpu_kernel", fromlist=["load"]).load() is None,
                    reason="compiled PLAID stages not built")
@pytest.mark.parametrize("isa", ISAS)
def test_compiled_stages_equal_the_torch_engine(tmp_path, built, model, corpus, isa):
    # Each instruction set's loops the CPU runs (AVX-512, AVX2 + FMA, portable), forced in turn.
    from medcolbert.search.engine import EXACT_STAGES, PlaidEngine

    kernel = _forced(isa)
    with kernel.using(isa):
        _compiled_stages_equal_the_torch_engine(kernel, tmp_path, built, model, EXACT_STAGES, PlaidEngine)


def _forced(isa: str):  # type: ignore[no-untyped-def]
    """The compiled kernel, the test skipped where this CPU cannot run `isa`."""
    from medcolbert.search.cpu_kernel import load

    kernel = load()
    if isa not in kernel.isas():
        pytest.skip(f"this CPU runs the kernel's {kernel.widest} loops at most, not {isa}")
    return kernel


def _compiled_stages_equal_the_torch_engine(kernel, tmp_path, built, model, EXACT_STAGES, PlaidEngine):  # type: ignore[no-untyped-def]
    isa_in_use = kernel.isa
    rows = np.arange(0, built.num_embeddings, 2)
    codec = built.codec
    args = (codec.centroids, codec.centroid_scales.astype(np.float32), codec._byte_table.numpy())
    out, norms = kernel.decompress(built.codes[rows].astype(np.int32), built.residual_rows(rows), *args)
    unit = codec.decompress(built.codes[rows], built.residual_rows(rows)).numpy()
    assert np.allclose(out / norms[:, None], unit, atol=1e-6)
    # Reading rows of the whole arrays gives the same vectors as gathering them first.
    everything = np.arange(built.num_embeddings)
    direct, _ = kernel.decompress(built.codes.astype(np.int32), built.residual_rows(everything), *args, rows=rows)
    assert np.array_equal(direct, out)
    with pytest.raises(IndexError):
        kernel.decompress(built.codes.astype(np.int32), built.residual_rows(everything), *args, rows=rows + 10**6)
    sim, lens = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), np.array([3, 1, 6])
    assert np.allclose(kernel.segment_maxsim(sim, lens), [sim[:3].max(0).sum(), sim[3].sum(), sim[4:].max(0).sum()])
    halved = kernel.segment_maxsim(sim, lens, np.full(10, 2.0, dtype=np.float32))
    assert np.allclose(halved, kernel.segment_maxsim(sim, lens) / 2)
    with pytest.raises(TypeError, match="int64"):
        kernel.segment_maxsim(sim, lens.astype(np.int32))
    # int8 rows (an index's pooled vectors) times a float vector, with and without one scale per row.
    rng = np.random.default_rng(1)
    rows8 = rng.integers(-127, 128, size=(37, 24), dtype=np.int8)
    vec, row_scales = rng.standard_normal(24).astype(np.float32), rng.random(37).astype(np.float32)
    widened = rows8.astype(np.float64) @ vec
    assert np.allclose(kernel.int8_rows_dot(rows8, vec), widened, rtol=1e-5, atol=1e-3)
    assert np.allclose(kernel.int8_rows_dot(rows8, vec, row_scales), widened * row_scales, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="do not fit"):
        kernel.int8_rows_dot(rows8, vec[:20])

    # An index with two segments and deleted documents, searched with knobs that run every stage.
    shutil.copytree(built.path, tmp_path / "idx")
    idx = Index.open(tmp_path / "idx")
    extra = {f"x{d}": text for d, text in make_corpus(30, seed=7).items()}
    idx.add(EncodedDocuments.encode(model, extra | {"new": "asthma steroid inhaler asthma"}, index=idx))
    idx.delete(["doc1", "doc2", "doc3", "new"])
    queries = ["statin muscle pain", "insulin diabetes kidney", "vaccine influenza elderly", "asthma steroid"]
    for index, stage in [(built, s) for s in EXACT_STAGES] + [(idx, s) for s in EXACT_STAGES]:
        compiled = PlaidEngine(index, "cpu", compiled=True, exact_stage=stage)
        reference = PlaidEngine(index, "cpu", compiled=False)
        assert compiled.kernel is kernel and kernel.isa == isa_in_use
        assert compiled.exact_stage == stage and compiled.exact_choice["reason"] == "forced"
        compiled.SPLIT_ROWS = 2   # the two-thread exact stage, which large stages take, on this tiny index
        for query in queries:
            q = model.encode_queries([query])[0]
            for k, ncells, threshold, ndocs in [(10, 1, 0.5, 256), (3, 2, 0.0, 8), (5, 4, 0.3, 16), (100, 2, 0.4, 1024)]:
                docs_c, scores_c = compiled.search(q, k, ncells, threshold, ndocs)
                docs_t, scores_t = reference.search(q, k, ncells, threshold, ndocs)
                assert torch.allclose(scores_c, scores_t, atol=1e-5), (query, k)
                assert docs_c.tolist() == docs_t.tolist(), (query, k)
                if index is idx:
                    assert not {index.doc_ids[d] for d in docs_c.tolist()} & {"doc1", "doc2", "doc3", "new"}
            # The exact stage alone, for documents chosen elsewhere (a hybrid search's pooled side): both engines
            # give each document its MaxSim over the stored vectors, in index order whatever the order asked.
            chosen = np.array([7, 0, 31, 12, len(index) - 1], dtype=np.int64)
            want = maxsim_one(q, index.document_vectors(np.sort(chosen)))
            for engine in (compiled, reference):
                docs, scores = engine.exact(q, chosen)
                assert docs.tolist() == sorted(chosen.tolist()) and torch.allclose(scores, want, atol=1e-4)
                assert engine.exact(q, np.zeros(0, dtype=np.int64))[0].numel() == 0


def test_traced_query_encoder_matches_eager(model):
    texts = ["statin muscle pain", "a"]
    model.trace_queries = False
    eager = model.encode_queries(texts)
    model.trace_queries = True
    try:
        traced = model.encode_queries(texts)
    finally:
        model.trace_queries = False
    assert torch.allclose(eager, traced, atol=1e-5)
    # The pooled variant has its own graph; a 40-token query is padded to the graph's 48 with [PAD], which
    # must not move the pooled mean.
    long_model = make_tiny_model(seed=11, query_maxlen=64)
    long_texts = [*texts, "pain " * 37]
    eager_pooled = long_model.encode_queries(long_texts, pooled=True)
    long_model.trace_queries = True
    traced_pooled = long_model.encode_queries(long_texts, pooled=True)
    assert eager_pooled[0].shape[1] == 40 and [k[1] for k in long_model._query_graphs] == [48]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager_pooled, traced_pooled))


def test_add_delete_compact(tmp_path, model, corpus):
    idx = Index.build(tmp_path / "ix", model, dict(list(corpus.items())[:40]), show_progress=False)
    q = model.encode_queries(["leukemia chemotherapy cancer"])[0]
    wide = SearchConfig(ncells=64, centroid_score_threshold=-1, ndocs=100)

    def everything(index, exact=False):
        return dict(Searcher(index, model, wide).search_vectors(q, k=100, exact=exact))

    idx.add(EncodedDocuments.encode(model, {"new1": "leukemia chemotherapy cancer leukemia", "new2": "kidney dialysis"}, index=idx))
    assert len(idx) == 42 and len(idx.manifest["segments"]) == 2
    found = everything(idx)
    assert {"new1", "new2"} <= found.keys()
    own = maxsim_one(q, idx.document_vectors([idx.position["new1"]]))[0].item()
    assert found["new1"] == pytest.approx(own, abs=1e-4)
    with pytest.raises(MedColbertError, match="already in the index"):
        idx.add(EncodedDocuments.encode(model, {"new1": "again"}, index=idx))
    with pytest.raises(MedColbertError, match="not in the index"):
        idx.delete(["nope"])
    idx.delete(["new1", "doc0"])
    reopened = Index.open(idx.path)
    assert len(reopened) == 40 and "new1" not in reopened.position
    for exact in (False, True):
        hits = everything(reopened, exact)
        assert len(hits) == 40 and {"new1", "doc0"}.isdisjoint(hits)
    before = everything(reopened, exact=True)
    sizes = reopened.compact()
    assert sizes["after"]["bytes_total"] < sizes["before"]["bytes_total"]
    compacted = Index.open(idx.path, verify=True)
    assert len(compacted.manifest["segments"]) == 1 and len(compacted) == 40
    assert not (idx.path / "segments" / "00000").exists()
    after = everything(compacted, exact=True)
    assert after.keys() == before.keys() and all(after[d] == pytest.approx(before[d], abs=1e-5) for d in after)
    # a deleted id can be added again and is found again
    compacted.add(EncodedDocuments.encode(model, {"new1": "leukemia chemotherapy cancer leukemia"}, index=compacted))
    assert "new1" in everything(compacted)


def test_writers_see_each_other_and_survive_a_crashed_writer(tmp_path, model, corpus):
    idx = Index.build(tmp_path / "ix", model, dict(list(corpus.items())[:30]), show_progress=False)
    searcher = Searcher(idx, model, SearchConfig(ncells=64, centroid_score_threshold=-1, ndocs=100))
    # A writer killed after moving its segment in but before committing leaves an orphan folder.
    orphan = idx.path / "segments" / "00001"
    shutil.copytree(idx.path / "segments" / "00000", orphan)
    (idx.path / ".tmp-00001-999").mkdir()
    other = Index.open(idx.path)          # a second writer, e.g. another process
    other.add(EncodedDocuments.encode(model, {"a": "kidney dialysis failure"}, index=other))
    idx.add(EncodedDocuments.encode(model, {"b": "asthma steroid inhaler"}, index=idx))   # idx is behind by one commit; the lock brings it up to date
    final = Index.open(idx.path, verify=True)
    assert {"a", "b"} <= final.position.keys() and len(final) == 32
    assert not list(idx.path.glob(".tmp-*"))
    # A Searcher over an Index updated in place searches the new state.
    assert "b" in dict(searcher.search("asthma steroid inhaler", k=40))


def test_interrupted_build_resumes_from_finished_chunks(tmp_path, model, corpus, monkeypatch):
    real = builder._compress_chunk
    calls, crashed = [], []

    def flaky(work, c, *args, **kw):
        calls.append(c)
        if c == 2 and not crashed:  # a crash during the third chunk of the first attempt
            crashed.append(c)
            raise RuntimeError("simulated crash")
        return real(work, c, *args, **kw)

    monkeypatch.setattr(builder, "_compress_chunk", flaky)
    path = tmp_path / "ix"
    with pytest.raises(RuntimeError, match="simulated crash"):
        builder.build_index(path, model, corpus, chunk_size=20, show_progress=False)
    assert not path.exists()  # no half index where the index goes
    calls.clear()
    builder.build_index(path, model, corpus, chunk_size=20, show_progress=False)
    assert calls == [2, 3]  # chunks 0 and 1 were kept from the first attempt
    reference = Index.build(tmp_path / "ref", model, corpus, chunk_size=20, show_progress=False)
    resumed = Index.open(path)
    assert resumed.doc_ids == reference.doc_ids and np.array_equal(resumed.codes, reference.codes)


def test_failed_rebuild_leaves_the_old_index_intact(tmp_path, model, corpus, monkeypatch):
    path = tmp_path / "ix"
    Index.build(path, model, dict(list(corpus.items())[:30]), show_progress=False)

    def boom(*a, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(builder, "_finalize", boom)
    with pytest.raises(RuntimeError):
        builder.build_index(path, model, corpus, overwrite=True, show_progress=False)
    assert len(Index.open(path, verify=True)) == 30


def test_bad_input_and_damaged_indexes(tmp_path, built, model, corpus):
    with pytest.raises(MedColbertError, match="empty"):
        Index.build(tmp_path / "a", model, {}, show_progress=False)
    with pytest.raises(DataError, match="duplicate document id 'x'"):
        Index.build(tmp_path / "b", model, [("x", "one"), ("x", "two")], show_progress=False)
    with pytest.raises(MedColbertError, match="already holds an index"):
        Index.build(built.path, model, corpus, show_progress=False)
    with pytest.raises(MedColbertError, match="nbits"):
        Index.build(tmp_path / "c", model, corpus, nbits=3, show_progress=False)
    with pytest.raises(MedColbertError, match="64-dim vectors but the index"):
        Searcher(built, make_tiny_model(dim=64))
    with pytest.raises(IndexFormatError, match="no index folder"):
        Index.open(tmp_path / "nothing")

    import shutil

    def damaged(name):
        target = tmp_path / name
        shutil.copytree(built.path, target)
        return target

    p = damaged("version")
    m = json.loads((p / "manifest.json").read_text())
    (p / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="format version 99"):
        Index.open(p)
    p = damaged("missing")
    (p / "segments" / "00000" / "residuals.npy").unlink()
    with pytest.raises(IndexFormatError, match="missing segments/00000/residuals.npy"):
        Index.open(p)
    p = damaged("truncated")
    f = p / "segments" / "00000" / "residuals.npy"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(IndexFormatError, match="truncated"):
        Index.open(p)
    p = damaged("corrupt")
    f = p / "codec" / "centroids.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        Index.open(p, verify=True)


def test_chunked_build_writes_the_same_segment_as_one_chunk(tmp_path, model, corpus):
    """The final segment is streamed chunk by chunk (memory holds one chunk); its arrays must equal a one-chunk build's."""
    many = Index.build(tmp_path / "many", model, corpus, chunk_size=7, num_centroids=16, show_progress=False)
    one = Index.build(tmp_path / "one", model, corpus, chunk_size=10_000, num_centroids=16, show_progress=False)
    assert many.doc_ids == one.doc_ids and np.array_equal(many.doclens, one.doclens)
    assert np.array_equal(many.codes, one.codes)
    assert np.array_equal(np.asarray(many._residual_parts[0]), np.asarray(one._residual_parts[0]))
    assert len(many.manifest["segments"]) == 1
    Index.open(tmp_path / "many", verify=True)


def test_index_stores_texts_and_metadata_and_search_returns_them(tmp_path, model):
    records = [{"id": f"r{i}", "text": f"aspirin {WORDS[i]} heart attack note {i}", "metadata": {"year": 2000 + i}}
               for i in range(12)]
    index = Index.build(tmp_path / "docs", model, records, chunk_size=5, num_centroids=4, show_progress=False)
    assert index.has_documents and index.document("r3") == {"id": "r3", "text": records[3]["text"],
                                                             "metadata": {"year": 2003}}
    hits = Searcher(index, model).search(records[7]["text"], k=3, return_documents=True)
    assert hits[0]["id"] == "r7" and hits[0]["text"] == records[7]["text"] and hits[0]["metadata"] == {"year": 2007}
    index.update(add=EncodedDocuments.encode(model, {"new": "kidney dialysis"}, {"new": {"source": "api"}}, index=index),
                 delete=["r0"])
    index.compact()
    reopened = Index.open(tmp_path / "docs", verify=True)
    assert reopened.document("new")["metadata"] == {"source": "api"} and reopened.document("r11")["text"] == records[11]["text"]
    assert "r0" not in reopened.position
    stats = reopened.stats()
    assert stats["document_store_bytes"] > 0   # reported apart from the search structures' bytes per vector
    plain = Index.build(tmp_path / "plain", model, {r["id"]: r["text"] for r in records}, num_centroids=4,
                        store_documents=False, show_progress=False)
    assert not plain.has_documents and plain.stats()["document_store_bytes"] == 0
    with pytest.raises(MedColbertError, match="does not store document texts"):
        plain.document("r1")


def test_cli_ad_hoc_query_prints_ranked_hits_with_snippets(tmp_path, model, capsys):
    from medcolbert.cli import main

    ckpt = model.save_pretrained(tmp_path / "ckpt")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"{WORDS[i]} and {WORDS[i + 1]} study"})
                              + "\n" for i in range(20)))
    assert main(["index", "--data", str(corpus), "--index", str(tmp_path / "i"), "--model", str(ckpt),
                 "--num-centroids", "4"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "i"), "--query", f"T5 {WORDS[5]} and {WORDS[6]} study", "--k", "3",
                 "--json", str(tmp_path / "hits.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["1", "d5"] and "T5" in out[0] and '"title": "T5"' in out[1]
    saved = json.loads((tmp_path / "hits.json").read_text())
    assert len(saved["hits"]) == 3 and saved["hits"][0]["metadata"] == {"title": "T5"}


def test_build_from_vector_shards_matches_the_build_from_texts(tmp_path, model, corpus):
    from safetensors.numpy import save_file

    from medcolbert.indexing.vectors import read_shards

    ids = list(corpus)
    vectors = model.encode_documents([corpus[d] for d in ids])
    shards = tmp_path / "shards"
    shards.mkdir()
    half = len(ids) // 2
    for name, part in (("a", slice(0, half)), ("b", slice(half, None))):
        vs = vectors[part]
        flat = torch.cat(vs).numpy()
        lens = np.array([v.shape[0] for v in vs])
        if name == "a":
            np.save(shards / "a.vectors.npy", flat)
            np.save(shards / "a.doclens.npy", lens)
            (shards / "a.ids.txt").write_text("\n".join(ids[part]) + "\n")
        else:
            save_file({"vectors": flat, "doclens": lens}, str(shards / "b.safetensors"),
                      metadata={"ids": json.dumps(ids[part])})
    fp = model.fingerprint(weights_only=True)
    from_vectors = Index.build_from_vectors(tmp_path / "v", [shards], "tiny", model_fingerprint=fp, num_centroids=16,
                                            show_progress=False)
    from_texts = Index.build(tmp_path / "t", model, corpus, num_centroids=16, show_progress=False)
    assert from_vectors.doc_ids == from_texts.doc_ids and np.array_equal(from_vectors.doclens, from_texts.doclens)
    agree = np.mean(from_vectors.codes == from_texts.codes)
    assert agree > 0.99                       # re-normalising stored unit vectors moves a few ties at most
    searcher_v, searcher_t = Searcher(from_vectors, model), Searcher(from_texts, model)
    for d in ids[:10]:
        assert [h for h, _ in searcher_v.search(corpus[d], k=5)] == [h for h, _ in searcher_t.search(corpus[d], k=5)]
    np.save(shards / "a.doclens.npy", np.array([1, 2]))
    with pytest.raises(DataError, match="ids for 2 document lengths"):
        read_shards([shards])


def test_plaid_with_real_pruning_stays_close_to_exact(tmp_path):
    """ndocs far below the collection size, so the candidate and centroid-interaction stages do prune."""
    from medcolbert.search.engine import PlaidEngine

    model = make_tiny_model(seed=17, dim=32)
    corpus = make_corpus(600, seed=17)
    index = Index.build(tmp_path / "big", model, corpus, num_centroids=64, show_progress=False)
    searcher = Searcher(index, model)
    ids = list(corpus)
    top1, found = 0, 0
    recall: dict[int, list[float]] = {40: [], 1200: []}
    for d in ids[::20]:
        query = corpus[d]
        exact = searcher.search(query, k=10, exact=True)
        # Ties make the exact top 10 a blurry set on random words: a PLAID hit counts when it scores at least
        # exact's 10th best (it is as good as the document it replaces).
        floor = exact[-1][1] - 1e-4
        for ndocs, ncells, threshold in ((40, 2, 0.3), (1200, 16, 0.0)):
            plaid = searcher.search(query, k=10, ncells=ncells, centroid_score_threshold=threshold, ndocs=ndocs)
            recall[ndocs].append(sum(s >= floor for _, s in plaid) / 10)
            if ndocs == 40:
                top1 += plaid[0][0] == exact[0][0]
                found += d in [h for h, _ in plaid]
    n = len(recall[40])
    # Pruned hard (40 of 600 documents), PLAID still ranks the query's own document first; wider knobs
    # recover the exact top 10.
    assert top1 >= 0.9 * n and found >= 0.9 * n
    assert np.mean(recall[1200]) >= 0.9 and np.mean(recall[1200]) > np.mean(recall[40])
    engine = PlaidEngine(index, "cpu", compiled=False)
    q = model.encode_queries(["statin muscle pain insulin"])[0]
    docs, _ = engine.search(q, 10, 2, 0.3, 40)
    assert len(docs) == 10 and len(index) > 40 * 10


def test_hnsw_centroid_assignment_agrees_with_exact(tiny_model, tmp_path):
    """HNSW assignment (for huge centroid tables) picks the exact nearest centroid almost always, and the
    index built with it ranks like the exact one; the choice is recorded and "auto" stays exact when small."""
    from medcolbert.indexing.codec import HNSW_MIN_CENTROIDS, resolve_assignment
    from medcolbert.search.plaid import Searcher

    docs = {f"d{i}": f"patient {i} reports {w} after {v}" for i, (w, v) in enumerate(
        (w, v) for w in ("nausea", "headache", "rash", "fatigue", "cough") for v in ("statins", "metformin", "aspirin",
                                                                                   "warfarin", "insulin", "vaccination"))}
    exact = Index.build(tmp_path / "exact", tiny_model, docs, num_centroids=64, assignment="exact", show_progress=False)
    hnsw = Index.build(tmp_path / "hnsw", tiny_model, docs, num_centroids=64, assignment="hnsw", show_progress=False)
    assert exact.manifest["build"]["assignment"] == "exact" and hnsw.manifest["build"]["assignment"] == "hnsw"
    # The centroid HNSW picks scores as high as the best one (identical centroids tie; which of them is
    # picked does not matter) for nearly every vector.
    vectors = torch.cat(tiny_model.encode_documents(list(docs.values()), show_progress=False))
    scores = vectors @ hnsw.codec.centroids_f32.T
    picked = hnsw.codec.use_assignment("hnsw").assign(vectors)
    assert hnsw.codec.assignment == "hnsw"
    assert (scores.gather(1, picked[:, None])[:, 0] >= scores.max(dim=1).values - 1e-5).float().mean() > 0.95
    assert len(hnsw.codes) == len(exact.codes)
    q = "rash after aspirin"
    a = [d for d, _ in Searcher(exact, tiny_model).search(q, k=5, exact=True)]
    b = [d for d, _ in Searcher(hnsw, tiny_model).search(q, k=5, exact=True)]
    assert len(set(a) & set(b)) >= 4
    auto = Index.build(tmp_path / "auto", tiny_model, docs, num_centroids=64, show_progress=False)
    assert auto.manifest["build"]["assignment"] == "exact"
    assert resolve_assignment("auto", HNSW_MIN_CENTROIDS) == "hnsw" and resolve_assignment("auto", 1024) == "exact"
    with pytest.raises(MedColbertError, match="assignment"):
        Index.build(tmp_path / "bad", tiny_model, docs, assignment="fast", show_progress=False)


def test_plaid_returns_k_hits_when_the_index_holds_k_documents(tiny_model, tmp_path):
    """A tiny index whose best centroid lists one document still gives k hits: the probe widens."""
    from medcolbert.search.plaid import Searcher

    docs = ["Statins can cause muscle pain.", "Flu vaccines protect the elderly.", "Metformin treats type 2 diabetes."]
    index = Index.build(tmp_path / "tiny", tiny_model, docs, show_progress=False)
    searcher = Searcher(index, tiny_model)
    for q in ("do statins hurt muscles", "flu shot for old people", "diabetes drug"):
        hits = searcher.search(q, k=3)
        assert sorted(d for d, _ in hits) == ["0", "1", "2"]
        assert [d for d, _ in hits] == [d for d, _ in searcher.search(q, k=3, exact=True)]
        assert len(searcher.search(q, k=2)) == 2


def test_search_presets_resolve_by_k_and_refuse_unknown_names():
    from medcolbert.search.plaid import PRESETS

    quality, fast = SearchConfig(), SearchConfig(preset="colbert-ai")
    for k in (1, 10, 100):
        r = quality.resolved(k)
        assert (r.ncells, r.centroid_score_threshold, r.ndocs) == (4, 0.4, 4096)
    assert (fast.resolved(10).ncells, fast.resolved(10).ndocs) == (1, 256)
    assert (fast.resolved(11).ncells, fast.resolved(100).ndocs) == (2, 1024)
    for cfg in (quality, fast):
        assert cfg.resolved(500).ndocs == 4096 and cfg.resolved(2000).ndocs == 8000
    assert SearchConfig(ndocs=64).resolved(10).ndocs == 64 and set(PRESETS) == {"quality", "colbert-ai"}
    # A smaller collection: a third of its documents, at least 256 (colbert-ai's preset ignores the size).
    assert quality.resolved(10, 1000).ndocs == 333 and quality.resolved(10, 300).ndocs == 256
    assert quality.resolved(100, 15368).ndocs == 4096 and fast.resolved(10, 1000).ndocs == 256
    with pytest.raises(ValueError, match="preset must be one of quality, colbert-ai, got 'fastest'"):
        SearchConfig(preset="fastest")
    # A model with a pooled head: colbert-ai's knobs under either preset, for the 100 entries each side nominates.
    assert (quality.resolved(10, 15368, hybrid=True).ndocs, quality.resolved(100, 300, hybrid=True).ncells) == (256, 2)
    assert SearchConfig(ndocs=64).resolved(100, hybrid=True).ndocs == 100   # set knobs stay (at least k)


def test_a_pooled_head_searcher_resolves_its_knobs_for_the_entries_it_fetches(tmp_path, corpus):
    """Searcher.resolved_config: MaxSim alone follows the preset at k; with a pooled head, colbert-ai's knobs
    for max(k, 100) entries, unless the call sets them."""
    docs = dict(list(corpus.items())[:40])
    model, maxsim_only = make_tiny_model(seed=11).reconfigure(dense_weight=0.5), make_tiny_model(seed=11)
    hybrid = Searcher(Index.build(tmp_path / "h", model, docs, show_progress=False), model)
    plain = Searcher(Index.build(tmp_path / "p", maxsim_only, docs, show_progress=False), maxsim_only)
    knobs = lambda cfg: (cfg.ncells, cfg.centroid_score_threshold, cfg.ndocs)  # noqa: E731
    assert knobs(plain.resolved_config(10)) == (4, 0.4, 256)
    assert knobs(hybrid.resolved_config(10)) == knobs(hybrid.resolved_config(100)) == (2, 0.45, 1024)
    # k <= 10: each side nominates 32 entries and 64 documents are scored exactly (plaid-knobs-v6); k=100: 100, auto.
    small, large = hybrid.resolved_config(10), hybrid.resolved_config(100)
    assert (small.hybrid_depth, small.exact_docs) == (32, 64) and (large.hybrid_depth, large.exact_docs) == (100, None)
    assert hybrid.resolved_config(10, hybrid_depth=50).exact_docs is None and plain.resolved_config(10).hybrid_depth is None
    assert knobs(hybrid.resolved_config(10, preset="quality", ndocs=300)) == (2, 0.45, 300)
    assert knobs(hybrid.resolved_config(500)) == (4, 0.4, 4096)


@pytest.mark.parametrize("compiled", [None, False])
def test_extra_documents_are_scored_in_the_same_pass_as_exact_maxsim(built, model, compiled):
    """PlaidEngine.search(extra=...): documents chosen elsewhere (a hybrid search's pooled-side nearest) get the
    scores `exact` gives them alone, in the same pass, and do not change the top k."""
    from medcolbert.search.engine import PlaidEngine

    engine = PlaidEngine(built, "cpu", compiled)
    q = model.encode_queries(["statin muscle pain"])[0]
    q = q[q.abs().sum(-1) > 0]
    plain = engine.search(q, 5, 2, 0.0, 16)
    extra = np.array([7, 3, 30, int(plain[0][0])], dtype=np.int64)   # one of them a survivor too
    scored: dict = {}
    joined = engine.search(q, 5, 2, 0.0, 16, extra=extra, scored=scored)
    assert joined[0].tolist() == plain[0].tolist() and torch.allclose(joined[1], plain[1], atol=1e-5)
    docs, alone = engine.exact(q, extra)
    assert sorted(scored) == sorted(extra.tolist())
    assert np.allclose([scored[d] for d in docs.tolist()], alone.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="scored"):
        engine.search(q, 5, 2, 0.0, 16, extra=extra)


def test_two_level_kmeans_matches_flat_quality_and_is_recorded(tiny_model, tmp_path):
    """Two-level k-means (for tens of thousands of centroids) gives every requested centroid, unit length, with
    a within-cluster fit close to flat k-means on clustered data; the index records which one trained it."""
    from medcolbert.indexing.kmeans import TWO_LEVEL_MIN_CENTROIDS, resolve_kmeans, share_out, train_centroids

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(64, 32)).astype(np.float32)
    points = centers[rng.integers(0, 64, 20_000)] + 0.15 * rng.normal(size=(20_000, 32)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    fit = {}
    for method in ("flat", "two-level"):
        c = train_centroids(points, 256, method=method)
        assert c.shape == (256, 32) and np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
        fit[method] = float((points @ c.T).max(axis=1).mean())   # mean cosine to the nearest centroid
    assert fit["two-level"] >= fit["flat"] - 0.01
    # Shares: proportional, capped by a group's points, one for each non-empty group while there are enough.
    assert share_out(10, np.array([0, 1, 1, 100, 3])).tolist() == [0, 1, 1, 7, 1]
    assert share_out(7, np.array([2, 2, 2])).tolist() == [2, 2, 2]
    assert resolve_kmeans("auto", TWO_LEVEL_MIN_CENTROIDS) == "two-level" and resolve_kmeans("auto", 4096) == "flat"
    docs = {f"d{i}": f"patient {i} reports {w}" for i, w in enumerate(["nausea", "rash", "cough", "fever"] * 10)}
    two = Index.build(tmp_path / "two", tiny_model, docs, num_centroids=16, kmeans="two-level", show_progress=False)
    assert two.manifest["build"]["kmeans"] == "two-level" and two.codec.num_centroids == 16
    with pytest.raises(MedColbertError, match="kmeans"):
        Index.build(tmp_path / "bad", tiny_model, docs, kmeans="fast", show_progress=False)


def test_an_index_of_a_pooled_head_model_keeps_its_pooled_vectors_through_add_delete_and_compact(tmp_path, corpus):
    """A model with dense_weight > 0: the index stores each document's pooled vector, and search scores every
    hit as MaxSim (stored vectors) + weight x (query vectors) x cosine of the pooled vectors."""
    model = make_tiny_model(seed=11).reconfigure(dense_weight=0.5)
    docs = dict(list(corpus.items())[:40])
    idx = Index.build(tmp_path / "hx", model, docs, chunk_size=16, show_progress=False)
    _, pooled = model.encode_documents(list(docs.values()), pooled=True)
    # Stored as int8 rows with one scale each: every component within half a step of its value (plus 1e-4: the
    # k-means sample's documents reach their chunk through a float16 copy).
    assert idx.pooled is not None and idx.pooled.dtype == np.int8 and idx.pooled_scale.dtype == np.float32
    step = idx.pooled_scale[:, None]
    assert np.all(np.abs(idx.pooled_vectors(np.arange(len(docs))).numpy() - pooled.numpy()) <= step / 2 + 1e-4)
    assert torch.allclose(idx.pooled_cosines(pooled[0]), pooled @ pooled[0], atol=1e-2)
    query = "leukemia chemotherapy cancer"
    q, qp = model.encode_queries([query], pooled=True)
    q, qp = q[0], qp[0]

    def expected(index):  # every live document, scored here from the stored vectors and the encoder's pooled ones
        live = [index.position[d] for d in index.position]
        texts = [docs.get(index.doc_ids[p]) or added[index.doc_ids[p]] for p in live]
        _, own_pooled = model.encode_documents(texts, pooled=True)
        count = int((q.abs().sum(-1) > 0).sum())
        scores = maxsim_one(q, index.document_vectors(live)) + 0.5 * count * (own_pooled @ qp)
        return {index.doc_ids[p]: float(x) for p, x in zip(live, scores)}

    added = {"new1": "leukemia chemotherapy cancer leukemia", "new2": "kidney dialysis"}
    idx.add(EncodedDocuments.encode(model, added, index=idx))
    idx.delete(["doc0"])
    for index in (idx, Index.open(idx.path)):
        want = expected(index)
        for exact in (False, True):
            got = dict(Searcher(index, model).search(query, k=len(want), exact=exact))
            assert got.keys() == want.keys()
            assert all(got[d] == pytest.approx(want[d], abs=0.02) for d in got)
    before = {d: idx.pooled_vectors([idx.position[d]]) for d in ("doc1", "new1")}
    idx.compact()
    compacted = Index.open(idx.path, verify=True)
    assert len(compacted.pooled) == len(compacted) == 41
    # Compaction rewrites the int8 rows from their values: nothing is lost to a second rounding.
    assert all(torch.equal(compacted.pooled_vectors([compacted.position[d]]), v) for d, v in before.items())
    want = expected(compacted)
    got = dict(Searcher(compacted, model).search(query, k=5))
    assert list(got) == sorted(want, key=lambda d: -want[d])[:5]
    with pytest.raises(MedColbertError, match="pooled single-vector head"):
        Searcher(Index.build(tmp_path / "plain", model.reconfigure(dense_weight=0.0), docs, show_progress=False),
                 make_tiny_model(seed=11).reconfigure(dense_weight=0.5))


def test_pooled_vectors_are_stored_as_int8_rows_and_older_float16_segments_still_read(tmp_path):
    """write_segment stores pooled vectors as int8 + a float32 scale per row; a float16 pooled.npy (indexes
    written before) reads as it is, and an int8 one without its scales is refused as damaged."""
    from medcolbert.indexing.storage import quantize_pooled, read_segment, save_array, write_segment

    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((3, 8)).astype(np.float32)
    pooled[2] = 0.0  # an all-zero row keeps a zero scale, not a division by zero
    q8, scale = quantize_pooled(pooled)
    assert q8.dtype == np.int8 and scale.dtype == np.float32 and scale[2] == 0.0
    assert np.all(np.abs(q8 * scale[:, None] - pooled) <= scale[:, None] / 2 + 1e-7)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_pooled(np.array([[np.nan, 1.0]], np.float32))
    codes = np.array([0, 1, 0, 1, 1], np.int64)
    residuals = np.zeros((5, 4), np.uint8)
    _, files = write_segment(tmp_path, "s", ["a", "b", "c"], np.array([2, 2, 1]), codes, residuals, pooled=pooled)
    data = read_segment(tmp_path, "segments/s", files)
    assert data.pooled.dtype == np.int8 and np.array_equal(data.pooled_scale, scale)
    files["segments/s/pooled.npy"] = save_array(tmp_path / "segments/s/pooled.npy", pooled.astype(np.float16))
    del files["segments/s/pooled_scale.npy"]
    old = read_segment(tmp_path, "segments/s", files)
    assert old.pooled.dtype == np.float16 and old.pooled_scale is None
    files["segments/s/pooled.npy"] = save_array(tmp_path / "segments/s/pooled.npy", q8)
    with pytest.raises(IndexFormatError, match="no pooled_scale"):
        read_segment(tmp_path, "segments/s", files)


def test_encoded_documents_refuse_what_an_index_cannot_take(tmp_path, model, corpus):
    """EncodedDocuments and Index.update: each bad input is refused with one line naming it, before any write."""
    from medcolbert.indexing.encoded import EncodedDocuments

    idx = Index.build(tmp_path / "e", model, dict(list(corpus.items())[:12]), num_centroids=4, show_progress=False)
    generation = idx.manifest.get("generation")
    dim = idx.codec.dim
    with pytest.raises(MedColbertError, match="document id"):
        EncodedDocuments({"bad\nid": "text"}, [torch.zeros(2, dim)])
    with pytest.raises(MedColbertError, match="text of document 'x' is empty"):
        EncodedDocuments.encode(model, {"x": "   "}, index=idx)
    with pytest.raises(MedColbertError, match="metadata for 1 id"):
        EncodedDocuments.encode(model, {"x": "kidney"}, {"y": {"a": 1}}, index=idx)
    with pytest.raises(MedColbertError, match="2 vector sets for 1 documents"):
        EncodedDocuments({"x": "kidney"}, [torch.zeros(2, dim)] * 2)
    with pytest.raises(MedColbertError, match=rf"document vectors must be \[tokens, {dim}\]"):
        idx.add(EncodedDocuments({"x": "kidney"}, [torch.zeros(2, dim + 1)]))
    with pytest.raises(MedColbertError, match="holds no pooled vectors"):
        idx.add(EncodedDocuments({"x": "kidney"}, [torch.zeros(2, dim)], torch.zeros(1, 8)))
    with pytest.raises(MedColbertError, match="another index"):   # passages made for a split index
        idx.add(EncodedDocuments({"x\x1f0": "kidney"}, [torch.zeros(2, dim)], split=True))
    assert Index.open(tmp_path / "e").manifest.get("generation") == generation   # nothing was written
    added = idx.add(EncodedDocuments.encode(model, {"x": "kidney dialysis"}, {"x": {"s": 1}}, index=idx))
    assert added == 1 and Index.open(tmp_path / "e").document("x")["metadata"] == {"s": 1}
