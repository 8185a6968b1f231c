"""A shard set against one index at 1M and 10M token vectors (issue 43, item 2): PLAID's overlap@10 with exact MaxSim.

The collections are issue 30's scale vectors (medcolbert/bench/scale.py's `make_shards`: real MedQuAD token vectors of
v5, resampled document by document and moved by noise). For each size: one index, and shard sets of N = 2, 4, 8
sharing one codec trained on a sample of the whole collection (`build_set`), and, for the sizes in --own-sizes,
N shards that each train their own codec (the earlier way). The reference is exact MaxSim over the uncompressed
(float16) vectors, computed by brute force; every system's default-preset top 10 is compared with it. MaxSim only:
the resampled documents have no pooled vectors, so v5's pooled term takes no part. Quality only: the builds ran
while other work shared the two cores, so no timing here is a benchmark figure.

  .venv/bin/medcolbert bench shards-scale --out experiments/scale/shard-set-scale
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


EXACT_INDEX = "overlap@10 with one index's exact search"


def exact_top(vectors: np.ndarray, doclens: np.ndarray, ids: list[str], Q: np.ndarray, k: int = 10,
              block: int = 120_000, batch: int = 24) -> list[list[str]]:
    """Exact MaxSim top k of each query over documents given as concatenated vectors, by brute force in blocks
    aligned to document boundaries (float32 products of the stored float16 vectors)."""
    import torch
    from tqdm import tqdm

    offsets = np.concatenate([[0], np.cumsum(doclens)])
    n_q, L, dim = Q.shape
    scores = np.empty((len(doclens), n_q), dtype=np.float32)
    doc = 0
    bar = tqdm(total=int(offsets[-1]), unit="vec", desc="exact MaxSim", mininterval=10)
    while doc < len(doclens):
        end = int(np.searchsorted(offsets, offsets[doc] + block, side="right")) - 1
        end = max(end, doc + 1)
        a, b = int(offsets[doc]), int(offsets[end])
        D = torch.from_numpy(np.asarray(vectors[a:b], dtype=np.float32))
        seg = torch.repeat_interleave(torch.arange(end - doc), torch.from_numpy(doclens[doc:end].astype(np.int64)))
        for q0 in range(0, n_q, batch):
            qs = torch.from_numpy(Q[q0:q0 + batch].reshape(-1, dim))
            sims = D @ qs.T                                        # [vectors, batch * L]
            best = torch.full((end - doc, sims.shape[1]), -2.0).scatter_reduce(
                0, seg[:, None].expand_as(sims), sims, reduce="amax", include_self=True)
            scores[doc:end, q0:q0 + batch] = best.view(end - doc, -1, L).sum(-1).numpy()
        bar.update(b - a)
        doc = end
    bar.close()
    top = np.argsort(-scores, axis=0, kind="stable")[:k].T
    return [[ids[i] for i in row] for row in top]


def main(argv: list[str] | None = None) -> None:
    """Build, search, compare, write."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-index", default=".cache/shards/medquad/one",
                    help="an index of real documents whose vectors are resampled (default: MedQuAD with v5)")
    ap.add_argument("--queries", default="../shared/data/medquad/dev-retrieval")
    ap.add_argument("--num-queries", type=int, default=300)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--shards", default="2,4,8")
    ap.add_argument("--own-sizes", default="1000000,10000000", help="sizes that also get own-codec shards")
    ap.add_argument("--own-shards", default="8", help="shard counts of the own-codec comparison")
    ap.add_argument("--exact-index-max", type=int, default=1_000_000,
                    help="sizes up to this also get exact search over the one index's compressed vectors")
    ap.add_argument("--work", default=".cache/shards/scale")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch

    from medcolbert.bench.scale import make_shards

    from medcolbert.bench import cpu_model, overlap_at_k, write_results
    from medcolbert.evaluation.datasets import load_queries
    from medcolbert.indexing.builder import build_index
    from medcolbert.indexing.index import Index
    from medcolbert.indexing.shards import build_set, shard_of
    from medcolbert.indexing.vectors import PrecomputedEncoder, build_from_vectors, read_shards
    from medcolbert.machine import cpu_features
    from medcolbert.search.plaid import SearchConfig, Searcher
    from medcolbert.search.sharded import ShardedSearcher

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    source = Index.open(args.source_index)
    model = source.load_model(None, device="cpu")
    fp = model.fingerprint(weights_only=True)
    queries = load_queries(Path(args.queries) / "queries.jsonl")
    texts = [queries[q] for q in sorted(queries)[:args.num_queries]]
    Q = model.encode_queries(texts, show_progress=False)
    Qn = Q.numpy()
    state_path = out / "state.json"   # finished sizes, so that an interrupted run resumes where it was
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    out.mkdir(parents=True, exist_ok=True)

    def run_of(searcher) -> list[list[str]]:  # type: ignore[no-untyped-def]
        return [[d for d, _, _ in searcher.search_hits(Q[i], 10)] for i in range(len(texts))]

    def overlap(a: list[list[str]], b: list[list[str]]) -> float:
        return round(overlap_at_k(a, b), 4)

    for size in [int(x) for x in args.sizes.split(",") if x]:
        key = str(size)
        if key in state:
            print(f"{size}: recorded already", flush=True)
            continue
        folder = work / f"vectors-{size}"
        info = make_shards(args.source_index, size, folder)
        shards = read_shards([str(folder)])
        encoder = PrecomputedEncoder(shards, model.name, fp)
        corpus = encoder.corpus()
        ids = [d for s in shards for d in s.ids]
        doclens = np.concatenate([s.doclens for s in shards])
        vectors = shards[0].vectors if len(shards) == 1 else np.concatenate([s.vectors for s in shards])
        ref_file = work / f"exact-{size}.json"
        if not ref_file.exists():
            t0 = time.perf_counter()
            ref = exact_top(vectors, doclens, ids, Qn)
            ref_file.write_text(json.dumps({"seconds": time.perf_counter() - t0, "top": ref}))
        ref = json.loads(ref_file.read_text())["top"]
        rows = []
        one_path = work / f"one-{size}"
        t0 = time.perf_counter()
        if not (one_path / "manifest.json").exists():
            build_from_vectors(one_path, shards, model_name=model.name, model_fingerprint=fp, overwrite=True)
        one = Index.open(one_path)
        runs = {"one index": run_of(Searcher(one, model))}
        rows.append({"system": "one index", "shards": 1, "codec": "own", "build_s": round(time.perf_counter() - t0),
                     "centroids": int(one.codec.centroids.shape[0])})
        if size <= args.exact_index_max:
            # The codec's own ceiling: exact MaxSim over the one index's compressed vectors (a scan per query); also
            # the reference scripts/bench shards uses, so both references are reported here.
            runs["one index, exact search"] = run_of(Searcher(one, model, SearchConfig(exact=True)))
            rows.append({"system": "one index, exact search", "shards": 1, "codec": "own", "build_s": 0,
                         "centroids": int(one.codec.centroids.shape[0])})
        for n in [int(x) for x in args.shards.split(",") if x]:
            path = work / f"set-{size}-{n}"
            t0 = time.perf_counter()
            if not (path / "shards.json").is_file():
                build_set(path, encoder, corpus, shards=n, store_documents=False, show_progress=True, overwrite=True)
            searcher = ShardedSearcher.from_set(path, model)
            runs[f"set-{n}"] = run_of(searcher)
            rows.append({"system": "shard set, one codec", "shards": n, "codec": "shared",
                         "build_s": round(time.perf_counter() - t0),
                         "centroids": int(searcher.searchers[0].index.codec.centroids.shape[0])})
            searcher.close()
        if key in args.own_sizes.split(","):
            for n in [int(x) for x in args.own_shards.split(",") if x]:
                own = []
                t0 = time.perf_counter()
                for s in range(n):
                    target = work / f"own-{size}-{n}" / f"shard-{s}"
                    if not (target / "manifest.json").exists():
                        part = [(d, t) for d, t in corpus if shard_of(d, n) == s]
                        build_index(target, encoder, part, store_documents=False, overwrite=True, show_progress=True)
                    own.append(Index.open(target))
                searcher = ShardedSearcher(own, model)
                runs[f"own-{n}"] = run_of(searcher)
                rows.append({"system": "shards, each its own codec", "shards": n, "codec": "own",
                             "build_s": round(time.perf_counter() - t0),
                             "centroids": int(own[0].codec.centroids.shape[0])})
                searcher.close()
        exact_index = runs.get("one index, exact search")
        for row, run in zip(rows, runs.values()):
            row["overlap@10"] = overlap(run, ref)
            if exact_index is not None:
                row[EXACT_INDEX] = overlap(run, exact_index)
            print(row, flush=True)
        state[key] = {"vectors": info["vectors"], "documents": info["documents"], "rows": rows,
                      "exact_s": round(json.loads(ref_file.read_text())["seconds"])}
        state_path.write_text(json.dumps(state, indent=1) + "\n")
        del vectors

    cpu = f"{cpu_model()} [{'+'.join(cpu_features())}], torch threads {torch.get_num_threads()}"
    lines = ["# A shard set against one index at scale: PLAID (default preset, k=10) against exact MaxSim", "",
             f"CPU: {cpu}. {len(texts)} MedQuAD dev-retrieval questions encoded by {model.name}; documents resampled "
             f"from {args.source_index} (medcolbert/bench/scale.py's vectors); MaxSim only. Build seconds were "
             "taken while other work shared the cores: not benchmark figures (single digits: a build reused from an "
             "earlier run).", "",
             "Two references: exact MaxSim over the uncompressed (float16) vectors, and (1M) exact search over the one "
             "index's compressed vectors, the reference `medcolbert bench shards` uses.", "",
             "| vectors | documents | system | shards | codec | centroids per shard | overlap@10 with exact (float16) "
             "| overlap@10 with one index's exact search | build s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, entry in sorted(state.items(), key=lambda kv: int(kv[0])):
        for r in entry["rows"]:
            lines.append(f"| {int(key):,} | {entry['documents']:,} | {r['system']} | {r['shards']} | {r['codec']} | "
                         f"{r['centroids']:,} | {r['overlap@10']} | {r.get(EXACT_INDEX, '')} | {r['build_s']} |")
    lines += ["", "Command: `.venv/bin/medcolbert bench shards-scale --out " + args.out + "`"]
    write_results(out / "results.json", {"cpu": cpu, "queries": len(texts), "sizes": state}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
