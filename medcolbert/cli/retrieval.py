"""Index and search commands: bm25, rerank, index (one index or a shard set), search, update, check."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import MedColbertError
from ..validation import float_option, int_option
from .common import (K, POSITIVE, DEFAULT_METRICS, _log, _metrics, _human, _check_output, _add_data_args,
    _add_shard_args,
    _add_output_args, _add_model_args, _index_model,
    _add_query_encoder_arg)


def _parser_bm25(sub: argparse._SubParsersAction) -> None:
    """The `bm25` command's options."""
    p = sub.add_parser("bm25", help="retrieve with BM25 over a BEIR corpus and evaluate",
                       description="Index a BEIR corpus with BM25 (bm25s, English stemming and stopwords), "
                                   "retrieve the top k for each query of a split, print the metrics and "
                                   "optionally write the run in TREC format.")
    _add_data_args(p)
    p.add_argument("--k", type=K, default=100, help="documents per query, 1-100000 (default: 100)")
    p.add_argument("--output", metavar="RUN", help="write the run here in TREC format")
    _add_output_args(p)

def cmd_bm25(args: argparse.Namespace) -> int:
    """Run BM25 over a BEIR split and print its metrics."""
    from ..evaluation.datasets import load_beir, write_run
    from ..evaluation.metrics import evaluate, format_table, write_json
    from ..retrievers import BM25Retriever

    metrics = _metrics(args.metrics)
    _check_output(args.output)
    _check_output(args.json, "--json")
    data = load_beir(args.data, args.split)
    t0 = time.perf_counter()
    run = BM25Retriever({d: doc.full_text for d, doc in data.corpus.items()}).retrieve(data.queries, k=args.k)
    _log(f"BM25: {len(data.corpus)} documents, {len(run)} queries in {time.perf_counter() - t0:.1f}s")
    rows = {"BM25": evaluate(run, data.qrels, metrics)}
    print(format_table(rows, metrics), file=_human(args))
    if args.output:
        write_run(run, args.output, tag="bm25")
    if args.json:
        write_json({"data": str(args.data), "split": args.split, "results": rows}, args.json)
    return 0

def _parser_rerank(sub: argparse._SubParsersAction) -> None:
    """The `rerank` command's options."""
    p = sub.add_parser("rerank", help="rerank a first-stage run with a ColBERT model and compare",
                       description="Rerank the top --depth documents of a first-stage run by exact MaxSim "
                                   "with a ColBERT model, evaluate the first stage and the reranked run, and "
                                   "print both side by side. The first stage is BM25 (--first-stage bm25) "
                                   "or an existing TREC run (--run). Document vectors are cached on disk "
                                   "per model, so a second run encodes nothing.")
    _add_data_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--first-stage", default="bm25", metavar="NAME[:ARG]",
                     help="a registered first stage: bm25 (default), dense (the packaged all-MiniLM-L6-v2) or "
                          "dense:MODEL (any single-vector model folder or hub id)")
    src.add_argument("--run", metavar="RUN", help="rerank this TREC run file instead of retrieving")
    p.add_argument("--depth", type=K, default=100, help="candidates reranked per query (default: 100)")
    _add_model_args(p)
    p.add_argument("--output", metavar="RUN", help="write the reranked run here in TREC format")
    p.add_argument("--cache-dir", default=None, help="vector cache folder (default: $MEDCOLBERT_CACHE or ~/.cache/medcolbert/vectors)")
    p.add_argument("--no-cache", action="store_true", help="encode documents without reading or writing the cache")
    _add_output_args(p)

