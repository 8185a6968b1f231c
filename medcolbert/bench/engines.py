"""Late-interaction engines side by side: medcolbert, colbert-ai 0.2.22, fast-plaid 1.7 and xtr-warp-rs 2.1.

Every engine is fed the same token vectors where it takes embeddings (fast-plaid, xtr-warp-rs and medcolbert
build from the vectors medcolbert's model encoded once; colbert-ai indexes the text with the same checkpoint,
its only way in, and searches with the same query vectors through `dense_search`). Each engine runs in a
process of its own (the peers in their own virtual environments under .cache, since both pin torch 2.11) that
loads its index once; the rounds alternate between the engines (A B C D, B C D A, ...), so that the machine's
drift is spread over all of them. Per engine: index build time and bytes per vector; search-only p50 / p95 at
k=10 and k=100 (one query at a time, queries encoded beforehand); with encoding, for the engines that encode
(medcolbert, colbert-ai); and the quality of the very results timed (nDCG@10 with judgements, else overlap@10
with exact MaxSim over medcolbert's index). Raw output and the CPU's model name go to OUT/results.json, a
table to OUT/results.md.

  .venv/bin/medcolbert bench engines --data ../shared/data/scifact --split test --out experiments/engine/cpu-intel-xeon-processor/scifact
  .venv/bin/medcolbert bench engines --from-index .cache/scale-v5/index-1000000 \\
      --queries-npy .cache/scale-v5/queries.npy --out experiments/engine/cpu-intel-xeon-processor/scale-1m

The peers' environments are made on first use (scripts/colbert_ai_venv.sh, and `make peers-venv`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a file (a peer's worker, in a venv without medcolbert): this folder's modules must not shadow
    # packages of the same name.
    sys.path.pop(0)

import numpy as np  # noqa: E402

ENGINES = ("medcolbert", "medcolbert-maxsim", "medcolbert-distilled", "colbert-ai", "fast-plaid", "xtr-warp")
PEERS_VENV = Path(".cache/peers-venv")
# How main tells the medcolbert-distilled worker which query encoder to load (--query-encoder).
QUERY_ENCODER_ENV = "MEDCOLBERT_BENCH_QUERY_ENCODER"
WARMUP = 5


# ---------------------------------------------------------------------------------------------- worker side
# A worker is this file run with --worker NAME inside the engine's environment. It imports only numpy, torch and
# its engine, reads one JSON request per line on stdin and answers one JSON line on stdout.

def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _doc_tensors(work: Path):  # type: ignore[no-untyped-def]
    """The shared vectors as one float32 tensor per document."""
    import torch

    vectors = np.load(work / "vectors" / "0000.vectors.npy", mmap_mode="r")
    lens = np.load(work / "vectors" / "0000.doclens.npy")
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return [torch.from_numpy(np.asarray(vectors[s:s + n], dtype=np.float32)) for s, n in zip(starts, lens)]


class _Engine:
    """One engine's build and search over the shared vectors in WORK."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.queries = np.load(work / "queries.npy")
        self.index_dir = work / f"index-{self.name}"

    name = ""
    encodes = False

    def build(self, nbits: int) -> dict:
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def search(self, i: int, k: int) -> list[tuple[int, float]]:
        raise NotImplementedError

    def search_text(self, text: str, k: int) -> list[tuple[int, float]]:
        raise NotImplementedError

    def reset(self) -> None:
        """Before each batch of searches: forget knobs an engine set for an earlier k."""

    def built(self) -> Path | None:
        """The folder of an index built before in WORK, if any."""
        return self.index_dir if self.index_dir.is_dir() and any(self.index_dir.iterdir()) else None


