"""Training data, mining, losses and the trainer (tiny models built from a config; real data only for the mix check)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from medcolbert import load_beir
from medcolbert.errors import DataError
from medcolbert.modeling.checkpoint import default_model_path
from medcolbert.training.data import Triplet, beir_to_triplets, pairs_to_triplets, read_triplets, write_triplets
from medcolbert.training.losses import contrastive_loss, distillation_loss
from medcolbert.training.mining import mine_negatives
from medcolbert.training.trainer import TrainConfig, Trainer, TripletStream, load_training_data
from tests.conftest import SHARED_DATA, make_tiny_model
from tests.test_distributed import free_port

TRIPLETS = [
    Triplet("do statins cause muscle pain", ("Statin therapy is associated with myopathy and muscle pain.",),
            ("Annual influenza vaccination reduces hospital admissions.",)),
    Triplet("metformin for diabetes", ("Metformin is a first-line treatment for type 2 diabetes.",),
            ("Low-dose aspirin lowers the risk of a second infarction.",)),
    Triplet("aspirin after heart attack", ("Low-dose aspirin lowers the risk of a second infarction.",),
            ("Short sleep duration is linked to obesity in children.",)),
    Triplet("flu vaccine in older people", ("Annual influenza vaccination reduces hospital admissions.",),
            ("Inhaled corticosteroids control persistent asthma symptoms.",)),
    Triplet("asthma inhaler steroids", ("Inhaled corticosteroids control persistent asthma symptoms.",),
            ("Metformin is a first-line treatment for type 2 diabetes.",)),
    Triplet("children sleep and weight", ("Short sleep duration is linked to obesity in children.",),
            ("Statin therapy is associated with myopathy and muscle pain.",)),
    Triplet("vitamin d and bones", ("Vitamin D supplements reduce fractures in older women.",),
            ("Annual influenza vaccination reduces hospital admissions.",)),
    Triplet("smoking and lung cancer", ("Tobacco smoking is the main cause of lung cancer.",),
            ("Vitamin D supplements reduce fractures in older women.",)),
]


def write_train_file(path: Path, triplets=TRIPLETS) -> str:
    write_triplets(path, list(triplets))
    return str(path)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    model = make_tiny_model(seed=5, dropout=0.0)
    return str(model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny"))


def config(tmp_path: Path, checkpoint: str, **kw) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / "run"), train_files=[write_train_file(tmp_path / "train.jsonl")],
                model=checkpoint, batch_size=4, max_steps=4, lr=1e-3, save_every=2, log_every=1, doc_maxlen=32,
                query_maxlen=12, dim=16, inference_doc_maxlen=64, warmup_ratio=0.25)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- data
def test_converters_and_round_trip(tmp_path, tiny_beir):
    data = load_beir(tiny_beir, "test")
    triplets = beir_to_triplets(data, source="tiny")
    assert len(triplets) == 4 and triplets[0].pos[0].startswith("Statins and muscle pain")
    assert triplets[0].meta["source"] == "tiny" and triplets[0].meta["pos_ids"] == ["d1"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "q?", "pos": ["answer"], "source": "GHR", "focus": "X"}) + "\n")
    (t,) = pairs_to_triplets(pairs, source="medquad")
    assert t.neg == () and t.meta == {"upstream_source": "GHR", "focus": "X", "source": "medquad"}
    write_triplets(tmp_path / "t.jsonl", triplets)
    assert read_triplets(tmp_path / "t.jsonl") == triplets


def test_mining_skips_positives_and_near_duplicates_and_respects_the_window():
    pos = "statins cause muscle pain and myopathy in some treated patients"
    corpus = {"p": pos, "dup": pos + " too", "n1": "statins lower cholesterol in patients with muscle pain history",
              "n2": "muscle pain after exercise in patients", "n3": "statins and liver enzymes in patients",
              "far": "influenza vaccination of older adults"}
    t = Triplet("statins muscle pain patients", (pos,), ())
    (mined,) = mine_negatives([t], corpus, n_negatives=10, window=(0, 3), near_duplicate=0.7)
    assert pos not in mined.neg and corpus["dup"] not in mined.neg
    assert set(mined.neg) <= {corpus["n1"], corpus["n2"], corpus["n3"]} and len(mined.neg) == 3
    (skip_first,) = mine_negatives([t], corpus, n_negatives=10, window=(1, 3), near_duplicate=0.7)
    assert len(skip_first.neg) == 2
    again = mine_negatives([t], corpus, n_negatives=2, window=(0, 3), seed=0)
    assert again == mine_negatives([t], corpus, n_negatives=2, window=(0, 3), seed=0)
    with pytest.raises(ValueError, match="window"):
        mine_negatives([t], corpus, window=(3, 3))


def test_stream_is_deterministic_and_pads_missing_negatives():
    stream = TripletStream([Triplet("q", ("p",), ()), *TRIPLETS], seed=3, n_negatives=2, need_scores=False)
    samples = [stream.sample(i) for i in range(20)]
    assert samples == [TripletStream(TRIPLETS[:0] + [Triplet("q", ("p",), ()), *TRIPLETS], 3, 2, False).sample(i)
                       for i in range(20)]
    assert all(len(docs) == 3 for _, docs, _ in samples)
    with pytest.raises(DataError, match="pos_scores"):
        TripletStream(TRIPLETS, seed=0, n_negatives=1, need_scores=True)


def test_merged_questions_join_a_donor_question_and_keep_their_own_documents():
    tagged = [Triplet(t.query, t.pos, t.neg, meta={"source": "long" if i >= 5 else "short"}) for i, t in enumerate(TRIPLETS)]
    plain = TripletStream(tagged, seed=3, n_negatives=1, need_scores=False)
    merged = TripletStream(tagged, seed=3, n_negatives=1, need_scores=False, merge_rate=0.5, merge_sources=["long"])
    donors = {t.query for t in tagged[5:]}
    by_query = {t.query: t for t in tagged}
    n_merged = 0
    for i in range(400):
        (q0, docs0, _), (q1, docs1, _) = plain.sample(i), merged.sample(i)
        assert docs1 == docs0                      # the documents (and so the labels) are the plain stream's
        if q1 == q0:
            continue
        n_merged += 1
        # The query is the sample's own question and one donor's, in either order, and the donor's answer is
        # not this sample's positive.
        donor = q1.removeprefix(q0 + " ") if q1.startswith(q0 + " ") else q1.removesuffix(" " + q0)
        assert donor in donors and donor != q0 and q1 in (f"{q0} {donor}", f"{donor} {q0}")
        assert not set(by_query[donor].pos) & set(by_query[q0].pos)
    assert 150 < n_merged < 250                    # about half of 400
    assert [merged.sample(i) for i in range(50)] == [
        TripletStream(tagged, 3, 1, False, merge_rate=0.5, merge_sources=["long"]).sample(i) for i in range(50)]
    with pytest.raises(DataError, match="merge_sources names"):
        TripletStream(tagged, 3, 1, False, merge_rate=0.5, merge_sources=["nope"])
    with pytest.raises(ValueError, match="merge_rate must be between 0 and 1"):
        TrainConfig(output_dir="x", train_files=["t.jsonl"], merge_rate=1.5)
    with pytest.raises(ValueError, match="merge_rate needs scores"):
        TrainConfig(output_dir="x", train_files=["t.jsonl"], merge_rate=0.2, loss="distill")


def test_training_data_selects_and_upsamples_sources(tmp_path):
    tagged = [Triplet(t.query, t.pos, t.neg, meta={"source": "a" if i < 3 else "b"}) for i, t in enumerate(TRIPLETS)]
    path = write_train_file(tmp_path / "mix.jsonl", tagged)
    assert len(load_training_data([path])) == len(TRIPLETS)
    only_a = load_training_data([path], sources=["a"])
    assert [t.query for t in only_a] == [t.query for t in TRIPLETS[:3]]
    upsampled = load_training_data([{"path": path, "repeat": 2}], source_repeat={"a": 3}, sources=["a"])
    assert len(upsampled) == 3 * 2 * 3
    with pytest.raises(DataError, match="'c'"):
        load_training_data([path], sources=["a", "c"])
    with pytest.raises(DataError, match="source_repeat"):
        load_training_data([path], source_repeat={"b": 2}, sources=["a"])


# ---------------------------------------------------------------- losses
def test_losses():
    scores = torch.tensor([[5.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    targets = torch.tensor([0, 1])
    manual = -(torch.log_softmax(scores / 0.5, dim=1)[[0, 1], [0, 1]]).mean()
    assert torch.allclose(contrastive_loss(scores, targets, 0.5), manual)
    assert distillation_loss(scores, scores).abs() < 1e-6
    assert distillation_loss(scores, scores.flip(1)) > 0.1
    with pytest.raises(ValueError):
        distillation_loss(scores, scores[:, :2])


# ---------------------------------------------------------------- trainer
def test_config_from_yaml_names_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\ntrain_files: [a.jsonl]\nlearning_rate: 1\n")
    with pytest.raises(DataError, match="bad.yaml.*learning_rate"):
        TrainConfig.from_yaml(bad)
    good = tmp_path / "good.yaml"
    good.write_text("output_dir: x\ntrain_files: [a.jsonl]\nlr: 0.001\n")
    assert TrainConfig.from_yaml(good, max_steps=7).max_steps == 7


def test_training_lowers_the_loss(tmp_path, tiny_checkpoint):
    cfg = config(tmp_path, tiny_checkpoint, max_steps=30, save_every=100, warmup_ratio=0.0, lr=3e-3)
    trainer = Trainer(cfg, show_progress=False)
    losses = [trainer.train_step()["loss"] for _ in range(cfg.max_steps)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_resumed_run_equals_uninterrupted_run(tmp_path, tiny_checkpoint):
    straight = Trainer(config(tmp_path / "a", tiny_checkpoint), show_progress=False)
    final = straight.fit()
    log = [json.loads(line) for line in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    # Interrupted after step 3 (last checkpoint at step 2), then resumed by a new trainer.
    first = Trainer(config(tmp_path / "b", tiny_checkpoint), show_progress=False)
    first.out.mkdir(parents=True)
    for _ in range(2):
        first.train_step()
    first.save_checkpoint()
    first.train_step()
    resumed = Trainer(config(tmp_path / "b", tiny_checkpoint), show_progress=False)
    resumed.fit()
    assert resumed.step == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    from medcolbert import ColBERT

    saved = ColBERT.from_pretrained(final, device="cpu")
    assert saved.config.doc_maxlen == 64 and torch.equal(saved.linear.weight, straight.model.linear.weight)


def test_distillation_and_hard_negatives_only(tmp_path, tiny_checkpoint):
    scored = [Triplet(t.query, t.pos, t.neg, (3.0,), (1.0,)) for t in TRIPLETS]
    path = write_train_file(tmp_path / "scored.jsonl", scored)
    for loss in ("distill", "both"):
        cfg = config(tmp_path / loss, tiny_checkpoint, train_files=[path], loss=loss, in_batch_negatives=False,
                     max_steps=2)
        metrics = Trainer(cfg, show_progress=False).train_step()
        assert metrics["loss"] > 0 and metrics["triplets_per_s"] > 0


def test_dense_kind_trains_and_saves_a_loadable_bi_encoder(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128))
    folder = tmp_path / "tiny-bert"
    bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = config(tmp_path, str(folder), kind="dense", temperature=0.05, max_steps=2)
    final = Trainer(cfg, show_progress=False).fit()
    from medcolbert.baselines.dense import BiEncoder

    model = BiEncoder.from_pretrained(final, device="cpu")
    vectors = model.encode(["a query", "a longer document text"], is_query=False)
    assert vectors.shape == (2, 32) and torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
    from medcolbert.baselines.dense import DenseIndex

    corpus = {f"d{i}": t.pos[0] for i, t in enumerate(TRIPLETS)}
    for kind in ("flat", "hnsw"):
        index = DenseIndex(model, kind=kind).index(corpus)
        run = index.search({"q": corpus["d3"]}, k=3)
        assert next(iter(run["q"])) == "d3" and len(run["q"]) == 3
        saved = index.save(tmp_path / f"dense-{kind}")
        assert DenseIndex.load(saved, model).search({"q": corpus["d3"]}, k=3) == run
    from medcolbert.errors import IndexFormatError, MedColbertError

    (saved / "vectors.npy").write_bytes(b"truncated")
    with pytest.raises(IndexFormatError, match="vectors.npy"):
        DenseIndex.load(saved, model)
    other = BiEncoder.from_pretrained(final, device="cpu", pooling="cls")
    with pytest.raises(MedColbertError, match="another model"):
        DenseIndex.load(tmp_path / "dense-flat", other)


def test_two_process_training_equals_one_process_with_the_whole_batch(tmp_path, tiny_checkpoint):
    cfg = config(tmp_path / "dist", tiny_checkpoint, max_steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(Path(__file__).with_name("dist_train_worker.py")),
           json.dumps(cfg.to_dict())]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    single = Trainer(config(tmp_path / "single", tiny_checkpoint, max_steps=2), show_progress=False)
    for _ in range(2):
        single.train_step()
    from medcolbert import ColBERT

    dist_model = ColBERT.from_pretrained(tmp_path / "dist" / "run" / "weights", device="cpu")
    a, b = single.model.state_dict(), dist_model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.skipif(not (SHARED_DATA / "medquad").is_dir(), reason="needs ../shared/data")
def test_medical_mix_holds_no_evaluation_query_or_dev_topic(tmp_path):
    from medcolbert.training.mix import build_medical_mix, check_no_leakage, held_out, normalize_query

    mix, report = build_medical_mix(SHARED_DATA, tmp_path / "mix.jsonl", n_negatives=2, show_progress=False)
    written = read_triplets(tmp_path / "mix.jsonl")
    assert len(written) == len(mix) > 15000
    assert set(report["sources"]) == {"medquad-train", "scifact-train", "medical-question-pairs"}
    held = held_out(SHARED_DATA)
    assert not {normalize_query(t.query) for t in written} & held["queries"]
    assert not {normalize_query(t.meta["focus"]) for t in written if "focus" in t.meta} & held["medquad_dev_topics"]
    assert not any(p in held["medquad_dev_answers"] for t in written for p in t.pos + t.neg)
    assert all(len(t.neg) >= 1 for t in written)
    # The check itself refuses a mix that holds a dev query.
    dev_query = next(iter(load_beir(SHARED_DATA / "medquad" / "dev-retrieval", "dev").queries.values()))
    with pytest.raises(DataError, match="evaluation query"):
        check_no_leakage(written[:5] + [Triplet(dev_query, ("x",), ())], SHARED_DATA)


def test_periodic_dev_evaluation_is_logged(tmp_path, tiny_checkpoint, tiny_beir):
    cfg = config(tmp_path, tiny_checkpoint, max_steps=2, eval_data=str(tiny_beir), eval_split="test",
                 eval_every=2, eval_queries=3, eval_docs=2)
    Trainer(cfg, show_progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "dev_ndcg@10" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(0.0 <= r["dev_ndcg@10"] <= 1.0 for r in evals)


def test_source_weights_set_each_sources_share():
    from medcolbert.training.trainer import weight_sources

    data = [Triplet(f"a{i}", ("p",), meta={"source": "big"}) for i in range(90)] + \
           [Triplet(f"b{i}", ("p",), meta={"source": "small"}) for i in range(10)]
    out = weight_sources(data, {"big": 0.5, "small": 0.5}, seed=1)
    counts = {s: sum(t.meta["source"] == s for t in out) for s in ("big", "small")}
    assert counts == {"big": 50, "small": 50}
    # The small source is cycled through whole permutations: every triplet 5 times.
    assert {sum(t.query == f"b{i}" for t in out) for i in range(10)} == {5}
    assert weight_sources(data, {"big": 0.5, "small": 0.5}, seed=1) == out
    with pytest.raises(DataError, match="no weight to sources \\['small'\\]"):
        weight_sources(data, {"big": 1.0}, seed=1)
    with pytest.raises(DataError, match="which no training triplet has"):
        weight_sources(data, {"big": 1.0, "small": 1.0, "other": 1.0}, seed=1)
    with pytest.raises(DataError, match="finite number >= 0"):
        weight_sources(data, {"big": float("nan"), "small": 1.0}, seed=1)


def test_online_teacher_distills_over_the_whole_batch(tmp_path, tiny_checkpoint):
    teacher_dir = tmp_path / "teacher"
    from medcolbert.baselines.dense import BiEncoder

    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    torch.manual_seed(3)
    backbone = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=128))
    BiEncoder(backbone, tok, pooling="mean").save_pretrained(teacher_dir)
    cfg = config(tmp_path, tiny_checkpoint, loss="distill", teacher=str(teacher_dir), max_steps=2)
    trainer = Trainer(cfg, show_progress=False)
    queries, docs, _ = trainer._micro_batch(0)
    t = trainer._teacher_scores(queries, docs)
    # One teacher score for every (query, document of the batch) pair: the same columns the student scores.
    assert t.shape == (len(queries), len(docs)) and torch.isfinite(t).all() and t.abs().max() <= 1.0 + 1e-5
    assert trainer.train_step()["loss"] > 0


def test_dense_index_reuses_known_vectors_without_encoding(tmp_path):
    from medcolbert.baselines.dense import BiEncoder, DenseIndex

    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    torch.manual_seed(4)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128))
    model = BiEncoder(bert, tok, pooling="mean")
    corpus = {"a": "aspirin after infarction", "b": "statins and muscle pain", "c": "flu vaccine"}
    full = DenseIndex(model).index(corpus)
    known = {corpus["a"]: full.vectors[0], corpus["b"]: full.vectors[1]}
    calls = []
    encode = model.encode
    model.encode = lambda texts, **kw: calls.append(list(texts)) or encode(texts, **kw)
    reused = DenseIndex(model).index(corpus, known=known)
    assert calls == [[corpus["c"]]]                      # only the unknown text was encoded
    assert np.allclose(reused.vectors, full.vectors, atol=1e-6)
    assert reused.search({"q": "aspirin"}, k=1) == full.search({"q": "aspirin"}, k=1)


def test_query_length_normalisation_divides_each_querys_scores_by_its_tokens(tmp_path, tiny_checkpoint):
    """score_normalization=query_length: the loss sees MaxSim / (query tokens, [MASK] padding included), so a
    long query's softmax is as sharp as a short one's at the same temperature."""
    long_query = "statins " + " ".join(["muscle pain and weakness after starting the drug"] * 3)
    triplets = [Triplet(long_query if i == 0 else t.query, t.pos, t.neg) for i, t in enumerate(TRIPLETS)]
    path = write_train_file(tmp_path / "long.jsonl", triplets)
    plain = Trainer(config(tmp_path / "plain", tiny_checkpoint, train_files=[path], query_maxlen=32,
                           query_augment_len=8), show_progress=False)
    normed = Trainer(config(tmp_path / "normed", tiny_checkpoint, train_files=[path], query_maxlen=32,
                            query_augment_len=8, score_normalization="query_length"), show_progress=False)
    queries, docs, _ = plain._micro_batch(0)
    with torch.no_grad():
        q, d, keep, _, _, _ = plain.ddp(queries, docs)
        raw, scaled = plain._scores(q, d, keep), normed._scores(q, d, keep)
    tokens = (q.abs().sum(-1) > 0).sum(-1)
    assert tokens.max() > 8 and tokens.min() >= 8      # a long query, and short ones padded to 8 with [MASK]
    assert torch.allclose(scaled * tokens[:, None].float(), raw, atol=1e-5)
    with pytest.raises(ValueError, match="score_normalization"):
        config(tmp_path, tiny_checkpoint, score_normalization="length")


def test_model_miner_ranks_each_source_within_its_own_corpus(monkeypatch):
    """make-mix --miner: one retriever over the union of the corpora; each source keeps only its own documents,
    with their ids as that source's corpus names them."""
    from medcolbert import retrievers
    from medcolbert.retrievers import FunctionRetriever
    from medcolbert.training.mix import _miner

    union_seen = {}

    def by_word_overlap(corpus, arg):
        union_seen.update(corpus)

        def rank(queries, k):
            words = {q: set(t.split()) for q, t in queries.items()}
            return {q: dict(sorted(((d, float(len(w & set(text.split())))) for d, text in corpus.items()),
                                   key=lambda kv: -kv[1])[:k]) for q, w in words.items()}
        return FunctionRetriever(rank)

    monkeypatch.setitem(retrievers._REGISTRY, "overlap-test", by_word_overlap)
    answers = {"a0": "statins cause muscle pain", "a1": "aspirin after infarction"}
    claims = {"0": "statins muscle pain trial", "1": "vitamin d fractures"}
    rank = _miner("overlap-test", {**{f"s{d}": t for d, t in claims.items()}, **answers})
    assert set(union_seen) == {"s0", "s1", "a0", "a1"}
    assert rank(answers, "")(["statins muscle pain"], 2) == [["a0", "a1"]]
    assert rank(claims, "s")(["statins muscle pain"], 2) == [["0", "1"]]


