"""No silent wrong answers and no tracebacks: each case an outside probe found, plus property-based checks."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcolbert.cli import main
from medcolbert.errors import CheckpointError, DataError, IndexFormatError, MedColbertError
from medcolbert.evaluation.datasets import load_corpus, load_qrels, load_queries, read_run
from medcolbert.indexing.builder import CorpusSource
from medcolbert.indexing.index import Index
from medcolbert.search.plaid import SearchConfig, Searcher
from medcolbert.training.data import read_triplets
from tests.conftest import make_tiny_model
from tests.test_index import make_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_model(seed=7).save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, checkpoint):
    from medcolbert import ColBERT

    path = tmp_path_factory.mktemp("idx") / "tiny"
    Index.build(path, ColBERT.from_pretrained(checkpoint, device="cpu"), make_corpus(60), num_centroids=16,
                show_progress=False)
    return path


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ numbers where they enter
@pytest.mark.parametrize("k", ["0", "-3", "1.5", "abc", "100001"])
def test_k_out_of_range_is_refused_by_bm25_and_search(k, tiny_beir, index_path, capsys):
    for args in (["bm25", "--data", tiny_beir, "--k", k],
                 ["search", "--index", index_path, "--data", tiny_beir, "--k", k]):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--k" in err and "[1, 100000]" in err


@pytest.mark.parametrize("option,value", [("--chunk-size", "0"), ("--batch-size", "0"), ("--kmeans-niters", "0"),
                                          ("--num-centroids", "-1"), ("--doc-maxlen", "2")])
def test_index_numbers_are_checked_before_any_folder_is_made(option, value, tiny_beir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["index", "--data", str(tiny_beir), "--index", str(tmp_path / "idx"), option, value])
    assert exc.value.code == 2 and option in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]   # only the data folder: no index, no work folder


@pytest.mark.parametrize("args", [["--threshold", "nan"], ["--threshold", "2"], ["--ncells", "0"], ["--ndocs", "0"]])
def test_search_knobs_are_range_checked(args, tiny_beir, index_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--index", str(index_path), "--data", str(tiny_beir), *args])
    assert args[0] in capsys.readouterr().err


def test_python_api_checks_k_and_knobs(index_path, checkpoint):
    from medcolbert import ColBERT
    from medcolbert.baselines.bm25 import BM25
    from medcolbert.search.rerank import rerank

    model = ColBERT.from_pretrained(checkpoint, device="cpu")
    searcher = Searcher(Index.open(index_path), model)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="k must be an integer"):
            searcher.search("aspirin", k=bad)
        with pytest.raises(ValueError, match="k must be"):
            BM25().index({"a": "aspirin"}).search({"q": "aspirin"}, k=bad)
        with pytest.raises(ValueError, match="k must be"):
            rerank(model, "aspirin", ["aspirin text"], k=bad)
    with pytest.raises(ValueError, match="centroid_score_threshold"):
        searcher.search("aspirin", k=5, centroid_score_threshold=float("nan"))
    with pytest.raises(ValueError, match="ncells"):
        SearchConfig(ncells=0).resolved(10)


def test_search_with_a_split_that_does_not_exist_fails(tiny_beir, index_path, capsys):
    code, out, err = run_cli(["search", "--index", index_path, "--data", tiny_beir, "--split", "nosuch"], capsys)
    assert code == 2 and "no qrels for split 'nosuch'" in err and "available: test" in err and out == ""


# ------------------------------------------------------------------ scores must be finite
@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "NaN"])
def test_runs_with_non_finite_scores_are_refused(score, tmp_path, tiny_beir, capsys):
    run = tmp_path / "run.trec"
    run.write_text(f"q1 Q0 d1 1 3.0 x\nq1 Q0 d2 2 {score} x\n")
    with pytest.raises(DataError, match=r"run.trec:2: score .* is not finite"):
        read_run(run)
    code, out, err = run_cli(["evaluate", run, "--data", tiny_beir], capsys)
    assert code == 2 and "not finite" in err and "ndcg" not in out


def test_triplet_teacher_scores_must_be_finite(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0]})[:-1]
                    + ', "neg_scores": [NaN]}\n')
    with pytest.raises(DataError, match="t.jsonl:1: field 'neg_scores' holds a score that is not finite"):
        read_triplets(path)


def test_qrels_grades_must_be_integers(tmp_path):
    for value in ("inf", "nan", "1.5"):
        path = tmp_path / "q.tsv"
        path.write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t{value}\n")
        with pytest.raises(DataError, match="q.tsv:2: relevance"):
            load_qrels(path)


# ------------------------------------------------------------------ ids and texts
@pytest.mark.parametrize("bad_id", ["a\x00b", "tab\tid", "bell\x07", "two words", ""])
def test_corpus_ids_with_control_characters_or_spaces_are_refused(bad_id, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": "ok", "text": "fine"}) + "\n" + json.dumps({"_id": bad_id, "text": "x"}) + "\n")
    with pytest.raises(DataError, match="corpus.jsonl:2: field '_id'"):
        load_corpus(path)
    with pytest.raises(MedColbertError):
        CorpusSource({"ok": "fine", bad_id: "x"})


def test_lone_surrogates_and_bad_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "fine"}\n{"_id": "q2", "text": "bad \\ud800 text"}\n')
    with pytest.raises(DataError, match="queries.jsonl:2: field 'text' holds an invalid character"):
        load_queries(path)
    path.write_bytes(b'{"_id": "q1", "text": "fine"}\n{"_id": "q2", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"queries.jsonl:2: not valid UTF-8 \(byte 0xe9 at column"):
        load_queries(path)
    run = tmp_path / "run.trec"
    run.write_bytes(b"q1 Q0 d\xff 1 1.0 x\n")
    with pytest.raises(DataError, match="run.trec:1: not valid UTF-8"):
        read_run(run)


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_without_backbone_weights_is_refused(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from medcolbert import ColBERT

    broken = Path(shutil.copytree(checkpoint, tmp_path / "no-backbone"))
    weights = load_file(str(broken / "model.safetensors"))
    save_file({"linear.weight": weights["linear.weight"]}, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"the weights lack \d+ backbone tensor\(s\) \(e.g. .*embeddings"):
        ColBERT.from_pretrained(broken, device="cpu")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_give_one_line(checkpoint, tmp_path, damage, capsys, tiny_beir):
    broken = Path(shutil.copytree(checkpoint, tmp_path / damage))
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64)
    code, _, err = run_cli(["rerank", "--data", tiny_beir, "--model", broken, "--no-cache"], capsys)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and "model.safetensors" in errors[0]


# ------------------------------------------------------------------ builds and resume
def test_resume_after_the_texts_changed_encodes_the_new_texts(tmp_path, checkpoint):
    from medcolbert import ColBERT

    model = ColBERT.from_pretrained(checkpoint, device="cpu")
    old = make_corpus(60, seed=1)
    new = {d: (t if i % 2 else "completely different words about kidney dialysis") for i, (d, t) in enumerate(old.items())}
    assert CorpusSource(old).fingerprint() != CorpusSource(new).fingerprint()
    assert CorpusSource(old).fingerprint() == CorpusSource(dict(old)).fingerprint()

    class Interrupting:   # a real model that is stopped (Ctrl-C) after its first chunk's documents
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode_documents(self, texts, **kw):
            self.calls += 1
            if self.calls > 2:
                raise KeyboardInterrupt
            return self.inner.encode_documents(texts, **kw)

    path = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        # 4 centroids: k-means samples 16 documents, so the chunks must encode the rest themselves
        Index.build(path, Interrupting(model), old, chunk_size=10, num_centroids=4, show_progress=False)
    assert (tmp_path / ".idx.building").is_dir()
    index = Index.build(path, model, new, chunk_size=10, num_centroids=4, show_progress=False)
    exact = {d: v for d, v in zip(new, model.encode_documents(list(new.values())))}
    got = index.document_vectors([index.position[d] for d in new])
    for d, vectors in zip(new, got):
        assert vectors.shape == exact[d].shape   # old texts' vectors would have another token count


# ------------------------------------------------------------------ index files
def test_same_size_bit_flip_is_found_by_check(index_path, tmp_path, capsys):
    path = copy_index(index_path, tmp_path / "flip")
    code, out, _ = run_cli(["check", "--index", path], capsys)
    assert code == 0 and "intact" in out
    residuals = next(path.glob("segments/*/residuals.npy"))
    data = bytearray(residuals.read_bytes())
    data[-1] ^= 0x01
    residuals.write_bytes(bytes(data))
    Index.open(path)   # sizes agree: a plain open does not hash every file
    with pytest.raises(IndexFormatError, match="does not match its checksum"):
        Index.open(path, verify=True)
    code, _, err = run_cli(["check", "--index", path], capsys)
    assert code == 2 and "residuals.npy does not match its checksum" in err


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("nbits"), "'nbits' is missing"),
    (lambda m: m.update(nbits=3), "'nbits' must be 1, 2 or 4"),
    (lambda m: m.update(dim=-4), "'dim' must be an integer >= 1"),
    (lambda m: m.update(segments="x"), "'segments' must be a list"),
    (lambda m: m["segments"][0].update(num_documents=-1), "num_documents' must be an integer >= 0"),
    (lambda m: m["files"].update({"../etc/passwd": {"bytes": 1, "sha256": "0"}}), "outside the index"),
    (lambda m: m.update(deleted="deleted-000009.npy"), "'deleted' must be null or a file"),
])
def test_damaged_manifest_gives_one_line(index_path, tmp_path, edit, message, capsys):
    path = copy_index(index_path, tmp_path / "m")
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=message):
        Index.open(path)
    code, _, err = run_cli(["check", "--index", path], capsys)
    assert code == 2 and message.split("'")[1 if "'" in message else 0] in err and "Traceback" not in err


def test_index_naming_a_file_and_missing_update_inputs(tmp_path, index_path, tiny_beir, capsys):
    file = tmp_path / "afile"
    file.write_text("x")
    code, _, err = run_cli(["search", "--index", file, "--data", tiny_beir], capsys)
    assert code == 2 and "is a file" in err
    code, _, err = run_cli(["index", "--data", tiny_beir, "--index", file], capsys)
    assert code == 2 and "is a file" in err
    path = copy_index(index_path, tmp_path / "u")
    code, _, err = run_cli(["update", "--index", path, "--delete", tmp_path / "missing.txt"], capsys)
    assert code == 2 and "missing.txt: file not found" in err


def test_output_that_is_a_folder_fails_before_any_work(tmp_path, tiny_beir, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    code, out, err = run_cli(["bm25", "--data", tiny_beir, "--output", folder], capsys)
    assert code == 2 and "is a folder" in err and "ndcg" not in out
    code, out, err = run_cli(["bm25", "--data", tiny_beir, "--json", folder / "sub" / "x.json"], capsys)
    assert code == 0   # a missing parent folder is created


def test_failed_add_does_not_commit_the_delete(index_path, tmp_path, capsys):
    path = copy_index(index_path, tmp_path / "atomic")
    before = Index.open(path)
    ids = tmp_path / "ids.txt"
    ids.write_text("doc1\n")
    bad = tmp_path / "add.jsonl"
    bad.write_text(json.dumps({"_id": "doc2", "text": "clashes with a kept document"}) + "\n")
    code, _, err = run_cli(["update", "--index", path, "--delete", ids, "--add", bad], capsys)
    assert code == 2 and "already in the index" in err
    after = Index.open(path)
    assert after.manifest["generation"] == before.manifest["generation"] and "doc1" in after.position


def test_superseded_delete_files_are_removed_at_commit(index_path, tmp_path):
    path = copy_index(index_path, tmp_path / "tomb")
    index = Index.open(path)
    for doc in ("doc1", "doc2", "doc3"):
        index.delete([doc])
    assert [p.name for p in path.glob("deleted-*.npy")] == [index.manifest["deleted"]]
    assert Index.open(path, verify=True).position.keys() == index.position.keys()


def test_overwrite_cut_between_its_renames_is_recovered_at_open(index_path, tmp_path):
    from medcolbert.fsutil import _backup_name

    path = copy_index(index_path, tmp_path / "ow")
    os.replace(path, _backup_name(path))   # the state right after the first rename
    assert not path.exists()
    index = Index.open(path, verify=True)
    assert len(index) == 60 and not _backup_name(path).exists()


# ------------------------------------------------------------------ killed at each step (real processes)
def _cli(*args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "medcolbert", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT, check=False)


def _write_corpus(path: Path, docs: dict) -> Path:
    path.write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()))
    return path


@pytest.mark.parametrize("point", ["build-chunk-written", "build-before-rename", "replace-between-renames"])
def test_build_killed_at_each_step_leaves_the_old_index_or_resumes(point, tmp_path, checkpoint, index_path):
    corpus = _write_corpus(tmp_path / "corpus.jsonl", make_corpus(30, seed=3))
    target = copy_index(index_path, tmp_path / "idx")       # an existing index that --overwrite replaces
    args = ["index", "--data", corpus, "--index", target, "--model", checkpoint, "--chunk-size", "10",
            "--num-centroids", "16", "--overwrite"]
    killed = _cli(*args, env={"MEDCOLBERT_FAILPOINT": point})
    assert killed.returncode == 137, killed.stderr[-500:]
    old = Index.open(target, verify=True)                    # still a whole index at the path
    assert len(old) in (60, 30)
    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-500:]
    assert len(Index.open(target, verify=True)) == 30


@pytest.mark.parametrize("change", ["add", "delete", "compact", "compact-before-commit"])
def test_update_killed_before_or_after_commit_keeps_a_consistent_index(change, tmp_path, checkpoint, index_path):
    path = copy_index(index_path, tmp_path / "upd")
    before = Index.open(path)
    before.delete(["doc5"])
    if change == "add":
        args = ["--add", _write_corpus(tmp_path / "new.jsonl", {"new1": "aspirin and heart attack"})]
        point = "update-before-commit"
    elif change == "delete":
        (tmp_path / "ids.txt").write_text("doc1\n")
        args, point = ["--delete", tmp_path / "ids.txt"], "update-before-commit"
    else:
        args, point = ["--compact"], "compact-after-commit" if change == "compact" else change
    killed = _cli("update", "--index", path, "--model", checkpoint, *args, env={"MEDCOLBERT_FAILPOINT": point})
    assert killed.returncode == 137, killed.stderr[-500:]
    after = Index.open(path, verify=True)
    if point in ("update-before-commit", "compact-before-commit"):   # nothing committed: the old documents
        assert set(after.position) == set(before.position)
    else:                                 # committed: the compacted index, leftovers do no harm
        assert set(after.position) == set(before.position) and after.manifest["deleted"] is None
    if point.startswith("compact"):   # a segment folder the manifest does not name (new or old), until a write
        assert after.leftover_segments(), "the kill left no segment folder behind"
    redo = _cli("update", "--index", path, "--model", checkpoint, *args)
    assert redo.returncode == 0, redo.stderr[-500:]
    assert Index.open(path, verify=True).leftover_segments() == []   # collected by the write


# ------------------------------------------------------------------ property-based: random bad input, clean errors
LINES = st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=LINES, raw=st.binary(max_size=60))
def test_readers_raise_data_errors_only(tmp_path, lines, raw):
    path = tmp_path / "input"
    for content in ("\n".join(lines).encode("utf-8", "surrogatepass"), raw):
        path.write_bytes(content)
        for reader in (load_corpus, load_queries, load_qrels, read_run, read_triplets):
            try:
                out = reader(path)
            except DataError as exc:
                assert "input" in str(exc)
            else:
                if reader is read_run:
                    assert all(math.isfinite(v) for docs in out.values() for v in docs.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["nbits", "dim", "num_centroids", "segments", "files", "deleted", "generation", "model"]),
       value=st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                       st.floats(allow_nan=True)))
def test_manifest_loader_raises_format_errors_only(index_path, tmp_path_factory, key, value):
    path = tmp_path_factory.mktemp("prop") / "i"
    shutil.copytree(index_path, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest[key] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    try:
        index = Index.open(path)
    except IndexFormatError as exc:
        assert str(path) in str(exc)
    else:
        assert len(index) == 60


@settings(max_examples=40, deadline=None)
@given(option=st.sampled_from(["--k", "--ncells", "--ndocs", "--threshold", "--batch-size"]),
       value=st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str), st.text(max_size=6)))
def test_numeric_options_never_give_a_traceback(option, value):
    from medcolbert.cli import build_parser

    command = "search" if option in ("--k", "--ncells", "--ndocs", "--threshold") else "rerank"
    base = ["search", "--index", "i", "--data", "d"] if command == "search" else ["rerank", "--data", "d"]
    try:
        args = build_parser().parse_args([*base, option, value])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        parsed = getattr(args, option[2:].replace("-", "_"))
        assert parsed is not None and (not isinstance(parsed, float) or math.isfinite(parsed))
        if option in ("--k", "--ncells", "--ndocs", "--batch-size"):
            assert parsed >= 1