class _FastPlaid(_Engine):
    name = "fast-plaid"

    def build(self, nbits: int) -> dict:
        from fast_plaid import search

        shutil.rmtree(self.index_dir, ignore_errors=True)
        docs = _doc_tensors(self.work)
        t0 = time.perf_counter()
        search.FastPlaid(index=str(self.index_dir), device="cpu").create(documents_embeddings=docs, nbits=nbits)
        return {"build_s": time.perf_counter() - t0, "bytes": _dir_bytes(self.index_dir),
                "settings": f"nbits {nbits}, defaults otherwise (n_ivf_probe 8, n_full_scores 4096)"}

    def load(self) -> None:
        from fast_plaid import search

        self.engine = search.FastPlaid(index=str(self.index_dir), device="cpu")

    def search(self, i: int, k: int) -> list[tuple[int, float]]:
        import torch

        got = self.engine.search(torch.from_numpy(self.queries[i:i + 1]), top_k=k, show_progress=False)
        return [(int(d), float(s)) for d, s in got[0]]


class _XtrWarp(_Engine):
    name = "xtr-warp"

    def build(self, nbits: int) -> dict:
        from xtr_warp import XTRWarp

        shutil.rmtree(self.index_dir, ignore_errors=True)
        docs = _doc_tensors(self.work)
        t0 = time.perf_counter()
        XTRWarp(index=str(self.index_dir)).create(docs, device="cpu", nbits=nbits, show_progress=False)
        return {"build_s": time.perf_counter() - t0, "bytes": _dir_bytes(self.index_dir),
                "settings": f"nbits {nbits}, search defaults, num_threads 1 (its latency setting)"}

    def load(self) -> None:
        from xtr_warp import XTRWarp

        self.engine = XTRWarp(index=str(self.index_dir)).load(device="cpu")

    def search(self, i: int, k: int) -> list[tuple[int, float]]:
        import torch

        got = self.engine.search(torch.from_numpy(self.queries[i]), top_k=k, num_threads=1, show_progress=False)
        return [(int(d), float(s)) for d, s in got[0]]


class _ColbertAi(_Engine):
    name = "colbert-ai"
    encodes = True

    def _config(self, nbits: int = 2):  # type: ignore[no-untyped-def]
        from colbert.infra import ColBERTConfig

        meta = json.loads((self.work / "meta.json").read_text())
        return ColBERTConfig(nbits=nbits, doc_maxlen=meta["doc_maxlen"], query_maxlen=self.queries.shape[1],
                             checkpoint=str((self.work / "checkpoint").resolve()), gpus=0, kmeans_niters=4)

    def _run(self):  # type: ignore[no-untyped-def]
        from colbert.infra import Run, RunConfig

        return Run().context(RunConfig(nranks=1, experiment="engines", root=str((self.work / "colbert-ai").resolve())))

    def build(self, nbits: int) -> dict:
        from colbert import Indexer

        with self._run():
            t0 = time.perf_counter()
            path = Indexer(checkpoint=str((self.work / "checkpoint").resolve()), config=self._config(nbits)).index(
                name="engines", collection=str((self.work / "collection.tsv").resolve()), overwrite=True)
            took = time.perf_counter() - t0
        return {"build_s": took, "bytes": _dir_bytes(Path(path)),
                "settings": f"nbits {nbits}, defaults (encodes the text itself; about 20 s of it is a fixed sleep)"}

    def load(self) -> None:
        from colbert import Searcher

        with self._run():
            self.engine = Searcher(index="engines", config=self._config(),
                                   collection=str((self.work / "collection.tsv").resolve()))
        self.texts = json.loads((self.work / "meta.json").read_text())["query_texts"]

    def built(self) -> Path | None:
        """colbert-ai's index folder, if an earlier run made it."""
        path = self.work / "colbert-ai" / "engines" / "indexes" / "engines"
        return path if (path / "metadata.json").is_file() else None

    def reset(self) -> None:
        """colbert-ai writes the knobs of the first k it serves into its config and keeps them for later k's:
        clear them, so that each k gets its own defaults."""
        self.engine.config.configure(ncells=None, centroid_score_threshold=None, ndocs=None)

    def search(self, i: int, k: int) -> list[tuple[int, float]]:
        import torch

        pids, _, scores = self.engine.dense_search(torch.from_numpy(self.queries[i:i + 1]), k=k)
        return [(int(p), float(s)) for p, s in zip(pids, scores)]

    def search_text(self, text: str, k: int) -> list[tuple[int, float]]:
        pids, _, scores = self.engine.search(text, k=k)
        return [(int(p), float(s)) for p, s in zip(pids, scores)]


