"""Search at scale: build indexes of 1M, 10M, ... token vectors from realistic vectors and measure them.

Vectors: real token vectors (decompressed from an index built from real documents, e.g. MedQuAD with the
default model) resampled whole document by whole document, each vector moved by Gaussian noise (cosine
about 0.95 to its source) and renormalized, so the collection keeps real cluster structure and real
document lengths. For each size the script writes vector shards (fp16, resumable), builds an index from them
in a child process (`Index.build_from_vectors`; wall time and peak RSS from the child's rusage), then, in
another child, searches it with real encoded queries: p50/p95 at k=10 and k=100 (search only: the queries
are encoded once beforehand), candidate counts per PLAID stage (torch engine, which reports every stage),
and the child's peak RSS while searching (residuals are memory-mapped). Records experiments/scale/ and a
log-log plot.

  .venv/bin/medcolbert bench scale --source-index .cache/bench/query-length/index \
      --queries ../shared/data/medquad/dev-retrieval --sizes 1000000 10000000 --work .cache/scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medcolbert.bench import cpu_model

SHARD_VECTORS = 2_000_000
NOISE = 0.029   # per dimension: |noise|^2 = 128 * 0.029^2 = 0.108, so cos(v, v + noise) is about 0.95


def make_shards(source_index: str, size: int, folder: Path, seed: int = 0) -> dict:
    """Shards of about `size` vectors resampled from the source index's documents (skipped when present)."""
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    import torch

    from medcolbert.indexing.index import Index

    index = Index.open(source_index)
    vectors = index.codec.decompress(index.codes, index.residual_rows(np.arange(index.num_embeddings))).numpy()
    doclens, offsets = index.doclens, index.doc_offsets
    rng = np.random.default_rng(seed)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    written, docs, shard = 0, 0, 0
    while written < size:
        want = min(SHARD_VECTORS, size - written)
        picked, total = [], 0
        while total < want:
            d = int(rng.integers(len(doclens)))
            picked.append(d)
            total += int(doclens[d])
        rows = np.concatenate([np.arange(offsets[d], offsets[d + 1]) for d in picked])
        block = vectors[rows] + rng.normal(0.0, NOISE, size=(len(rows), vectors.shape[1])).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        name = f"{shard:04d}"
        np.save(tmp / f"{name}.vectors.npy", block.astype(np.float16), allow_pickle=False)
        np.save(tmp / f"{name}.doclens.npy", doclens[picked].astype(np.int64), allow_pickle=False)
        (tmp / f"{name}.ids.txt").write_text("".join(f"s{docs + i}\n" for i in range(len(picked))))
        written += len(rows)
        docs += len(picked)
        shard += 1
        print(f"  shard {name}: {len(rows)} vectors ({written}/{size})", flush=True)
    info = {"vectors": written, "documents": docs, "shards": shard, "noise_per_dim": NOISE,
            "source_vectors": int(vectors.shape[0]), "source_documents": int(len(doclens))}
    (tmp / "done.json").write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    del torch
    return info


def child(code: str, *args: str) -> tuple[dict, float, int]:
    """Run python code in a child; returns its JSON result (last stdout line), wall seconds, peak RSS bytes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: exact when this child is the largest yet,
    # so the child also reports its own (VmHWM), which is used when present.
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = result.pop("vmhwm_bytes", None) or max(peak, before) * 1024
    return result, wall, int(rss)


# Read by both children: a line of /proc/self/status (VmHWM = peak RSS, RssAnon / RssFile = held now), in bytes.
STATUS = r"""
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key + ':'))
"""

BUILD = STATUS + r"""
import json, sys, time
from medcolbert.indexing.vectors import build_from_vectors
from medcolbert.indexing.index import Index
shards, path, model, fp, centroids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
t = time.perf_counter()
build_from_vectors(path, [shards], model_name=model, model_fingerprint=fp, overwrite=True,
                   num_centroids=centroids or None)
# The build's own peak, read before the index is opened for its statistics (opening loads the codes).
hwm = status("VmHWM")
index = Index.open(path)
s = index.stats()
print(json.dumps({"build_s": time.perf_counter() - t, "bytes_per_vector": s["bytes_per_embedding"],
                  "centroids": s["centroids"], "bytes_total": s["bytes_total"], "documents": s["documents"],
                  "embeddings": s["embeddings"], "build_info": index.manifest["build"], "vmhwm_bytes": hwm}))