def test_pooled_head_adds_its_own_contrastive_loss_and_is_saved_with_its_weight(tmp_path, tiny_checkpoint):
    """dense_loss_weight > 0: the loss gains InfoNCE over the cosines of the mean-pooled backbone states, and the
    saved model scores with that head at dense_weight."""
    plain = Trainer(config(tmp_path / "plain", tiny_checkpoint), show_progress=False)
    joint = Trainer(config(tmp_path / "joint", tiny_checkpoint, dense_loss_weight=0.5, dense_temperature=0.05,
                           dense_weight=0.7), show_progress=False)
    queries, docs, _ = joint._micro_batch(0)
    plain.model.eval()
    joint.model.eval()   # no dropout, so both passes see the same states
    with torch.no_grad():
        loss_plain, _ = plain._loss(queries, docs, None)
        loss_joint, _ = joint._loss(queries, docs, None)
        # The pooled vectors, computed here from the backbone's own output rather than by the model's method.
        m = joint.model
        pooled = []
        for texts, batch in ((queries, m.tokenizer.tokenize_queries(queries)), (docs, m.tokenizer.tokenize_documents(docs))):
            hidden = m.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            real = (batch.attention_mask.bool() & (batch.input_ids != m.tokenizer.mask_token_id)).float()
            mean = (hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True)
            pooled.append(torch.nn.functional.normalize(mean, dim=-1))
        first = torch.arange(len(queries)) * 2
        expected = 0.5 * contrastive_loss(pooled[0] @ pooled[1].T, first, 0.05)
    assert float(loss_joint - loss_plain) == pytest.approx(float(expected), rel=1e-4)
    final = joint.fit()
    meta = json.loads((final / "artifact.metadata").read_text())
    assert meta["dense_weight"] == 0.7
    from medcolbert import ColBERT

    assert ColBERT.from_pretrained(final).has_dense_head
    assert json.loads((plain.fit() / "artifact.metadata").read_text())["dense_weight"] == 0.0
    with pytest.raises(ValueError, match="kind must be 'colbert'"):
        config(tmp_path, tiny_checkpoint, kind="dense", dense_loss_weight=1.0)