class _Medcolbert(_Engine):
    name = "medcolbert"
    encodes = True

    def build(self, nbits: int) -> dict:
        from medcolbert.indexing.index import Index

        meta = json.loads((self.work / "meta.json").read_text())
        shutil.rmtree(self.index_dir, ignore_errors=True)
        t0 = time.perf_counter()
        index = Index.build_from_vectors(self.index_dir, sorted((self.work / "vectors").glob("*.vectors.npy")),
                                         meta["model_name"], model_fingerprint=meta.get("model_fingerprint"),
                                         nbits=nbits, show_progress=False)
        return {"build_s": time.perf_counter() - t0, "bytes": _dir_bytes(self.index_dir),
                "settings": f"nbits {nbits}, quality preset; exact stage {self._choice(index)}"}

    @staticmethod
    def _choice(index) -> str:  # type: ignore[no-untyped-def]
        from medcolbert.search.engine import PlaidEngine

        return PlaidEngine(index, "cpu").exact_stage

    def load(self) -> None:
        import torch

        from medcolbert.indexing.index import Index
        from medcolbert.modeling.encoder import ColBERT
        from medcolbert.search.plaid import Searcher

        meta = json.loads((self.work / "meta.json").read_text())
        self.model = ColBERT.from_pretrained(meta.get("model_source"), device="cpu", doc_maxlen=meta["doc_maxlen"],
                                             **self.model_options())
        self.engine = Searcher(Index.open(self.index_dir), self.model)
        pooled = self.work / "queries_pooled.npy"
        # (A model without the pooled term, as medcolbert-maxsim's, searches without pooled vectors.)
        self.pooled = torch.from_numpy(np.load(pooled)) if pooled.is_file() and self.engine.hybrid else None
        self.ids = {d: i for i, d in enumerate(self.engine.index.doc_ids)}

    def model_options(self) -> dict:
        """How this variant loads the model (the scoring or query encoder it changes)."""
        return {}

    def search(self, i: int, k: int) -> list[tuple[int, float]]:
        import torch

        hits = self.engine.search_encoded(torch.from_numpy(self.queries[i]), k,
                                          q_pooled=None if self.pooled is None else self.pooled[i])
        return [(self.ids[d], s) for d, s in hits]  # type: ignore[misc]

    def search_text(self, text: str, k: int) -> list[tuple[int, float]]:
        return [(self.ids[d], s) for d, s in self.engine.search(text, k)]  # type: ignore[misc]


class _MedcolbertMaxSim(_Medcolbert):
    """medcolbert scoring MaxSim alone, as the other engines do (a pooled-head model's term switched off), over
    the same index as "medcolbert"."""

    name = "medcolbert-maxsim"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.index_dir = work / "index-medcolbert"

    def model_options(self) -> dict:
        return {"dense_weight": 0.0}


class _MedcolbertDistilled(_Medcolbert):
    """medcolbert with the model's distilled query encoder (fewer layers for queries) over the same index as
    "medcolbert": its queries are encoded again here, so that search-only and its quality use its own vectors."""

    name = "medcolbert-distilled"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.index_dir = work / "index-medcolbert"

    def build(self, nbits: int) -> dict:
        if not (self.index_dir / "manifest.json").is_file():
            raise RuntimeError("medcolbert-distilled searches medcolbert's index: run it with the medcolbert engine")
        return {"build_s": 0.0, "bytes": _dir_bytes(self.index_dir), "settings": "medcolbert's index"}

    def model_options(self) -> dict:
        return {"query_encoder": os.environ.get(QUERY_ENCODER_ENV, "distilled")}

    def load(self) -> None:
        from medcolbert.modeling.encoder import encode_queries_pooled

        super().load()
        # Its own query vectors, in the width of the shared ones, for search-only timing and its quality.
        meta = json.loads((self.work / "meta.json").read_text())
        queries, pooled = encode_queries_pooled(self.model, meta["query_texts"])
        width = self.queries.shape[1]
        self.queries = queries[:, :width].numpy() if queries.shape[1] >= width else \
            np.pad(queries.numpy(), ((0, 0), (0, width - queries.shape[1]), (0, 0)))
        self.pooled = pooled if pooled is not None and self.engine.hybrid else None