def cmd_rerank(args: argparse.Namespace) -> int:
    """Rerank a first stage with a ColBERT model and print both rows."""
    from ..evaluation.datasets import load_beir, read_run, write_run
    from ..evaluation.metrics import evaluate, format_table, write_json
    from ..modeling.encoder import ColBERT
    from ..retrievers import MaxSimReranker
    from ..vector_cache import VectorCache

    metrics = _metrics(args.metrics)
    _check_output(args.output)
    _check_output(args.json, "--json")
    data = load_beir(args.data, args.split)
    texts = {d: doc.full_text for d, doc in data.corpus.items()}
    if args.run:
        first = read_run(args.run, queries=None, corpus=data.corpus)
        unknown = [q for q in first if q not in data.queries]
        if unknown:
            raise MedColbertError(f"{args.run}: {len(unknown)} queries are not in the '{args.split}' split of "
                                  f"{args.data}, e.g. '{unknown[0]}'")
        first_name = Path(args.run).name
    else:
        from ..retrievers import make_retriever

        t0 = time.perf_counter()
        stage = make_retriever(args.first_stage, texts)
        first = stage.retrieve(data.queries, k=args.depth)
        first_name = "BM25" if args.first_stage == "bm25" else stage.name
        _log(f"{first_name} retrieval: {time.perf_counter() - t0:.1f}s")

    overrides = {"doc_maxlen": args.doc_maxlen} if args.doc_maxlen else {}
    model = ColBERT.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                    new_projection=args.new_projection, **overrides)
    cache = None if args.no_cache else VectorCache(model, args.cache_dir)

    candidates = list(dict.fromkeys(d for hits in first.values()
                                    for d, _ in sorted(hits.items(), key=lambda kv: -kv[1])[:args.depth]))
    todo = cache.missing(candidates, [texts[d] for d in candidates]) if cache else list(range(len(candidates)))
    tokens = sum(model.tokenizer.document_lengths([texts[candidates[i]] for i in todo])) if todo else 0
    _log(f"{model.name}: {len(candidates)} candidate documents, {len(todo)} to encode"
         + (f" (cache: {cache.dir})" if cache else ""))
    t0 = time.perf_counter()
    reranker = MaxSimReranker(model, texts, depth=args.depth, cache=cache, batch_size=args.batch_size,
                              show_progress=True)
    reranked = reranker.rerank(data.queries, first)
    elapsed = time.perf_counter() - t0
    speed = f", {len(todo) / elapsed:.1f} passages/s, {tokens / elapsed:.0f} tokens/s" if todo else ""
    _log(f"reranked {len(reranked)} queries in {elapsed:.1f}s{speed}")

    depth_note = f"top {args.depth}"
    rows = {first_name: evaluate(first, data.qrels, metrics),
            f"{first_name} -> ColBERT rerank ({depth_note})": evaluate(reranked, data.qrels, metrics)}
    print(f"{data.name} ({args.split}, {len(data.queries)} queries), model: {model.name}", file=_human(args))
    print(format_table(rows, metrics), file=_human(args))
    if args.output:
        write_run(reranked, args.output, tag="medcolbert-rerank")
    if args.json:
        write_json({"data": str(args.data), "split": args.split, "model": model.name,
                    "model_fingerprint": model.fingerprint(), "depth": args.depth, "dtype": args.dtype,
                    "doc_maxlen": model.config.doc_maxlen, "results": rows,
                    "rerank_seconds": round(elapsed, 2), "documents_encoded": len(todo)}, args.json)
    return 0

