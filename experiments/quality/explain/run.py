"""What an explanation looks like, and what it costs (issue 44).

An index of mediqa-qa's 908 answers with v5 (MEDIQA 2019 task 3: no upstream licence file; cite Ben Abacha et al.,
ACL-BioNLP 2019), searched one question at a time at k=10, query encoding included:
  1. three validation-set questions (real consumer questions) with their top 3 explained, as the CLI prints them;
  2. the cost: 100 questions searched without explanations, with (every hit of the top 10 explained, in one
     batch), and again without, in turns (a search that does not ask must not pay).

    .venv/bin/python experiments/quality/explain/run.py > experiments/quality/explain/result.txt
"""
import time
from pathlib import Path

import numpy as np

from medcolbert import ColBERT, load_beir
from medcolbert.bench import cpu_model
from medcolbert.explain import explain_texts, render
from medcolbert.indexing.index import Index
from medcolbert.machine import cpu_features
from medcolbert.search.plaid import Searcher

work = Path(".cache/explain/mediqa")
data = load_beir("../shared/data/mediqa-qa", "alexa+validation")
model = ColBERT.from_pretrained("checkpoints/medcolbert-minilm-v5", device="cpu")
corpus = {d: doc.full_text for d, doc in data.corpus.items()}
index = Index.open(work) if (work / "manifest.json").is_file() else \
    Index.build(work, model, corpus, show_progress=False)
searcher = Searcher(index, model)
print(f"CPU: {cpu_model()} [{'+'.join(cpu_features())}]; mediqa-qa, {len(corpus)} answers, v5, k=10\n")

validation = [q for q in data.queries if q not in load_beir("../shared/data/mediqa-qa", "alexa").qrels]
for qid in validation[:3]:
    query = data.queries[qid]
    print(f"## {qid}: {query}")
    hits = searcher.search(query, k=3)
    texts = [index.document(doc)["text"] for doc, _ in hits]
    notes = explain_texts(model, query, texts, [score for _, score in hits])
    for rank, ((doc, score), text, note) in enumerate(zip(hits, texts, notes), start=1):
        grade = data.qrels.get(qid, {}).get(doc, "-")
        print(f"{rank:>3}  {doc}  {score:.4f}  (grade {grade})")
        for line in render(note, text, color=False):
            print("     " + line)
    print()

questions = [data.queries[q] for q in list(data.queries)[:100]]
for q in questions[:5]:   # warm-up
    searcher.search(q, k=10)


def plain() -> list[float]:
    out = []
    for q in questions:
        t0 = time.perf_counter()
        searcher.search(q, k=10)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def explained() -> tuple[list[float], list[float]]:
    out, each = [], []
    for q in questions:
        t0 = time.perf_counter()
        hits = searcher.search(q, k=10)
        t1 = time.perf_counter()
        explain_texts(model, q, [index.document(doc)["text"] for doc, _ in hits], [score for _, score in hits])
        each.append((time.perf_counter() - t1) * 1000)
        out.append((time.perf_counter() - t0) * 1000)
    return out, each


a = plain()
b, per_hit = explained()
c = plain()
print(f"search without explanations: p50 {np.median(a):.2f} ms, again after {np.median(c):.2f} ms")
print(f"search with the top 10 explained: p50 {np.median(b):.2f} ms, of which the explanations p50 "
      f"{np.median(per_hit):.2f} ms (the query and the 10 texts encoded afresh, the texts in one batch)")