WORKERS = {e.name: e for e in (_Medcolbert, _MedcolbertMaxSim, _MedcolbertDistilled, _ColbertAi, _FastPlaid, _XtrWarp)}


def worker(name: str, work: Path) -> None:
    """Answer requests on stdin until it closes: build, load, search (timed, one query at a time)."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    engine = WORKERS[name](work)
    # Answers go out on a copy of stdout; file descriptor 1 itself becomes stderr, so that what the engines
    # print (colbert-ai's child processes too, which inherit it) never mixes with the answers.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "build":
            record = work / f"build-{name}.json"
            if req.get("reuse") and engine.built():
                # An index an earlier run built: its recorded build, or, for one built before records were
                # kept, its size alone (the build time is then not reported).
                answer = json.loads(record.read_text()) if record.is_file() else \
                    {"build_s": None, "bytes": _dir_bytes(engine.built()), "settings": "index of an earlier run"}
                answer["reused"] = True
            else:
                answer = engine.build(req["nbits"])
                record.write_text(json.dumps(answer))
        elif req["op"] == "load":
            engine.load()
            answer = {"ok": True}
        else:
            text = req["op"] == "search_text"
            texts = json.loads((work / "meta.json").read_text())["query_texts"] if text else None
            n = len(engine.queries)
            engine.reset()
            one = (lambda i: engine.search_text(texts[i], req["k"])) if text else (lambda i: engine.search(i, req["k"]))
            for i in range(min(WARMUP, n)):
                one(i)
            ms, runs = [], []
            for i in range(n):
                t0 = time.perf_counter()
                hits = one(i)
                ms.append((time.perf_counter() - t0) * 1000)
                runs.append(hits)
            answer = {"ms": ms, "runs": runs}
        out.write(json.dumps(answer) + "\n")
        out.flush()


# ------------------------------------------------------------------------------------------------ main side

class Worker:
    """A worker process of one engine, with its index loaded once."""

    def __init__(self, name: str, python: str, work: Path, log: Path) -> None:
        self.name = name
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(Path(".cache/torch_extensions").resolve()),
               "PYTHONPATH": str(Path.cwd())}
        self.log = open(log, "w")
        self.proc = subprocess.Popen([python, __file__, "--worker", name, "--work", str(work)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def call(self, **req: object) -> dict:
        """Send one request, wait for its answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} worker stopped; see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        """End the process."""
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=600)
        self.log.close()
        # The engines log absolute paths of this machine: kept relative, since the logs are committed.
        path = Path(self.log.name)
        path.write_text(path.read_text(errors="replace").replace(str(Path.cwd().resolve()) + "/", ""))


def python_of(engine: str) -> str:
    """The interpreter of the engine's environment (made on first use)."""
    if engine.startswith("medcolbert"):   # medcolbert and medcolbert-maxsim: this environment
        return sys.executable
    if engine == "colbert-ai":
        return subprocess.run(["bash", "scripts/colbert_ai_venv.sh"], check=True, capture_output=True,
                              text=True).stdout.split()[-1]
    python = PEERS_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import fast_plaid, xtr_warp"]).returncode:
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        # Both pin torch 2.11 (pip takes its CUDA wheels from PyPI: several GB, once).
        subprocess.run([str(python), "-m", "pip", "install", "-q", "fast-plaid==1.7.*", "xtr-warp-rs==2.1.*"], check=True)
    return str(python)