def _parser_index(sub: argparse._SubParsersAction) -> None:
    """The `index` command's options."""
    p = sub.add_parser("index", help="build a compressed PLAID index of a corpus",
                       description="Encode a corpus (a BEIR folder or a corpus.jsonl) with a ColBERT model and "
                                   "write a compressed index: k-means centroids, 1/2/4-bit residuals, inverted "
                                   "lists, all plain .npy arrays plus manifest.json. The build streams the "
                                   "corpus in chunks, writes to a temporary folder that is renamed at the end, "
                                   "and an interrupted build resumes from its finished chunks. Under torchrun "
                                   "each process encodes a share of the chunks.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="BEIR folder or corpus.jsonl")
    src.add_argument("--from-vectors", nargs="+", metavar="SHARDS",
                     help="build from token vectors encoded elsewhere: shard files or folders (NAME.vectors.npy + "
                          "NAME.doclens.npy + NAME.ids.txt, or NAME.safetensors; see docs/reference.md)")
    p.add_argument("--index", required=True, help="index folder to write")
    _add_model_args(p)
    p.add_argument("--nbits", type=int, choices=[1, 2, 4], default=2, help="bits per residual dimension (default: 2)")
    p.add_argument("--num-centroids", type=int_option(1, 1 << 24), default=None, help="default: the power of two at or below 16 * sqrt(token vectors), colbert-ai's rule")
    p.add_argument("--kmeans-niters", type=int_option(1, 10_000), default=10)
    p.add_argument("--chunk-size", type=POSITIVE, default=2048, help="documents per resumable chunk (default: 2048)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --index")
    p.add_argument("--no-documents", action="store_true", help="do not store the documents' texts and metadata")
    p.add_argument("--assignment", choices=["auto", "exact", "hnsw"], default="auto",
                   help="nearest-centroid search while compressing: exact, hnsw (approximate; for tens of thousands "
                        "of centroids), auto (hnsw from 16384 centroids; default)")
    p.add_argument("--kmeans", choices=["auto", "flat", "two-level"], default="auto",
                   help="centroid training: flat k-means, two-level (sqrt(centroids) groups first; for tens of "
                        "thousands of centroids), auto (two-level from 16384 centroids; default)")
    p.add_argument("--split-documents", action="store_true",
                   help="index long documents as overlapping passages (results stay per document, scored by "
                        "their best passage); without it, text past --doc-maxlen is dropped, with a warning")
    p.add_argument("--passage-tokens", type=int_option(8, 100_000), default=None,
                   help="word pieces per passage (default: what fits the model's doc_maxlen)")
    p.add_argument("--passage-overlap", type=int_option(0, 50_000), default=None,
                   help="word pieces neighbouring passages share (default: 32, at most a quarter of a passage)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process (or torchrun's); ray: encode and compress on Ray workers")
    p.add_argument("--workers", type=int_option(1, 100_000), default=None, help="Ray workers (default: the cluster's CPUs)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: $RAY_ADDRESS, else a local one)")
    p.add_argument("--shards", type=int_option(1, 4096), default=None,
                   help="build a shard set at --index: one codec trained on the whole collection, each document in "
                        "shard hash(id) mod N, one index folder per shard (search, serve read the set as one)")

def cmd_index(args: argparse.Namespace) -> int:
    """Build an index and print its size."""
    from ..indexing.builder import build_index, init_distributed
    from ..indexing.index import Index
    from ..modeling.encoder import ColBERT

    if args.from_vectors:
        from ..indexing.vectors import build_from_vectors

        if args.split_documents:
            raise MedColbertError("--split-documents needs texts (--data); shards of vectors are indexed as they are")

        # The encoder is named, not loaded: --model is the checkpoint that made the vectors (recorded, and
        # checked by fingerprint when it can be loaded here).
        fingerprint, config, pooled_dim = None, None, None
        if args.model is not None:
            named = ColBERT.from_pretrained(args.model, device="cpu")
            fingerprint, config, pooled_dim = named.fingerprint(weights_only=True), named.config, named.hidden_size
        t0 = time.perf_counter()
        build_from_vectors(args.index, args.from_vectors, model_name=Path(args.model).name if args.model else "unnamed",
                           model_fingerprint=fingerprint, model_source=args.model, config=config, pooled_dim=pooled_dim,
                           num_centroids=args.num_centroids,
                           nbits=args.nbits, kmeans_niters=args.kmeans_niters, chunk_size=args.chunk_size,
                           overwrite=args.overwrite, assignment=args.assignment, kmeans=args.kmeans)
        stats = Index.open(args.index).stats()
        print(f"indexed {stats['documents']} documents, {stats['embeddings']} vectors from shards in "
              f"{time.perf_counter() - t0:.1f}s; {stats['bytes_per_embedding']:.2f} bytes per vector")
        return 0
    if args.shards is not None and os.environ.get("WORLD_SIZE", "1") != "1":
        raise MedColbertError("--shards builds each shard in this process (or on Ray with --backend ray), not under "
                              "torchrun")
    rank, world = init_distributed()
    device = args.device
    if device is None and world > 1:
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    overrides = {"doc_maxlen": args.doc_maxlen} if args.doc_maxlen else {}
    model = ColBERT.from_pretrained(args.model, device=device, dtype=args.dtype, new_projection=args.new_projection,
                                    **overrides)
    data = Path(args.data)
    corpus = data / "corpus.jsonl" if data.is_dir() else data
    t0 = time.perf_counter()
    if args.shards is not None:
        from ..indexing.shards import build_set, open_set

        build_set(args.index, model, corpus, shards=args.shards, nbits=args.nbits, num_centroids=args.num_centroids,
                  kmeans_niters=args.kmeans_niters, batch_size=args.batch_size, overwrite=args.overwrite,
                  assignment=args.assignment, kmeans=args.kmeans, chunk_size=args.chunk_size,
                  store_documents=not args.no_documents, backend=args.backend, workers=args.workers,
                  ray_address=args.ray_address, split_documents=args.split_documents,
                  passage_tokens=args.passage_tokens, passage_overlap=args.passage_overlap)
        sizes = [len(ix) for ix in open_set(args.index)]
        print(f"indexed {sum(sizes)} documents in {args.shards} shards ({', '.join(map(str, sizes))}) with one "
              f"codec in {time.perf_counter() - t0:.1f}s")
        return 0
    build_index(args.index, model, corpus, nbits=args.nbits, num_centroids=args.num_centroids,
                kmeans_niters=args.kmeans_niters, chunk_size=args.chunk_size, batch_size=args.batch_size,
                overwrite=args.overwrite, store_documents=not args.no_documents, backend=args.backend,
                workers=args.workers, ray_address=args.ray_address, split_documents=args.split_documents,
                passage_tokens=args.passage_tokens, passage_overlap=args.passage_overlap, assignment=args.assignment,
                kmeans=args.kmeans)
    if rank == 0:
        stats = Index.open(args.index).stats()
        passages = f" ({stats['passages']} passages)" if "passages" in stats else ""
        print(f"indexed {stats['documents']} documents{passages}, {stats['embeddings']} vectors, {stats['centroids']} "
              f"centroids, nbits {stats['nbits']} in {time.perf_counter() - t0:.1f}s")
        print(f"{stats['bytes_total'] / 1e6:.1f} MB on disk, {stats['bytes_per_embedding']:.2f} bytes per vector")
    return 0

def _parser_search(sub: argparse._SubParsersAction) -> None:
    """The `search` command's options."""
    p = sub.add_parser("search", help="search an index with PLAID and write/evaluate a run",
                       description="Search a PLAID index for every query of a BEIR split: candidates from the "
                                   "top --ncells centroids per query token, centroid-interaction pruning at "
                                   "--threshold, the top --ndocs scored by exact MaxSim over decompressed "
                                   "vectors. Unset knobs follow --preset and k: 'quality' (default) stays within "
                                   "0.005 nDCG@10 of exact MaxSim on the measured sets, 'colbert-ai' uses "
                                   "colbert-ai's faster knobs (a model with a pooled head searches with those "
                                   "under either preset: its pooled side's nearest 100 make up for them). "
                                   "--exact scores every document (the brute-force ground truth). Opening an index "
                                   "checks that every file is there with its recorded size, not its contents: "
                                   "`medcolbert check` verifies the checksums (a file altered in place is found there).")
    p.add_argument("--index", required=True)
    p.add_argument("--data", default=None, help="BEIR folder whose queries to search (or give --query)")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    p.add_argument("--query", default=None, help="one ad-hoc query: print its ranked hits (id, score, text)")
    p.add_argument("--model", default=None, help="default: the model recorded in the index manifest")
    _add_query_encoder_arg(p)
    p.add_argument("--device", default=None)
    p.add_argument("--k", type=K, default=None, help="documents per query, 1-100000 (default: 100; 10 with --query)")
    p.add_argument("--ncells", type=int_option(1, 1 << 24), default=None, help="centroids probed per query token")
    p.add_argument("--threshold", type=float_option(-1.0, 1.0), default=None, help="centroid score threshold, -1 to 1")
    p.add_argument("--ndocs", type=POSITIVE, default=None, help="documents kept for centroid interaction")
    p.add_argument("--exact", action="store_true", help="brute-force MaxSim over every document")
    p.add_argument("--preset", choices=["quality", "colbert-ai"], default="quality",
                   help="defaults for unset knobs (see docs/reference.md)")
    p.add_argument("--where", default=None, metavar="EXPR",
                   help="search only documents whose metadata match, e.g. \"source in {medlineplus, ghr} and "
                        "year >= 2015\" or \"id in {d1, d2}\" (syntax: docs/reference.md)")
    p.add_argument("--all-queries", action="store_true",
                   help="search every query of queries.jsonl without evaluating (no qrels needed)")
    p.add_argument("--mode", choices=["plaid", "lexical", "hybrid"], default="plaid",
                   help="plaid: late interaction (default); lexical: BM25 over the index's postings; hybrid: the two "
                        "fused by reciprocal rank (each side's top 100)")
    p.add_argument("--fusion", choices=["rrf", "score"], default="rrf",
                   help="hybrid: reciprocal rank fusion (default) or min-max normalised scores summed")
    p.add_argument("--lexical-weight", type=float_option(0.0, 100.0), default=1.0,
                   help="hybrid: the weight of BM25's side (default 1)")
    p.add_argument("--explain", action="store_true",
                   help="with --query: show why each hit matched (the query words' matched document words, shaded "
                        "in a terminal, [[marked]] otherwise, and their shares of the score; spans in --json)")
    _add_shard_args(p, "with --ray: answer from the shards that respond, warning which did not (default: fail)")
    p.add_argument("--plaid-depth", type=int_option(1, 100_000), default=None,
                   help="hybrid: PLAID's side fetched at this depth (default: 100, as BM25's; k=10 is PLAID's fast "
                        "path: 1.11-1.19x PLAID's time instead of 1.33-1.46x on SciFact, experiments/quality/hybrid/)")
    p.add_argument("--pooled-weight", type=float_option(0.0, 100.0), default=0.0,
                   help="hybrid: a third side, the pooled single vector's nearest documents, at this weight (default "
                        "0: off; a model with a pooled head only)")
    p.add_argument("--output", metavar="RUN", help="write the run here in TREC format")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated (default: {DEFAULT_METRICS})")
    p.add_argument("--json", metavar="PATH", help="also write JSON here ('-': JSON on stdout, the table on stderr): "
                                                  "the metrics table, or with --query the hits")

def cmd_search(args: argparse.Namespace) -> int:
    """Search an index for a split's queries, evaluate, and optionally write the run."""
    from ..evaluation.datasets import write_run
    from ..evaluation.metrics import evaluate, format_table, write_json
    from ..indexing.index import Index
    from ..retrievers import PlaidRetriever
    from ..search.plaid import SearchConfig

    metrics = _metrics(args.metrics)
    _check_output(args.output)
    _check_output(args.json, "--json")
    if (args.query is None) == (args.data is None):
        raise MedColbertError("give --data (a BEIR folder's queries) or --query (one query), not both")
    if args.explain and args.query is None:
        raise MedColbertError("--explain explains one query's hits: give --query")
    from ..indexing.shards import is_shard_set

    if is_shard_set(args.index):
        return _search_set(args)
    if args.ray:
        raise MedColbertError(f"--ray searches a shard set (built with index --shards); {args.index} is one index")
    index = Index.open(args.index)
    index.matching(args.where)   # a bad filter fails here, before the model loads
    if args.query is not None:
        return _search_one(args, index)
    args.k = args.k or 100
    queries, qrels, qrels_path = _split_queries(args)
    if qrels is not None:
        held = set(index.doc_ids)
        if not any(d in held for rels in qrels.values() for d in rels):
            raise MedColbertError(f"{args.index} holds none of the documents judged in {qrels_path}: the scores would "
                                  f"all be 0 (was the index built from another corpus?)")
    model = _index_model(index, args.model, args.device, args.query_encoder)
    config = SearchConfig(args.ncells, args.threshold, args.ndocs, exact=args.exact, preset=args.preset)
    knobs = _mode_knobs(args)
    retriever = PlaidRetriever.from_index(index, model, config, show_progress=None, where=args.where, **knobs)
    t0 = time.perf_counter()
    run = retriever.retrieve(queries, k=args.k)
    elapsed = time.perf_counter() - t0
    _log(f"searched {len(queries)} queries in {elapsed:.1f}s ({1000 * elapsed / len(queries):.1f} ms/query, "
         f"query encoding included)")
    if args.output:
        write_run(run, args.output, tag="medcolbert-plaid" if not args.exact else "medcolbert-exact")
    if qrels:
        name = {"lexical": "BM25 (index)", "hybrid": "hybrid (RRF of PLAID and BM25)"}.get(
            args.mode, "ColBERT exact" if args.exact else "ColBERT PLAID")
        rows = {name: evaluate(run, qrels, metrics)}
        print(format_table(rows, metrics), file=_human(args))
        if args.json:
            write_json({"index": args.index, "data": args.data, "split": args.split, "k": args.k,
                        "config": retriever.searcher.resolved_config(args.k).__dict__, "where": args.where,
                        "results": rows,
                        "ms_per_query": 1000 * elapsed / len(queries)}, args.json)
    return 0

def _split_queries(args: argparse.Namespace) -> tuple[dict[str, str], dict | None, Path]:
    """search --data's queries: those the split judges with their qrels, or all of them unjudged (--all-queries);
    and the qrels file's path."""
    from ..evaluation.datasets import load_qrels, load_queries

    data = Path(args.data)
    queries_all = load_queries(data / "queries.jsonl")
    qrels_path = data / "qrels" / f"{args.split}.tsv"
    if args.all_queries:
        return queries_all, None, qrels_path
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (data / "qrels").glob("*.tsv")) if (data / "qrels").is_dir() else []
        raise MedColbertError(f"{args.data}: no qrels for split '{args.split}' (available: "
                              f"{', '.join(available) or 'none'}); --all-queries searches every query unevaluated")
    qrels = load_qrels(qrels_path, queries_all)
    return {q: queries_all[q] for q in qrels}, qrels, qrels_path