def _by_hand(model, queries: list[str], docs: list[str]) -> tuple[torch.Tensor, ...]:
    """MaxSim written out (best kept document token per query token, summed), with the query vectors and both
    sides' pooled vectors, for checking the trainer's losses against."""
    qb, db = model.tokenizer.tokenize_queries(queries), model.tokenizer.tokenize_documents(docs)
    q, qp = model.forward_queries_pooled(qb)
    d, keep, dp = model.forward_documents_pooled(db)
    sims = torch.einsum("qid,njd->qnij", q, d).masked_fill(~keep.bool()[None, :, None, :], -1e4)
    return sims.max(-1).values.sum(-1), q, qp, dp


def test_combined_loss_trains_the_score_the_saved_model_ranks_by(tmp_path, tiny_checkpoint):
    """combined_loss_weight > 0 adds InfoNCE over MaxSim + dense_weight x (query vectors) x pooled cosine."""
    kwargs = dict(dense_loss_weight=0.5, dense_temperature=0.05, dense_weight=0.7)
    joint = Trainer(config(tmp_path / "joint", tiny_checkpoint, **kwargs), show_progress=False)
    combined = Trainer(config(tmp_path / "combined", tiny_checkpoint, combined_loss_weight=0.3, **kwargs),
                       show_progress=False)
    queries, docs, _ = combined._micro_batch(0)
    joint.model.eval()
    combined.model.eval()
    with torch.no_grad():
        difference = float(combined._loss(queries, docs, None)[0] - joint._loss(queries, docs, None)[0])
        maxsim, q, qp, dp = _by_hand(combined.model, queries, docs)
        count = torch.tensor([[float((row.abs().sum(-1) > 0).sum())] for row in q])
        expected = 0.3 * contrastive_loss(maxsim + 0.7 * count * (qp @ dp.T), torch.arange(len(queries)) * 2, 1.0)
    assert difference == pytest.approx(float(expected), rel=1e-4)
    with pytest.raises(ValueError, match="needs the pooled head"):
        config(tmp_path, tiny_checkpoint, combined_loss_weight=1.0)
    with pytest.raises(ValueError, match="combined_loss_weight must be >= 0"):
        config(tmp_path, tiny_checkpoint, combined_loss_weight=-1.0, dense_loss_weight=1.0)