def prepare_from_data(args: argparse.Namespace, work: Path) -> dict:
    """Encode the collection and the queries once with medcolbert's model; write what every worker reads."""
    import torch

    from medcolbert.bench.search import subset

    from medcolbert import ColBERT, load_beir
    from medcolbert.modeling.encoder import encode_queries_pooled
    from medcolbert.modeling.precision import choose_query_precision
    from medcolbert.vector_cache import VectorCache

    data = load_beir(args.data, args.split)
    qids, doc_ids = subset(data, args.max_docs, args.max_queries)
    model = ColBERT.from_pretrained(args.model, device="cpu", doc_maxlen=args.doc_maxlen)
    model.trace_queries = True
    choose_query_precision(model)
    texts = [data.corpus[d].full_text for d in doc_ids]
    cache = VectorCache(model, work / "cache")
    vecs = cache.get_or_encode(doc_ids, texts, show_progress=True)
    pooled = cache.pooled_vectors(doc_ids).numpy() if cache.pooled else None
    write_shard(work, doc_ids, [vecs[d].float().numpy() for d in doc_ids], pooled)
    qtexts = [data.queries[q] for q in qids]
    Q, P = encode_queries_pooled(model, qtexts, show_progress=False)
    np.save(work / "queries.npy", Q.float().numpy(), allow_pickle=False)
    if P is not None:
        np.save(work / "queries_pooled.npy", P.float().numpy(), allow_pickle=False)
    ckpt = model.save_pretrained(work / "checkpoint")
    with open(work / "collection.tsv", "w") as f:
        for i, text in enumerate(texts):
            f.write(f"{i}\t{' '.join(text.split())}\n")
    meta = {"doc_ids": doc_ids, "qids": qids, "query_texts": qtexts, "doc_maxlen": args.doc_maxlen,
            "model_name": model.name, "model_fingerprint": model.fingerprint(weights_only=True),
            "model_source": args.model, "qrels": {q: data.qrels[q] for q in qids}, "checkpoint": ckpt.name,
            "source": f"{Path(args.data).name} ({args.split})"}
    del torch
    return meta


def prepare_from_index(args: argparse.Namespace, work: Path) -> dict:
    """The vectors of an existing medcolbert index (e.g. medcolbert/bench/scale.py's), with queries encoded already."""
    from medcolbert.indexing.index import Index

    index = Index.open(args.from_index)
    docs = np.arange(len(index))
    parts = []
    for s in range(0, len(docs), 2048):
        parts += [v.numpy() for v in index.document_vectors(docs[s:s + 2048])]
    write_shard(work, list(index.doc_ids), parts, None)
    shutil.copy(args.queries_npy, work / "queries.npy")
    model = index.manifest.get("model", {})
    return {"doc_ids": list(index.doc_ids), "qids": [str(i) for i in range(len(np.load(work / "queries.npy")))],
            "query_texts": None, "doc_maxlen": 300, "model_name": model.get("name"),
            "model_fingerprint": model.get("fingerprint"), "model_source": model.get("source"), "qrels": None,
            "source": f"{Path(args.from_index).name} (vectors of a medcolbert/bench/scale.py index)"}


def write_shard(work: Path, ids: list[str], vectors: list[np.ndarray], pooled) -> None:  # type: ignore[no-untyped-def]
    """One from-vectors shard (float16 vectors, as bench_scale writes them) in WORK/vectors."""
    folder = work / "vectors"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "0000.vectors.npy", np.concatenate(vectors).astype(np.float16), allow_pickle=False)
    np.save(folder / "0000.doclens.npy", np.array([len(v) for v in vectors], dtype=np.int64), allow_pickle=False)
    (folder / "0000.ids.txt").write_text("".join(f"{d}\n" for d in ids))
    if pooled is not None:
        np.save(folder / "0000.pooled.npy", np.asarray(pooled, dtype=np.float32), allow_pickle=False)