def _mode_knobs(args: argparse.Namespace) -> dict:
    """The search mode's knobs from the command line (none for plaid)."""
    if args.mode == "plaid":
        return {}
    return {"mode": args.mode, "fusion": args.fusion, "lexical_weight": args.lexical_weight,
            "pooled_weight": args.pooled_weight, "plaid_depth": args.plaid_depth} if args.mode == "hybrid" \
        else {"mode": args.mode}

def _search_set(args: argparse.Namespace) -> int:
    """search over a shard set: its shards as threads here, or on Ray actors with --ray."""
    from ..evaluation.datasets import write_run
    from ..evaluation.metrics import evaluate, format_table, write_json
    from ..search.plaid import SearchConfig

    if args.mode != "plaid":
        raise MedColbertError(f"--mode {args.mode}: a shard set is searched with plaid only (BM25's statistics are "
                              "per shard)")
    config = SearchConfig(args.ncells, args.threshold, args.ndocs, exact=args.exact, preset=args.preset)
    if args.ray:
        from ..search.ray_shards import RayShardedSearcher

        searcher = RayShardedSearcher(args.index, _set_model(args), args.replicas, args.ray_address,
                                      on_missing="partial" if args.allow_partial else "fail",
                                      config={k: v for k, v in config.__dict__.items() if v is not None})
    else:
        from ..search.sharded import ShardedSearcher

        searcher = ShardedSearcher.from_set(args.index, _set_model(args), config)
    knobs = {"where": args.where} if args.where else {}
    if args.query is not None:
        hits = searcher.search(args.query, k=args.k or 10, return_documents=True, **knobs)
        if args.json:
            write_json({"query": args.query, "k": args.k or 10, "hits": hits}, args.json)
        for rank, row in enumerate(hits, start=1):
            snippet = " ".join(row.get("text", "").split())
            print(f"{rank:>3}  {row['id']}  {row['score']:.4f}  {snippet[:117]}".rstrip(), file=_human(args))
    else:
        k = args.k or 100
        queries, qrels, _ = _split_queries(args)
        t0 = time.perf_counter()
        run = searcher.search_all(queries, k=k, **knobs)
        _log(f"searched {len(queries)} queries over the shard set in {time.perf_counter() - t0:.1f}s")
        if args.output:
            write_run(run, args.output, tag="medcolbert-shards")
        if qrels:
            rows = {"ColBERT PLAID (shard set)": evaluate(run, qrels, _metrics(args.metrics))}
            print(format_table(rows, _metrics(args.metrics)), file=_human(args))
            if args.json:
                write_json({"index": args.index, "data": args.data, "split": args.split, "k": k, "results": rows},
                           args.json)
    missing = sorted(getattr(searcher, "missing_seen", ()))
    if missing:
        _log(f"warning: shards {', '.join(map(str, missing))} did not answer; the results above lack their documents")
    searcher.close()
    return 0

