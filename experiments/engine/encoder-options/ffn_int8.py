"""Which of the query encoder's Linear layers can go int8 (dynamic quantization) without changing what it finds: the
question behind issue 42's AVX2 target, where float32 query encoding is 78-80% of a query. Earlier, all of the
backbone's Linear layers in int8 gave a lowest query-vector cosine of 0.80 to float32 (options.txt), refused.

Variants of v5: every Linear layer in int8; only the feed-forward layers (each block's intermediate and output
dense); the feed-forward layers of the middle blocks only (the first and last block kept in float32). For each:
the lowest and mean cosine of any query vector with float32 eager encoding (200 MedQuAD dev and 175 consumer-health
dev questions), the overlap@10 of PLAID search over the MedQuAD-1k index (bench search's, 200 questions) with the
float32 encoder's top 10, and p50 ms of encoding one query at a time on this CPU. The speeds are this CPU's (int8
through fbgemm picks its own instructions: VNNI here), not an AVX2 figure; the quality columns hold anywhere.

    .venv/bin/python experiments/engine/encoder-options/ffn_int8.py > experiments/engine/encoder-options/ffn_int8.txt
"""
import copy
import re
import warnings

import torch

from medcolbert import load_beir
from medcolbert.bench import cpu_model, percentiles, time_each
from medcolbert.indexing.index import Index
from medcolbert.machine import cpu_features
from medcolbert.modeling.encoder import ColBERT, encode_queries_pooled
from medcolbert.search.plaid import Searcher

warnings.simplefilter("ignore")
model = ColBERT.from_pretrained(None, device="cpu")
medquad = load_beir("../shared/data/medquad/dev-retrieval", "dev")
consumer = load_beir("../shared/data/consumer-health/dev-retrieval", "dev")
texts = [medquad.queries[q] for q in sorted(medquad.qrels)][:200] + [consumer.queries[q] for q in sorted(consumer.qrels)]
reference, ref_pooled = encode_queries_pooled(model, texts, show_progress=False)
keep = reference.abs().sum(-1) > 0
index = Index.open(".cache/bench/medquad-1k/medcolbert-nbits2")
searched = list(range(200))


def top10(m: ColBERT) -> list[list[str]]:
    """PLAID's top 10 of the first 200 (MedQuAD) questions with model m's query vectors."""
    Q, P = encode_queries_pooled(m, [texts[i] for i in searched], show_progress=False)
    # Float32 eager on the query side for every variant (trace_queries=False: no precision choice in between).
    s = Searcher(index, m, trace_queries=False)
    return [[d for d, _, _ in s.search_hits(Q[i], 10, None if P is None else P[i])] for i in range(len(searched))]


base_top = top10(model)


def quantized(pattern: str) -> ColBERT:
    """v5 with the backbone's Linear layers whose names match `pattern` in dynamic int8."""
    m = copy.deepcopy(model)
    names = {n for n, mod in m.backbone.named_modules() if isinstance(mod, torch.nn.Linear) and re.search(pattern, n)}
    m.backbone = torch.ao.quantization.quantize_dynamic(m.backbone, names, dtype=torch.qint8)
    m.n_int8 = len(names)
    # The index was built by the float model; only the query side is quantized here, so the variant answers to
    # the float model's fingerprint (the packed int8 weights cannot be hashed as tensors).
    m.fingerprint = lambda weights_only=False: model.fingerprint(weights_only)
    return m


def report(name: str, m: ColBERT) -> None:
    """Cosines, search overlap and speed of one variant."""
    got = encode_queries_pooled(m, texts, show_progress=False)[0]
    cos = torch.nn.functional.cosine_similarity(reference[keep], got[keep], dim=-1)
    tops = top10(m)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(tops, base_top)) / (10 * len(tops))
    p = percentiles(time_each(lambda t: encode_queries_pooled(m, [t], show_progress=False), texts[:200]), (50, 95))
    print(f"{name:46s} int8 layers {getattr(m, 'n_int8', 0):2d}  cosine min {float(cos.min()):.4f} "
          f"mean {float(cos.mean()):.4f}  overlap@10 {overlap:.4f}  p50 {p['p50_ms']:.2f} ms")


print(f"CPU: {cpu_model()} [{'+'.join(cpu_features())}], {torch.get_num_threads()} threads, torch {torch.__version__}; "
      f"{len(texts)} questions, search overlap over {len(searched)}")
report("float32 eager (the reference)", model)
report("int8: every Linear of the backbone", quantized(r"."))
report("int8: feed-forward layers only", quantized(r"layer\.\d+\.(intermediate|output)\.dense$"))
report("int8: feed-forward of blocks 1-4 only", quantized(r"layer\.[1-4]\.(intermediate|output)\.dense$"))
report("int8: attention projections only", quantized(r"attention\.(self\.(query|key|value)|output\.dense)$"))