def quality(runs: list[list], meta: dict, reference: list[list] | None) -> dict:
    """nDCG@10 of the timed results (with judgements), else overlap@10 with exact MaxSim."""
    if meta["qrels"] is not None:
        from medcolbert import evaluate

        ids = meta["doc_ids"]
        run = {q: {ids[d]: s for d, s in hits[:10]} for q, hits in zip(meta["qids"], runs)}
        return {"ndcg@10": evaluate(run, meta["qrels"], ["ndcg@10"])["ndcg@10"]}
    assert reference is not None
    overlap = [len({d for d, _ in hits[:10]} & {d for d, _ in ref[:10]}) / 10 for hits, ref in zip(runs, reference)]
    return {"overlap@10 with exact MaxSim": float(np.mean(overlap))}


def exact_reference(work: Path) -> list[list]:
    """Exact MaxSim top-10 over medcolbert's index of the shared vectors (the ground truth without judgements)."""
    import torch

    from medcolbert.indexing.index import Index
    from medcolbert.search.exact import exact_search

    index = Index.open(work / "index-medcolbert")
    pos = {d: i for i, d in enumerate(index.doc_ids)}
    Q = torch.from_numpy(np.load(work / "queries.npy"))
    return [[(pos[d], s) for d, s in hits] for hits in exact_search(index, Q, 10)]