"""

SEARCH = STATUS + r"""
import json, sys, time
import numpy as np, torch
from medcolbert.bench import percentiles
from medcolbert.indexing.index import Index
from medcolbert.search.engine import PlaidEngine
from medcolbert.search.plaid import SearchConfig
path, qfile = sys.argv[1], sys.argv[2]
Q = torch.from_numpy(np.load(qfile))
t = time.perf_counter()
index = Index.open(path)
open_s = time.perf_counter() - t
out = {"open_s": open_s, "open_vmhwm_bytes": status("VmHWM")}
for engine_name, compiled, preset, ks in (("compiled", None, "quality", (10, 100)), ("compiled", None, "colbert-ai", (10, 100)),
                                          ("torch", False, "quality", (10,)), ("torch", False, "colbert-ai", (10,))):
    if engine_name == "torch" and "compiled_vmhwm_bytes" not in out:
        # Peak so far: what serving with the compiled stages holds (the torch engine below keeps its own copies).
        out["compiled_vmhwm_bytes"] = status("VmHWM")
        # What the process holds now: its own memory (anonymous) and the index's memory-mapped pages it has
        # read (file-backed: page cache the kernel reclaims under pressure).
        out["compiled_rss_anon_bytes"], out["compiled_rss_file_bytes"] = status("RssAnon"), status("RssFile")
    engine = PlaidEngine(index, "cpu", compiled)
    for k in ks:
        cfg = SearchConfig(preset=preset).resolved(k, len(index))
        times, stats = [], []
        for i in range(Q.shape[0]):
            q = Q[i][Q[i].abs().sum(-1) > 0]
            st = {}
            t0 = time.perf_counter()
            engine.search(q, k, cfg.ncells, cfg.centroid_score_threshold, cfg.ndocs, stats=st)
            times.append((time.perf_counter() - t0) * 1000)
            stats.append(st)
        times = times[3:]   # first calls allocate scratch buffers
        row = {**percentiles(times, (50, 95)),
               "engine": "compiled CPU stages" if engine.kernel is not None else "torch", "preset": preset,
               "knobs": [cfg.ncells, cfg.centroid_score_threshold, cfg.ndocs]}
        for key in stats[0]:
            row["median_" + key] = float(np.median([s[key] for s in stats]))
        out[f"{engine_name}_{preset}_k{k}"] = row
out["vmhwm_bytes"] = status("VmHWM")
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-index", required=True, help="an index of real documents whose vectors are resampled")
    ap.add_argument("--model", default=None, help="the model that made the source index (default: its manifest's)")
    ap.add_argument("--queries", required=True, help="BEIR folder whose queries are encoded for the searches")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--num-queries", type=int, default=100)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--work", default=".cache/scale")
    ap.add_argument("--out", default="experiments/scale/sizes")
    ap.add_argument("--keep-shards", action="store_true", help="keep each size's shards after its build")
    ap.add_argument("--search-again", action="store_true", help="search the recorded sizes' indexes again (keeps their build)")
    ap.add_argument("--num-centroids", type=int, default=0, help="k-means centroids (default 0: the index's default rule)")
    args = ap.parse_args(argv)

    from medcolbert.evaluation.datasets import load_queries
    from medcolbert.indexing.index import Index

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    source = Index.open(args.source_index)
    model = source.load_model(args.model, device="cpu")
    qfile = work / "queries.npy"
    if not qfile.exists():
        queries = load_queries(Path(args.queries) / "queries.jsonl" if Path(args.queries).is_dir() else args.queries)
        texts = [queries[q] for q in sorted(queries)[: args.num_queries]]
        np.save(qfile, model.encode_queries(texts, show_progress=False).numpy(), allow_pickle=False)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    results.update({"cpu": cpu_model(), "source_index": Path(args.source_index).name,
                    "source_documents": len(source), "model": model.name, "queries": args.num_queries,
                    "num_centroids_option": args.num_centroids or "default rule"})
    for size in args.sizes:
        key = str(size)
        if key in results["runs"] and "search" in results["runs"][key]:
            if args.search_again and (work / f"index-{size}" / "manifest.json").exists():
                print(f"{size} vectors: search again", flush=True)
                searched, _, srss = child(SEARCH, str(work / f"index-{size}"), str(qfile))
                results["runs"][key].update({"search": searched, "search_peak_rss_bytes": srss})
                results_path.write_text(json.dumps(results, indent=1) + "\n")
                continue
            print(f"{size}: recorded already")
            continue
        print(f"{size} vectors: shards", flush=True)
        t0 = time.perf_counter()
        shards = work / f"shards-{size}"
        info = make_shards(args.source_index, size, shards)
        shard_s = time.perf_counter() - t0
        print(f"{size} vectors: build", flush=True)
        path = work / f"index-{size}"
        built, wall, rss = child(BUILD, str(shards), str(path), model.name, model.fingerprint(weights_only=True),
                                 str(args.num_centroids))
        print(f"  built in {wall:.0f}s, peak RSS {rss / 2**20:.0f} MiB, {built['bytes_per_vector']:.2f} B/vector", flush=True)
        if not args.keep_shards:
            shutil.rmtree(shards, ignore_errors=True)
        print(f"{size} vectors: search", flush=True)
        searched, swall, srss = child(SEARCH, str(path), str(qfile))
        results["runs"][key] = {"shards": info, "shards_s": shard_s, "build": built, "build_wall_s": wall,
                                "build_peak_rss_bytes": rss, "search": searched, "search_peak_rss_bytes": srss,
                                "index_bytes": built["bytes_total"]}
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(searched, indent=1), flush=True)
    write_report(results, out)