def _set_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The model named on the command line, else the one the set's first shard records."""
    from ..indexing.index import Index
    from ..indexing.shards import read_set

    first = read_set(args.index)["shards"][0]["name"]
    return Index.open(Path(args.index) / first).load_model(args.model, args.device, query_encoder=args.query_encoder)

def _search_one(args: argparse.Namespace, index) -> int:  # type: ignore[no-untyped-def]
    """Print one query's hits: rank, id, score and a text snippet (or JSON lines with --json -)."""
    import json

    from ..retrievers import PlaidRetriever
    from ..search.plaid import SearchConfig

    k = args.k or 10
    knobs = _mode_knobs(args)
    model = index.load_model(args.model, args.device, query_encoder=args.query_encoder)
    retriever = PlaidRetriever.from_index(index, model, SearchConfig(
        args.ncells, args.threshold, args.ndocs, exact=args.exact, preset=args.preset), where=args.where, **knobs)
    if args.explain and not index.has_documents:
        raise MedColbertError(f"--explain: {args.index} stores no document texts to show matches in")
    hits = retriever.hits({"q": args.query}, k=k)["q"]
    # The stored entry that matched (a split document's best passage) is the snippet.
    rows = retriever.searcher.documents(hits) if index.has_documents else [{"id": d, "score": s} for d, s, _ in hits]
    if args.explain and rows:
        from ..explain import explain_texts

        # The stored entry that matched (a split document's best passage), as the row's text is; one batch.
        notes = explain_texts(retriever.searcher.model, args.query, [row.get("text", "") for row in rows],
                              [hit[1] for hit in hits], lexical=args.mode != "plaid")
        for row, note in zip(rows, notes):
            row["explanation"] = note
    if args.json:
        from ..evaluation.metrics import write_json

        write_json({"query": args.query, "k": k, "hits": rows}, args.json)
    out = _human(args)
    color = out.isatty() and os.environ.get("NO_COLOR") is None
    for rank, row in enumerate(rows, start=1):
        if "explanation" in row:
            from ..explain import render

            print(f"{rank:>3}  {row['id']}  {row['score']:.4f}", file=out)
            for line in render(row["explanation"], row.get("text", ""), color):
                print("     " + line, file=out)
            continue
        snippet = " ".join(row.get("text", "").split())
        snippet = snippet[:117] + "..." if len(snippet) > 120 else snippet
        print(f"{rank:>3}  {row['id']}  {row['score']:.4f}  {snippet}".rstrip(), file=out)
        if row.get("metadata"):
            print("     " + json.dumps(row["metadata"], ensure_ascii=False)[:200], file=out)
    if not index.has_documents:
        _log(f"{args.index} stores no document texts (built with store_documents=False or by an older version)")
    if not rows:   # said, not left to an empty screen
        _log(f"no document matches --where {args.where!r}" if args.where else "no hits")
    return 0