def test_self_distillation_teaches_maxsim_the_pooled_heads_ranking(tmp_path, tiny_checkpoint):
    """self_distill_weight > 0 adds KL(pooled head's batch scores at dense_temperature || MaxSim's at temperature)."""
    kwargs = dict(dense_loss_weight=0.5, dense_temperature=0.05, temperature=2.0)
    joint = Trainer(config(tmp_path / "joint", tiny_checkpoint, **kwargs), show_progress=False)
    taught = Trainer(config(tmp_path / "taught", tiny_checkpoint, self_distill_weight=0.4, **kwargs),
                     show_progress=False)
    queries, docs, _ = taught._micro_batch(0)
    joint.model.eval()
    taught.model.eval()
    m = taught.model
    with torch.no_grad():
        maxsim, _, qp, dp = _by_hand(m, queries, docs)
        teacher = torch.softmax((qp @ dp.T) / 0.05, dim=-1)
        student = torch.log_softmax(maxsim / 2.0, dim=-1)
        expected = 0.4 * float((teacher * (teacher.log() - student)).sum(-1).mean())
        difference = float(taught._loss(queries, docs, None)[0] - joint._loss(queries, docs, None)[0])
    assert difference == pytest.approx(expected, rel=1e-4)
    # The KL term alone (the same model's loss with and without it) trains the MaxSim side: the projection.
    kl = taught._loss(queries, docs, None)[0]
    taught.cfg.self_distill_weight = 0.0
    kl = kl - taught._loss(queries, docs, None)[0]
    kl.backward()
    assert float(kl.detach()) == pytest.approx(expected, rel=1e-4)
    assert float(m.linear.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="needs the pooled head"):
        config(tmp_path, tiny_checkpoint, self_distill_weight=1.0)
    with pytest.raises(ValueError, match="self_distill_weight must be"):
        config(tmp_path, tiny_checkpoint, self_distill_weight=float("nan"), dense_loss_weight=1.0)


