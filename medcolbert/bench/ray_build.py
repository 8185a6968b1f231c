"""The Ray build against the single-process build on this machine: wall time, equality of the arrays and of the
top-10 for real queries.

Builds the first N documents of a BEIR corpus twice with the default model (same chunk size, centroid count
and seed): `backend="local"` with all torch threads, then `backend="ray"` on a local Ray cluster of W
one-thread workers (Ray's start-up included in its time). Records OUT.json / OUT.md with lscpu's model name:

  .venv/bin/medcolbert bench ray-build --data ../shared/data/medquad/dev-retrieval --split dev --docs 1000 \
      --workers 2 --out experiments/scale/ray-build/medquad-1k
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from medcolbert.bench import cpu_model as cpu_name
from medcolbert.bench import write_results


def main(argv: list[str] | None = None) -> None:
    """Build twice, compare, record."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=100)
    ap.add_argument("--model", default=None, help="default: the released default model")
    ap.add_argument("--out", required=True, help="output path without suffix")
    args = ap.parse_args(argv)

    from medcolbert import ColBERT
    from medcolbert.evaluation.datasets import load_beir
    from medcolbert.indexing.index import Index
    from medcolbert.search.plaid import Searcher

    data = load_beir(args.data, args.split)
    ids = sorted(data.corpus)[: args.docs]
    corpus = {d: data.corpus[d].full_text for d in ids}
    queries = [data.queries[q] for q in sorted(data.queries)[: args.queries]]
    model = ColBERT.from_pretrained(args.model)
    threads = torch.get_num_threads()
    common = dict(chunk_size=args.chunk_size, num_centroids=None, seed=0, show_progress=True)
    times, indexes = {}, {}
    with tempfile.TemporaryDirectory(dir=".cache") as tmp:
        for backend in ("local", "ray"):
            extra = {"backend": "ray", "workers": args.workers} if backend == "ray" else {}
            t0 = time.perf_counter()
            indexes[backend] = Index.build(Path(tmp) / backend, model, corpus, **common, **extra)
            times[backend] = time.perf_counter() - t0
        local, ray_built = indexes["local"], indexes["ray"]
        same_arrays = (local.doc_ids == ray_built.doc_ids and np.array_equal(local.codes, ray_built.codes)
                       and all(np.array_equal(np.asarray(a), np.asarray(b))
                               for a, b in zip(local._residual_parts, ray_built._residual_parts)))
        a, b = Searcher(local, model), Searcher(ray_built, model)
        same_top10 = sum(a.search(q, k=10) == b.search(q, k=10) for q in queries)
        build_info = {k: ray_built.manifest["build"].get(k) for k in ("backend", "timings")}
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"cpu": cpu_name(), "documents": len(corpus), "chunk_size": args.chunk_size, "torch_threads_local": threads,
              "ray_workers": args.workers, "wall_s": times, "ray_over_local": times["ray"] / times["local"],
              "identical_arrays": bool(same_arrays), "queries": len(queries), "identical_top10": int(same_top10),
              "ray_build": build_info, "model": model.name if hasattr(model, "name") else str(model.source)}
    out = Path(args.out)
    write_results(out.with_suffix(".json"), result, 
        f"Ray build vs single-process build on {result['cpu']}: {len(corpus)} documents of {Path(args.data).name}, "
        f"chunks of {args.chunk_size}, default model.\n\n"
        "| build | wall s |\n|---|---|\n"
        f"| single process ({threads} torch threads) | {times['local']:.1f} |\n"
        f"| Ray, local cluster of {args.workers} one-thread workers (start-up included) | {times['ray']:.1f} |\n\n"
        f"Ray / single process: {result['ray_over_local']:.2f}. Identical codes, residuals and ids: "
        f"{result['identical_arrays']}; identical top-10 for {same_top10} of {len(queries)} queries.")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