def _parser_update(sub: argparse._SubParsersAction) -> None:
    """The `update` command's options."""
    p = sub.add_parser("update", help="add or delete documents in an index, or compact it",
                       description="Add documents (BEIR corpus.jsonl) as a new segment, delete documents by id "
                                   "(one per line), and/or compact the index to reclaim deleted space. Each "
                                   "change is committed by an atomic manifest replacement.")
    p.add_argument("--index", required=True)
    p.add_argument("--add", metavar="CORPUS", help="corpus.jsonl of documents to add")
    p.add_argument("--delete", metavar="IDS", help="file with one document id per line to delete")
    p.add_argument("--compact", action="store_true", help="rewrite live documents as one segment")
    p.add_argument("--lexical", action="store_true",
                   help="write BM25 postings for segments built without them (from their stored texts), for "
                        "search --mode lexical|hybrid")
    p.add_argument("--model", default=None, help="default: the model recorded in the index manifest")

def cmd_update(args: argparse.Namespace) -> int:
    """Apply additions, deletions and compaction to an index."""
    from ..evaluation.datasets import check_row_id, iter_lines
    from ..indexing.index import Index

    if not (args.add or args.delete or args.compact or args.lexical):
        raise MedColbertError("nothing to do: give --add, --delete, --compact and/or --lexical")
    index = Index.open(args.index)
    # Every input is read and checked before anything changes; the delete and the add commit together.
    ids: list[str] = []
    if args.delete:
        for line_no, line in iter_lines(args.delete):
            if line.strip():
                ids.append(check_row_id(line.strip(), "document id", args.delete, line_no))
        if not ids:
            raise MedColbertError(f"{args.delete}: no document ids in the file")
    documents: dict[str, str] = {}
    metadata: dict[str, dict] = {}
    if args.add:
        from ..indexing.builder import CorpusSource

        for doc_id, text, meta in CorpusSource(args.add).iter_records():
            documents[doc_id] = text
            if meta:
                metadata[doc_id] = meta
    if ids or documents:
        from ..indexing.encoded import EncodedDocuments

        # Encoding comes first and touches no index file; the delete and the add then commit together.
        encoded = (EncodedDocuments.encode(_index_model(index, args.model), documents, metadata, index=index,
                                           show_progress=None) if documents else None)
        done = index.update(add=encoded, delete=ids)
        if ids:
            print(f"deleted {done['deleted']} documents")
        if documents:
            print(f"added {done['added']} documents")
    if args.compact:
        result = index.compact()
        print(f"compacted: {result['before']['bytes_total'] / 1e6:.1f} MB -> {result['after']['bytes_total'] / 1e6:.1f} MB")
    if args.lexical:
        print(f"lexical postings written for {index.build_lexical()} segment(s)")
    print(f"{index.num_documents} documents in {args.index}")
    return 0