def main(argv: list[str] | None = None) -> None:
    """Prepare, build, run the alternating rounds and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--data", help="a BEIR folder (with --split)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--from-index", help="take the vectors of this medcolbert index instead (no judgements)")
    ap.add_argument("--queries-npy", help="with --from-index: encoded queries [n, Lq, dim]")
    ap.add_argument("--model", default=None, help="checkpoint (default: the default model)")
    ap.add_argument("--doc-maxlen", type=int, default=300)
    ap.add_argument("--engines", default=",".join(e for e in ENGINES if e != "medcolbert-distilled"),
                    help=f"comma-separated, of {', '.join(ENGINES)} (default: all but medcolbert-distilled, which "
                         "needs a model with a distilled query encoder and runs after medcolbert)")
    ap.add_argument("--query-encoder", default="distilled", metavar="distilled|DIR",
                    help="medcolbert-distilled's query encoder: the model's own (default) or a query_encoder/ folder")
    ap.add_argument("--nbits", type=int, default=2, choices=(1, 2, 4))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="keep indexes an earlier run built in WORK (and their build records)")
    ap.add_argument("--ks", default="10,100")
    ap.add_argument("--work", default=None, help="default .cache/engines/<out's name>")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, Path(args.work))
        return
    if not args.out or bool(args.data) == bool(args.from_index) or (args.from_index and not args.queries_npy):
        ap.error("give --out and either --data or --from-index with --queries-npy")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        ap.error(f"--engines: unknown {', '.join(unknown) or 'empty list'} (known: {', '.join(ENGINES)})")
    ks = [int(k) for k in args.ks.split(",")]
    if args.query_encoder != "distilled":
        os.environ[QUERY_ENCODER_ENV] = str(Path(args.query_encoder).resolve())   # the workers inherit it
    out = Path(args.out)
    work = Path(args.work or f".cache/engines/{out.name}")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    from medcolbert.bench import cpu_model, percentiles, write_results
    from medcolbert.machine import cpu_features

    meta_file = work / "meta.json"
    if not meta_file.exists():
        meta = prepare_from_data(args, work) if args.data else prepare_from_index(args, work)
        meta_file.write_text(json.dumps(meta))
    meta = json.loads(meta_file.read_text())
    if args.from_index:
        engines = [e for e in engines if e != "colbert-ai"]   # it indexes text only: no text behind these vectors
    n_vectors = int(np.load(work / "vectors" / "0000.doclens.npy").sum())
    result: dict = {"cpu": cpu_model(), "cpu_features": cpu_features(), "cores": os.cpu_count(),
                    "source": meta["source"],
                    "documents": len(meta["doc_ids"]), "vectors": n_vectors, "queries": len(meta["qids"]),
                    "model": meta["model_name"], "nbits": args.nbits, "rounds": args.rounds, "engines": {}}
    workers = {e: Worker(e, python_of(e), work, out / f"{e}.log") for e in engines}
    try:
        for name, w in workers.items():
            print(f"{name}: build", flush=True)
            built = w.call(op="build", nbits=args.nbits, reuse=args.reuse)
            built["bytes_per_vector"] = built["bytes"] / n_vectors
            result["engines"][name] = {"build": built, "rounds": []}
            w.call(op="load")
        reference = exact_reference(work) if meta["qrels"] is None else None
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for name in order:
                timed: dict = {}
                for k in ks:
                    got = workers[name].call(op="search", k=k)
                    timed[f"k{k}"] = {**percentiles(got["ms"], (50, 95)), **quality(got["runs"], meta, reference)}
                    if r == args.rounds - 1:
                        timed[f"k{k}"]["ms"] = got["ms"]
                if WORKERS[name].encodes and meta["query_texts"]:
                    got = workers[name].call(op="search_text", k=10)
                    timed["k10_with_encoding"] = {**percentiles(got["ms"], (50, 95)), **quality(got["runs"], meta, reference)}
                result["engines"][name]["rounds"].append(timed)
                print(f"round {r + 1} {name}: " + ", ".join(f"{key} p50 {v['p50_ms']:.2f} ms" for key, v in timed.items()),
                      flush=True)
    finally:
        for w in workers.values():
            w.close()
    write_results(out / "results.json", result, report(result))
    print(report(result))


def report(result: dict) -> str:
    """A table: median over rounds of each p50 / p95, quality, build and size; ratios per round to medcolbert."""
    def med(name: str, key: str, stat: str) -> float | None:
        vals = [r[key][stat] for r in result["engines"][name]["rounds"] if key in r]
        return float(np.median(vals)) if vals else None

    keys = ["k10", "k100", "k10_with_encoding"]
    lines = [f"# {result['source']}: {result['documents']} documents, {result['vectors']:,} vectors, "
             f"{result['queries']} queries", "",
             f"CPU: {result['cpu']} [{'+'.join(result.get('cpu_features', []))}] ({result['cores']} cores); "
             f"model {result['model']}; nbits {result['nbits']}; "
             f"{result['rounds']} alternating rounds, medians over rounds. Search only = queries encoded beforehand.", "",
             "| engine | search-only k=10 p50 / p95 ms | k=100 p50 / p95 ms | with encoding k=10 p50 / p95 ms | "
             "quality (k=10 run) | build s | bytes/vector | settings |", "|---|---|---|---|---|---|---|---|"]
    for name, e in result["engines"].items():
        cells = []
        for key in keys:
            p50, p95 = med(name, key, "p50_ms"), med(name, key, "p95_ms")
            cells.append(f"{p50:.2f} / {p95:.2f}" if p50 is not None else "-")
        qual = {k: v for k, v in e["rounds"][-1]["k10"].items() if not k.startswith("p") and k != "ms"}
        cells.append(", ".join(f"{k} {v:.4f}" for k, v in qual.items()))
        took = e["build"]["build_s"]
        cells += ["not timed (reused)" if took is None else f"{took:.0f}" + (" (reused)" if e["build"].get("reused") else ""),
                  f"{e['build']['bytes_per_vector']:.1f}", e["build"]["settings"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for mine in ("medcolbert", "medcolbert-distilled"):
        if mine not in result["engines"]:
            continue
        lines += ["", f"Ratios {mine} / engine of p50, per round (same run):", ""]
        ours = result["engines"][mine]["rounds"]
        for name, e in result["engines"].items():
            if name == mine or (mine != "medcolbert" and name.startswith("medcolbert-")):
                continue
            for key in keys:
                per = [a[key]["p50_ms"] / b[key]["p50_ms"] for a, b in zip(ours, e["rounds"]) if key in a and key in b]
                if per:
                    lines.append(f"- vs {name}, {key}: " + " / ".join(f"{x:.2f}" for x in per)
                                 + f" (median {float(np.median(per)):.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
