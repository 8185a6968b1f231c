"""What the lexical index adds at the 1M- and 10M-vector scale: time and peak memory of writing one segment's BM25
postings, and their bytes against PLAID's at the scale benchmark's 34 bytes a vector.

The scale benchmark's indexes hold resampled vectors without texts, so texts are resampled here the same way:
MedQuAD's answers (dev-retrieval corpus) drawn with replacement (seed 0) until their word pieces, each document
capped at doc_maxlen 300 as the index caps it, reach the vector count. Each size runs in a fresh process (its peak
RSS is its own); the texts are written as a segment's memory-mapped text store first, as the build does, and the
postings made from it by lexical.write_postings, the function build, update and compact call.

    .venv/bin/python experiments/quality/hybrid/postings-scale/run.py > experiments/quality/hybrid/postings-scale/result.txt
"""
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BYTES_PER_VECTOR = 34   # PLAID at the scale benchmark's settings (README, experiments/scale/)


def child(vectors: int) -> dict:
    import numpy as np

    from medcolbert import load_beir
    from medcolbert.indexing.storage import StoredTexts, encode_store
    from medcolbert.lexical import write_postings
    from medcolbert.modeling.checkpoint import default_model_path
    from transformers import AutoTokenizer

    corpus = load_beir("../shared/data/medquad/dev-retrieval", "dev").corpus
    texts = [d.full_text for d in corpus.values()]
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    lens = np.minimum(np.array([len(x) for x in tok(texts, add_special_tokens=True)["input_ids"]]), 300)
    rng = np.random.default_rng(0)
    picks = []
    total = 0
    while total < vectors:
        i = rng.integers(len(texts), size=4096)
        picks.append(i)
        total += int(lens[i].sum())
    picks = np.concatenate(picks)
    picks = picks[:int(np.searchsorted(np.cumsum(lens[picks]), vectors)) + 1]
    with tempfile.TemporaryDirectory() as tmp:
        store = encode_store([texts[i] for i in picks.tolist()], None)
        root = Path(tmp)
        np.save(root / "texts.npy", store["texts"])
        np.save(root / "text_offsets.npy", store["text_offsets"])
        del store
        mapped = {"texts": np.load(root / "texts.npy", mmap_mode="r"),
                  "text_offsets": np.load(root / "text_offsets.npy", mmap_mode="r")}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        files = write_postings(root, "seg", StoredTexts(mapped))
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        size = sum(f["bytes"] for f in files.values())
    return {"vectors": int(lens[picks].sum()), "documents": len(picks), "seconds": round(seconds, 1),
            "peak_rss_mb_before": round(before / 1024), "peak_rss_mb_after": round(peak / 1024),
            "postings_mb": round(size / 2**20, 1), "bytes_per_document": round(size / len(picks), 1),
            "share_of_folder": round(size / (size + BYTES_PER_VECTOR * int(lens[picks].sum())), 3)}


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(child(int(sys.argv[1]))))
        sys.exit()
    from medcolbert.machine import cpu_id

    print(f"CPU: {cpu_id()}")
    for n in (1_000_000, 10_000_000):
        out = subprocess.run([sys.executable, __file__, str(n)], capture_output=True, text=True, check=True)
        print(out.stdout.strip(), flush=True)