def _parser_check(sub: argparse._SubParsersAction) -> None:
    """The `check` command's options."""
    p = sub.add_parser("check", help="verify an index: every file's size and sha256 against its manifest",
                       description="Open an index, check the manifest's keys and ranges, every file's size and "
                                   "sha256 checksum, and that the arrays agree with each other. Exit 0 when "
                                   "intact, 2 with the first problem found.")
    p.add_argument("--index", required=True)

def cmd_check(args: argparse.Namespace) -> int:
    """Verify an index's files against their checksums."""
    from ..indexing.index import Index

    t0 = time.perf_counter()
    index = Index.open(args.index, verify=True)
    stats = index.stats()
    print(f"{args.index}: intact ({len(index.manifest['files'])} files, {stats['bytes_total'] / 1e6:.1f} MB checked "
          f"in {time.perf_counter() - t0:.1f}s; {stats['documents']} documents, {stats['embeddings']} vectors, "
          f"generation {index.manifest.get('generation')})")
    for field, kinds in index.mixed_fields().items():
        print(f"field {field!r} holds values of several kinds ({', '.join(kinds)}): each condition runs on the "
              "documents whose value fits it")
    leftovers = index.leftover_segments()
    if leftovers:
        print(f"{len(leftovers)} segment folder(s) no manifest names ({', '.join(leftovers[:5])}): left by an "
              "interrupted writer; the next update or compaction removes them")
    return 0