def test_colbert_loss_weight_scales_maxsims_loss_and_zero_trains_the_pooled_head_alone(tmp_path, tiny_checkpoint):
    """colbert_loss_weight w multiplies MaxSim's InfoNCE; at 0 the loss is the pooled head's alone and the
    projection (used by MaxSim only) gets no gradient; 0 without a pooled head is refused."""
    kwargs = dict(dense_loss_weight=0.5, dense_temperature=0.05)
    joint = Trainer(config(tmp_path / "joint", tiny_checkpoint, **kwargs), show_progress=False)
    half = Trainer(config(tmp_path / "half", tiny_checkpoint, colbert_loss_weight=0.25, **kwargs), show_progress=False)
    alone = Trainer(config(tmp_path / "alone", tiny_checkpoint, colbert_loss_weight=0.0, **kwargs), show_progress=False)
    queries, docs, _ = alone._micro_batch(0)
    for t in (joint, half, alone):
        t.model.eval()
    with torch.no_grad():
        maxsim, _, qp, dp = _by_hand(alone.model, queries, docs)
        first = torch.arange(len(queries)) * 2
        maxsim_loss = float(contrastive_loss(maxsim, first, 1.0))
        pooled_loss = 0.5 * float(contrastive_loss(qp @ dp.T, first, 0.05))
        assert float(joint._loss(queries, docs, None)[0]) == pytest.approx(maxsim_loss + pooled_loss, rel=1e-4)
        assert float(half._loss(queries, docs, None)[0]) == pytest.approx(0.25 * maxsim_loss + pooled_loss, rel=1e-4)
    loss = alone._loss(queries, docs, None)[0]
    assert float(loss.detach()) == pytest.approx(pooled_loss, rel=1e-4)
    loss.backward()
    assert alone.model.linear.weight.grad is None or float(alone.model.linear.weight.grad.abs().sum()) == 0
    with pytest.raises(ValueError, match="colbert_loss_weight 0 leaves nothing"):
        config(tmp_path, tiny_checkpoint, colbert_loss_weight=0.0)
    with pytest.raises(ValueError, match="colbert_loss_weight must be"):
        config(tmp_path, tiny_checkpoint, colbert_loss_weight=-1.0, dense_loss_weight=1.0)