def write_report(results: dict, out: Path) -> None:
    """Markdown table and log-log plot of the recorded sizes."""
    runs = sorted(results["runs"].items(), key=lambda kv: int(kv[0]))
    lines = [f"CPU: {results['cpu']}; vectors resampled from {results['source_index']} ({results['source_documents']} "
             f"documents, model {results['model']}); {results['queries']} real queries, search only (queries encoded "
             "beforehand).", "",
             "| vectors | documents | centroids | build s | build peak RSS MiB | B/vector | index MiB | search peak RSS MiB "
             "(compiled stages only) | held after the compiled searches MiB: own + mapped index pages | preset | "
             "k=10 p50 / p95 ms | k=100 p50 / p95 ms | k=10 candidates / after pruning / exact (torch engine) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in runs:
        s = r["search"]
        for preset in ("quality", "colbert-ai"):
            if f"compiled_{preset}_k10" not in s:
                continue
            c10, c100, t10 = s[f"compiled_{preset}_k10"], s[f"compiled_{preset}_k100"], s[f"torch_{preset}_k10"]
            held = (f"{s['compiled_rss_anon_bytes'] / 2**20:.0f} + {s['compiled_rss_file_bytes'] / 2**20:.0f}"
                    if "compiled_rss_anon_bytes" in s else "-")
            lines.append(f"| {int(key):,} | {r['build']['documents']:,} | {r['build']['centroids']} | {r['build_wall_s']:.0f} | "
                         f"{r['build_peak_rss_bytes'] / 2**20:.0f} | {r['build']['bytes_per_vector']:.2f} | "
                         f"{r['index_bytes'] / 2**20:.0f} | {r['search_peak_rss_bytes'] / 2**20:.0f} "
                         f"({s.get('compiled_vmhwm_bytes', 0) / 2**20:.0f}) | {held} | {preset} | "
                         f"{c10['p50_ms']:.1f} / {c10['p95_ms']:.1f} | {c100['p50_ms']:.1f} / {c100['p95_ms']:.1f} | "
                         f"{t10.get('median_candidates', 0):.0f} / {t10.get('median_after_pruning', t10.get('median_candidates', 0)):.0f}"
                         f" / {t10.get('median_exact_scored', 0):.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    sizes = [int(k) for k, _ in runs]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for preset in ("quality", "colbert-ai"):
        for k in (10, 100):
            key = f"compiled_{preset}_k{k}"
            ax[0].plot(sizes, [r["search"][key]["p50_ms"] for _, r in runs], "o-", label=f"p50, k={k}, {preset}")
            ax[0].plot(sizes, [r["search"][key]["p95_ms"] for _, r in runs], "s--", label=f"p95, k={k}, {preset}")
    ax[1].plot(sizes, [r["build_peak_rss_bytes"] / 2**20 for _, r in runs], "o-", label="build peak RSS")
    ax[1].plot(sizes, [r["search_peak_rss_bytes"] / 2**20 for _, r in runs], "s-", label="search peak RSS")
    ax[1].plot(sizes, [r["index_bytes"] / 2**20 for _, r in runs], "^--", label="index size")
    for a, title, unit in ((ax[0], "search latency (CPU, search only)", "ms"), (ax[1], "memory", "MiB")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("token vectors")
        a.set_ylabel(unit)
        a.set_title(title)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=120)


if __name__ == "__main__":
    main()
