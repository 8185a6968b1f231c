"""The medical training mix: MedQuAD train pairs, SciFact train qrels and Medical Question Pairs, with mined negatives.

Evaluation data never enters it: MedQuAD dev topics and SciFact test queries are checked out by
`check_no_leakage`, which the builder runs before it writes anything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DataError
from ..evaluation.datasets import load_beir
from .data import Triplet, beir_to_triplets, pairs_to_triplets, read_triplets, write_triplets
from .mining import _words, jaccard, mine_negatives
from .triplet_sets import read_triplet_set

MEDQUAD_PAIRS = "medquad/train_pairs.jsonl"
MEDQUAD_DEV = "medquad/dev-retrieval"
SCIFACT = "scifact"
MQP_TRIPLETS = "medical_question_pairs/triplets.jsonl"
CONSUMER_PAIRS = "consumer-health/train_pairs.jsonl"
CONSUMER_DEV = "consumer-health/dev-retrieval"
MEQSUM = "meqsum/questions.jsonl"
MEDIQA = "mediqa-qa"


def normalize_query(text: str) -> str:
    """Lowercased, whitespace-collapsed text: how leakage checks compare queries."""
    return re.sub(r"\s+", " ", text.strip().lower())


def held_out(data_root: str | Path) -> dict[str, set[str]]:
    """The evaluation queries and MedQuAD dev topics that training must not see."""
    root = Path(data_root)
    dev = load_beir(root / MEDQUAD_DEV, "dev")
    test = load_beir(root / SCIFACT, "test")
    judged = [dev.corpus[d] for rels in dev.qrels.values() for d in rels if d in dev.corpus]
    queries = list(dev.queries.values()) + list(test.queries.values())
    answers = {doc.full_text for doc in judged} | {doc.text for doc in judged}
    if (root / CONSUMER_DEV).is_dir():  # the out-of-domain check: its questions and judged answers stay out
        ch = load_beir(root / CONSUMER_DEV, "dev")
        queries += [ch.queries[q] for q in ch.qrels if q in ch.queries]
        ch_judged = [ch.corpus[d] for rels in ch.qrels.values() for d in rels if d in ch.corpus]
        answers |= {doc.full_text for doc in ch_judged} | {doc.text for doc in ch_judged}
    if (root / MEDIQA / "queries.jsonl").is_file():  # the real-question panel's questions stay out too
        from ..evaluation.datasets import load_queries

        queries += list(load_queries(root / MEDIQA / "queries.jsonl").values())
    return {"queries": {normalize_query(q) for q in queries},
            "medquad_dev_topics": {normalize_query(doc.title) for doc in judged},
            "medquad_dev_answers": answers,
            "scifact_test_qids": set(test.qrels)}


def check_no_leakage(triplets: list[Triplet], data_root: str | Path) -> dict[str, int]:
    """Raise a DataError if a held-out query or MedQuAD dev topic is in the triplets; else counts checked."""
    held = held_out(data_root)
    for i, t in enumerate(triplets):
        if normalize_query(t.query) in held["queries"]:
            raise DataError(f"training triplet {i} ({t.meta.get('source')}) is an evaluation query: {t.query[:80]!r}")
        focus = t.meta.get("focus")
        if focus is not None and normalize_query(str(focus)) in held["medquad_dev_topics"]:
            raise DataError(f"training triplet {i} is about MedQuAD dev topic {focus!r}")
        if t.meta.get("source") == "scifact-train" and t.meta.get("qid") in held["scifact_test_qids"]:
            raise DataError(f"training triplet {i} has SciFact test query id {t.meta['qid']}")
        if any(p in held["medquad_dev_answers"] for p in t.pos + t.neg):
            raise DataError(f"training triplet {i} ({t.meta.get('source')}) holds the answer of a MedQuAD dev query")
    return {"triplets_checked": len(triplets), "held_out_queries": len(held["queries"]),
            "held_out_topics": len(held["medquad_dev_topics"])}


def build_medical_mix(data_root: str | Path, output: str | Path | None = None, n_negatives: int = 4,
                      window: tuple[int, int] = (0, 30), seed: int = 0, consumer_health: bool = False,
                      teacher: str | None = None, teacher_max_length: int = 128, miner: str = "bm25",
                      meqsum: bool = False, show_progress: bool | None = None, shared: bool = True,
                      triplet_sets: Sequence[str] = (), triplet_limit: int | None = None) -> tuple[list[Triplet], dict]:
    """The medical mix with mined negatives (BM25 by default; written as JSONL when output is given), and a report.

    consumer_health adds the real consumer questions' train pairs (source 'consumer-health-train');
    teacher names a single-vector model whose cosine scores of each positive and negative are stored as
    pos_scores / neg_scores for distillation. miner is the first stage that ranks the negatives' candidates
    ('bm25', or any registered 'NAME[:ARG]' such as 'dense' or 'dense:PATH'). meqsum adds MeQSum's real
    consumer questions, each paired with its expert summary question (source 'meqsum'; negatives are other
    summaries): question-to-question pairs, so no answer style can be learnt from them. triplet_sets adds
    data sets in the Hugging Face layout (training.triplet_sets: MedEmbed's triplets), at most triplet_limit rows
    each; shared=False leaves out the data-root sources (the held-out checks still read data_root).
    """
    from ..retrievers import check_retriever_spec

    check_retriever_spec(miner)
    if not shared and not triplet_sets:
        raise DataError("nothing to mix: shared=False (--no-shared) needs at least one triplet data set")
    root = Path(data_root)
    held = held_out(root)
    mix: list[Triplet] = []
    # MedQuAD is split by topic upstream, but topic names differ in case between sources and a few answer
    # texts are shared across topics, so pairs whose topic or answer belongs to the dev set are dropped here.
    # Negatives come from the remaining training answers only.
    dropped: Counter = Counter()
    if shared:
        all_pairs = pairs_to_triplets(root / MEDQUAD_PAIRS, source="medquad-train")
        medquad = [t for t in all_pairs
                   if normalize_query(str(t.meta.get("focus", ""))) not in held["medquad_dev_topics"]
                   and not any(p in held["medquad_dev_answers"] for p in t.pos)]
        dropped["medquad-train (dev topic or answer)"] = len(all_pairs) - len(medquad)
        answers = {f"a{i}": text for i, text in enumerate(dict.fromkeys(p for t in medquad for p in t.pos))}
        scifact = load_beir(root / SCIFACT, "train")
        corpus = {d: doc.full_text for d, doc in scifact.corpus.items()}
        consumer: list[Triplet] = []
        if consumer_health:
            consumer = [t for t in pairs_to_triplets(root / CONSUMER_PAIRS, source="consumer-health-train")
                        if not any(p in held["medquad_dev_answers"] for p in t.pos)]
        pool = dict(answers)
        pool.update({f"c{i}": text for i, text in enumerate(dict.fromkeys(p for t in consumer for p in t.pos))})
        rank = _miner(miner, {**{f"s{d}": text for d, text in corpus.items()}, **pool})
        mix += mine_negatives(medquad, answers, rank(answers, ""), n_negatives=n_negatives, window=window,
                              seed=seed, show_progress=show_progress)
        # SciFact train claims: negatives from the whole corpus (the usual BEIR fine-tuning setting).
        mix += mine_negatives(beir_to_triplets(scifact, source="scifact-train"), corpus, rank(corpus, "s"),
                              n_negatives=n_negatives, window=window, seed=seed, show_progress=show_progress)
        # Medical Question Pairs: a doctor-written paraphrase and a doctor-written hard negative each; kept as they are.
        mix += [Triplet(t.query, t.pos, t.neg, meta={"source": "medical-question-pairs", **t.meta})
                for t in read_triplets(root / MQP_TRIPLETS)]
        if consumer_health:
            # Real consumer questions: negatives from MedQuAD train answers plus the other questions' answers,
            # the documents such a question is confused with. Appended last, so the other sources' negatives
            # are the same as in the mix without them (one seeded generator, same order).
            dropped["consumer-health-train (judged dev answer)"] = len(read_triplets(root / CONSUMER_PAIRS)) - len(consumer)
            mix += mine_negatives(consumer, pool, rank(pool, ""), n_negatives=n_negatives, window=window,
                                  seed=seed, show_progress=show_progress)
        if meqsum:
            # Appended after every other source, so their negatives stay as in a mix without MeQSum.
            # MeQSum's own curation dropped near-copies of consumer-health dev; its summaries are short template
            # questions that can equal a MEDIQA question word for word, so near-copies of any held-out question go too.
            held_words = [_words(q) for q in held["queries"]]
            rows = meqsum_triplets(root / MEQSUM)
            pairs = [t for t in rows if not any(near_copy(text, held_words) for text in (t.query, *t.pos))]
            dropped["meqsum (near-copy of an evaluation question)"] = len(rows) - len(pairs)
            summaries = {f"m{i}": text for i, text in enumerate(dict.fromkeys(p for t in pairs for p in t.pos))}
            mix += mine_negatives(pairs, summaries, rank(summaries, ""), n_negatives=n_negatives, window=window,
                                  seed=seed, show_progress=show_progress)
    for spec in triplet_sets:
        # Triplet data sets (MedEmbed's) come with their own negatives; held-out questions are dropped below
        # and the leakage check covers them like every other source.
        rows = read_triplet_set(spec, limit=triplet_limit)
        clean = [t for t in rows if not any(p in held["medquad_dev_answers"] for p in t.pos + t.neg)]
        dropped[f"{spec} (holds a judged dev answer)"] = len(rows) - len(clean)
        mix += clean
    # A few claims occur word for word in more than one split (SciFact has such duplicates).
    kept = [t for t in mix if normalize_query(t.query) not in held["queries"]]
    dropped.update(f"{t.meta.get('source')} (query is an evaluation query)" for t in mix
                   if normalize_query(t.query) in held["queries"])
    report = {"dropped": dict(dropped), "sources": mix_summary(kept), **check_no_leakage(kept, root), "miner": miner}
    if teacher is not None:
        from .teacher import score_triplets

        kept = score_triplets(kept, teacher, max_length=teacher_max_length, show_progress=show_progress)
        report["teacher"] = {"model": teacher, "max_length": teacher_max_length, "score": "cosine"}
    if output is not None:
        write_triplets(output, kept)
    return kept, report


def meqsum_triplets(path: str | Path) -> list[Triplet]:
    """MeQSum's rows as (long consumer question -> expert summary question) triplets without negatives."""
    from ..evaluation.datasets import iter_jsonl, require_str

    out = []
    for line, row in iter_jsonl(path):
        question = require_str(row, "question", path, line)
        summary = require_str(row, "summary", path, line)
        out.append(Triplet(question, (summary,), (), meta={"source": "meqsum", "qid": row.get("id")}))
    if not out:
        raise DataError("no MeQSum rows", path)
    return out


def near_copy(text: str, others: list[frozenset[str]], threshold: float = 0.5) -> bool:
    """Whether a text's words overlap any of `others` (word sets) by more than `threshold` (Jaccard)."""
    words = _words(text)
    return any(jaccard(words, o) > threshold for o in others)


def _miner(spec: str, union: Mapping[str, str]):  # type: ignore[no-untyped-def]
    """(corpus, id prefix) -> mining retriever over that corpus.

    BM25 is indexed per corpus as before (its statistics are the corpus's own). A model-based miner encodes the
    union of all corpora once and keeps each source's own documents, so one encoding pass serves every source.
    """
    if spec == "bm25":
        from ..retrievers import BM25Retriever

        return lambda corpus, prefix: BM25Retriever(corpus)
    from ..retrievers import make_retriever
    from .mining import as_mining_retriever

    ranked = as_mining_retriever(make_retriever(spec, union))

    def for_corpus(corpus: Mapping[str, str], prefix: str):  # type: ignore[no-untyped-def]
        def retrieve(queries, depth):  # type: ignore[no-untyped-def]
            # Over-fetch: the other sources' documents are dropped from the union's ranking.
            lists = ranked(queries, min(len(union), depth * max(2, len(union) // max(1, len(corpus)))))
            out = []
            for ids in lists:
                own = [d[len(prefix):] for d in ids if d.startswith(prefix) and d[len(prefix):] in corpus]
                out.append(own[:depth])
            return out
        return retrieve

    return for_corpus


def mix_summary(triplets: list[Triplet]) -> dict[str, dict[str, float]]:
    """Per source: triplets and mean negatives."""
    counts = Counter(t.meta.get("source", "?") for t in triplets)
    negs = Counter()
    for t in triplets:
        negs[t.meta.get("source", "?")] += len(t.neg)
    return {s: {"triplets": n, "mean_negatives": negs[s] / n} for s, n in counts.items()}