def test_cosine_reranker_scores_by_the_single_vector_cosine_from_texts_or_encoded_queries():
    """CosineReranker (the dense kind's dev evaluation and the harness's dense reranking): each candidate's score
    is the cosine of the BiEncoder's vectors, ranked best first; EncodedQueries give it their texts."""
    from medcolbert.baselines.dense import BiEncoder
    from medcolbert.retrievers import CosineReranker, EncodedQueries, in_order

    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    torch.manual_seed(5)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128))
    model = BiEncoder(bert, tok, pooling="mean")
    corpus = {"a": "aspirin after infarction", "b": "statins and muscle pain", "c": "flu vaccine", "d": "insulin"}
    queries = {"q1": "muscle pain statin", "q2": "heart attack aspirin"}
    run = {q: in_order(list(corpus)) for q in queries}
    ranked = CosineReranker(model, corpus, depth=3).rerank(queries, run)
    qv = model.encode(list(queries.values()), is_query=True, show_progress=False)
    dv = model.encode(list(corpus.values())[:3], is_query=False, show_progress=False)
    for i, q in enumerate(queries):
        want = dict(zip(list(corpus)[:3], (torch.as_tensor(dv) @ torch.as_tensor(qv[i])).tolist()))
        assert list(ranked[q]) == sorted(want, key=lambda d: -want[d])   # the top `depth` only, best first
        assert all(abs(ranked[q][d] - want[d]) < 1e-5 for d in want)
    encoded = EncodedQueries(list(queries), list(queries.values()), torch.zeros(2, 4, 8))
    assert CosineReranker(model, corpus, depth=3).rerank(encoded, run) == ranked
