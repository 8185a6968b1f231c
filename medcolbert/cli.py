"""The `medcolbert` command line: retrieval, reranking, indexing, evaluation, mining and training."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import MedColbertError
from .validation import float_option, int_option

# Accepted ranges of the numeric options (argparse names the option and the range on a bad value).
K = int_option(1, 100_000)
POSITIVE = int_option(1)

DEFAULT_METRICS = "ndcg@10,map@100,recall@100,mrr@10"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _metrics(text: str) -> list[str]:
    from .evaluation.metrics import parse_metrics

    try:
        return parse_metrics(text)  # fail before any work is done
    except ValueError as exc:
        raise MedColbertError(f"--metrics: {exc}") from None


def _human(args: argparse.Namespace) -> object:
    """Where tables for people go: stderr when --json - claims stdout for JSON, else stdout."""
    return sys.stderr if getattr(args, "json", None) == "-" else sys.stdout


def _check_output(path: str | None, what: str = "--output") -> None:
    """Fail before any work when an output path cannot be written (a folder, or a folder that refuses writes)."""
    if not path or (path == "-" and what == "--json"):
        return
    target = Path(path)
    if target.is_dir():
        raise MedColbertError(f"{what} {path} is a folder; give a file path")
    parent = target.parent if str(target.parent) else Path(".")
    existing = next((p for p in [parent, *parent.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise MedColbertError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MedColbertError(f"{what} {path}: no permission to write in {existing}")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated (default: {DEFAULT_METRICS})")
    p.add_argument("--json", metavar="PATH", help="also write the metrics table as JSON here ('-': JSON on stdout, "
                                                  "the table on stderr)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint folder or hub id (colbert-ai, PyLate or Sentence Transformers layout); default: "
                        "the released checkpoints/medcolbert-minilm-v5 (the packaged base all-MiniLM-L6-v2 where the "
                        "checkout has none; name the base with 'packaged:all-MiniLM-L6-v2')")
    p.add_argument("--new-projection", action="store_true",
                   help="a plain transformers encoder (no ColBERT projection) gets a seeded random one")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="encoding precision; auto = float16 on CUDA, float32 on CPU")
    p.add_argument("--doc-maxlen", type=int_option(3, 8192), default=None, help="override the model's document length")
    p.add_argument("--batch-size", type=int_option(1, 4096), default=32, help="documents per encoder batch (default: 32)")


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
    p.add_argument("--ray", action="store_true",
                   help="a shard set at --index: search its shards on Ray actors (default: threads in this process)")
    p.add_argument("--ray-address", default=None, help="with --ray: a running cluster (default: $RAY_ADDRESS, else local)")
    p.add_argument("--replicas", type=int_option(1, 16), default=1, help="with --ray: actors per shard (default: 1)")
    p.add_argument("--allow-partial", action="store_true",
                   help="with --ray: answer from the shards that respond, warning which did not (default: fail)")
    p.add_argument("--pooled-weight", type=float_option(0.0, 100.0), default=0.0,
                   help="hybrid: a third side, the pooled single vector's nearest documents, at this weight (default "
                        "0: off; a model with a pooled head only)")
    p.add_argument("--output", metavar="RUN", help="write the run here in TREC format")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated (default: {DEFAULT_METRICS})")
    p.add_argument("--json", metavar="PATH", help="also write JSON here ('-': JSON on stdout, the table on stderr): "
                                                  "the metrics table, or with --query the hits")


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


def _parser_check(sub: argparse._SubParsersAction) -> None:
    """The `check` command's options."""
    p = sub.add_parser("check", help="verify an index: every file's size and sha256 against its manifest",
                       description="Open an index, check the manifest's keys and ranges, every file's size and "
                                   "sha256 checksum, and that the arrays agree with each other. Exit 0 when "
                                   "intact, 2 with the first problem found.")
    p.add_argument("--index", required=True)


def _parser_interpolate(sub: argparse._SubParsersAction) -> None:
    """The `interpolate` command's options."""
    p = sub.add_parser("interpolate", help="WiSE-FT: mix a fine-tuned ColBERT's weights with its starting weights "
                                           "(or with another run's: a model soup)",
                       description="Write ALPHA x fine-tuned + (1 - ALPHA) x start, weight by weight, as a new "
                                   "checkpoint (WiSE-FT). The start defaults to the packaged all-MiniLM-L6-v2 with "
                                   "its fresh projection, where medcolbert's training begins; another run from the "
                                   "same start averages the two (medcolbert-minilm-v4 is two seeds at ALPHA 0.5).")
    p.add_argument("--model", required=True, help="the fine-tuned checkpoint")
    p.add_argument("--start", default=None, help="the starting checkpoint (default: packaged:all-MiniLM-L6-v2)")
    p.add_argument("--alpha", type=float_option(0.0, 1.0), required=True, help="weight of the fine-tuned model, 0-1")
    p.add_argument("--output", required=True, help="checkpoint folder to write")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="precision of the written weights (the mix itself is computed in float32)")


def _parser_convert(sub: argparse._SubParsersAction) -> None:
    """The `convert` command's options."""
    p = sub.add_parser("convert", help="write a checkpoint in colbert-ai's, PyLate's or Sentence Transformers' layout",
                       description="Load a checkpoint in any layout medcolbert reads and write it in another, so that "
                                   "colbert-ai / RAGatouille, PyLate or Sentence Transformers' MultiVectorEncoder load "
                                   "it and encode as medcolbert does.")
    p.add_argument("--model", required=True, help="checkpoint folder, release name or hub id")
    p.add_argument("--format", required=True, choices=["colbert-ai", "pylate", "sentence-transformers"])
    p.add_argument("--output", required=True, help="folder to write")


def _parser_export_onnx(sub: argparse._SubParsersAction) -> None:
    """The `export-onnx` command's options."""
    p = sub.add_parser("export-onnx", help="export the encoder to ONNX in next-plaid's layout, checked with onnxruntime",
                       description="Write model.onnx (backbone + projection + L2 norm; queries and documents share "
                                   "it), the tokenizer and config_sentence_transformers.json, then compare onnxruntime "
                                   "with torch on a data set's queries and documents. model_int8.onnx is kept only "
                                   "if every token vector's cosine to float32's is at least 0.99.")
    p.add_argument("--model", default=None, help="checkpoint (default: the released medcolbert-minilm-v5)")
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--data", default=None, help="BEIR folder to check on (default: a few built-in sentences)")
    p.add_argument("--split", default="test")
    p.add_argument("--check-docs", type=int_option(1, 100000), default=300, help="documents to check on (default 300)")
    p.add_argument("--no-int8", action="store_true", help="do not try a dynamic int8 graph")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")


def _parser_evaluate(sub: argparse._SubParsersAction) -> None:
    """The `evaluate` command's options."""
    p = sub.add_parser("evaluate", help="evaluate TREC run files against qrels",
                       description="Evaluate one or more TREC run files against qrels (a TREC qrels file, a "
                                   "BEIR qrels TSV, or --data/--split) and print one row per run. Queries "
                                   "missing from a run count as zero.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="TREC run files")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--qrels", help="qrels file (TREC or BEIR TSV)")
    g.add_argument("--data", help="BEIR folder; its qrels/<split>.tsv is used")
    p.add_argument("--split", default="test", help="split, with --data (default: test)")
    _add_output_args(p)


def _parser_mine(sub: argparse._SubParsersAction) -> None:
    """The `mine` command's options."""
    p = sub.add_parser("mine", help="add hard negatives to training triplets or pairs",
                       description="Retrieve candidates for each training query (BM25, or a ColBERT model through "
                                   "a PLAID index), drop the positives and their near-duplicates, and sample "
                                   "negatives from a rank window. Input: triplet/pair JSONL with --corpus, or a "
                                   "BEIR folder and split whose qrels give the positives.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--input", help="JSONL of {query, pos, [neg]}")
    g.add_argument("--data", help="BEIR folder; --split's qrels give the positives")
    p.add_argument("--split", default="train")
    p.add_argument("--corpus", help="corpus.jsonl to mine from (default: the BEIR corpus, or the input's positives)")
    p.add_argument("--output", required=True, help="triplet JSONL to write")
    p.add_argument("--negatives", type=int_option(0, 1000), default=8, help="negatives per query (default: 8)")
    p.add_argument("--window", default="0,50", help="rank window START,END to sample from (default: 0,50)")
    p.add_argument("--near-duplicate", type=float_option(0.0, 1.0), default=0.7, help="word-overlap (Jaccard) above which a "
                   "candidate counts as a copy of a positive (default: 0.7)")
    p.add_argument("--model", default=None, help="mine with this ColBERT model instead of BM25")
    p.add_argument("--index", default=None, help="with --model: PLAID index folder to build or reuse")
    p.add_argument("--seed", type=int, default=0)


def _parser_make_mix(sub: argparse._SubParsersAction) -> None:
    """The `make-mix` command's options."""
    p = sub.add_parser("make-mix", help="build the medical training mix from ../shared/data",
                       description="MedQuAD train pairs, SciFact train qrels and Medical Question Pairs, with "
                                   "mined negatives (BM25 unless --miner); MedQuAD dev topics and SciFact test "
                                   "queries are checked out before anything is written.")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--output", required=True)
    p.add_argument("--negatives", type=int_option(0, 1000), default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--consumer-health", action="store_true",
                   help="add the consumer-health train pairs (real consumer questions) with mined negatives")
    p.add_argument("--meqsum", action="store_true",
                   help="add MeQSum's consumer questions paired with their expert summary questions (source 'meqsum')")
    p.add_argument("--teacher", default=None,
                   help="single-vector teacher (name or path, e.g. packaged:all-MiniLM-L6-v2) whose cosine scores "
                        "are stored as pos_scores / neg_scores for distillation")
    p.add_argument("--teacher-max-length", type=int_option(3, 8192), default=128, help="teacher's token limit (default: 128)")
    p.add_argument("--miner", default="bm25", metavar="NAME[:ARG]",
                   help="first stage that ranks the negatives' candidates: bm25 (default) or a registered stage such "
                        "as dense or dense:PATH (one encoding of all the corpora)")
    p.add_argument("--triplets-dataset", action="append", default=[], metavar="SPEC",
                   help="add a triplet data set in the Hugging Face layout: a hub id (e.g. "
                        "abhinand/MedEmbed-training-triplets-v1) or a local copy (parquet / arrow / JSONL, columns "
                        "query|anchor, pos|positive, neg|negative); repeatable")
    p.add_argument("--triplets-limit", type=int_option(1, 100_000_000), default=None,
                   help="at most this many rows of each triplet data set")
    p.add_argument("--no-shared", action="store_true",
                   help="leave out the data-root sources (MedQuAD, SciFact, Medical Question Pairs); held-out checks "
                        "still read --data-root")


def _parser_panel(sub: argparse._SubParsersAction) -> None:
    """The `panel` command's options."""
    p = sub.add_parser("panel", help="the real-question panel from recorded experiments: each set, paired tests, release rule",
                       description="Reads results.json and perquery/ of experiment folders (e.g. experiments/panel and "
                                   "experiments/panel-rerank) and writes PANEL.md and panel.json: every system on each set "
                                   "against the untuned base and a reference model, and issue 29's release rule.")
    p.add_argument("folders", nargs="+", help="experiment output folders")
    p.add_argument("--base", default="MiniLM (base)", help="the untuned base's system name (default: MiniLM (base))")
    p.add_argument("--reference", default="dense-minilm-v2", help="second comparison (default: dense-minilm-v2)")
    p.add_argument("--output", default="experiments/panel-report", help="folder for PANEL.md and panel.json")


def _parser_experiment(sub: argparse._SubParsersAction) -> None:
    """The `experiment` command's options."""
    p = sub.add_parser("experiment", help="run an experiment file: systems x data sets, tables, significance, plots",
                       description="Run every system of the YAML file on every data set; write the results "
                                   "table (markdown + JSON), TREC runs, per-query scores, paired significance "
                                   "against the baseline and plots under the output folder. Fails (exit 3) "
                                   "when a result drifts past the tolerance from the scores the file expects.")
    p.add_argument("config", help="experiment YAML (see experiments/*.yaml)")
    p.add_argument("--output-dir", default=None, help="override the output folder")


def _parser_serve(sub: argparse._SubParsersAction) -> None:
    """The `serve` command's options."""
    p = sub.add_parser("serve", help="serve search and rerank over HTTP (FastAPI + uvicorn)",
                       description="Serve POST /search, POST /rerank, POST /documents (add), POST /documents/delete, "
                                   "GET /health, GET /metrics and the OpenAPI document at /docs. Binds to "
                                   "127.0.0.1 unless told otherwise. With --api-key-file or $MEDCOLBERT_API_KEY set, "
                                   "every endpoint but /health needs the key (header X-API-Key or Bearer).")
    p.add_argument("--index", required=True)
    p.add_argument("--model", default=None, help="default: the model recorded in the index manifest")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_option(1, 65535), default=8000)
    p.add_argument("--api-key-file", default=None, help="file whose first line is the API key (never logged)")
    p.add_argument("--batching", choices=["auto", "on", "off"], default="auto",
                   help="encode concurrent queries in one batch: auto = on CUDA only (on CPU it was slower)")
    p.add_argument("--first-stage", action="append", default=[], metavar="NAME[:ARG]",
                   help="a registered first stage (bm25, dense, dense:MODEL) that /search may start from with "
                        "\"first_stage\": its top \"depth\" documents reranked by exact MaxSim; repeatable; "
                        "needs an index that stores its documents")
    p.add_argument("--ray", action="store_true",
                   help="--index is a shard set (index --shards): serve its shards on Ray actors (default: threads)")
    p.add_argument("--ray-address", default=None, help="with --ray: a running cluster (default: $RAY_ADDRESS, else local)")
    p.add_argument("--replicas", type=int_option(1, 16), default=1, help="with --ray: actors per shard (default: 1)")
    p.add_argument("--allow-partial", action="store_true",
                   help="a shard set: answer from the shards that respond, marked \"partial\" (default: 503)")


def _parser_train(sub: argparse._SubParsersAction) -> None:
    """The `train` command's options."""
    p = sub.add_parser("train", help="fine-tune a ColBERT (or single-vector) model from a YAML config",
                       description="Train as the YAML config says (see experiments/*.yaml). An interrupted run "
                                   "resumes from its latest checkpoint when started again. Under torchrun every "
                                   "process takes a share of each batch (DistributedDataParallel).")
    p.add_argument("--config", required=True)
    p.add_argument("--max-steps", type=POSITIVE, default=None, help="override max_steps")
    p.add_argument("--output-dir", default=None, help="override output_dir")


def _parser_info(sub: argparse._SubParsersAction) -> None:
    """The `info` command's options."""
    p = sub.add_parser("info", help="what this install can use: versions, devices, compiled search stages, default model")
    p.add_argument("--precision", action="store_true",
                   help="measure the query encoder's precision choice on this CPU now (fp32 vs bf16; a few seconds)")
    p.add_argument("--model", default=None, help="the model to measure (default: the default model)")
    p.add_argument("--index", default=None,
                   help="measure the PLAID exact stage's choice for this index on this CPU now (a second or less)")


def _parser_compare(sub: argparse._SubParsersAction) -> None:
    """The `compare` command's options."""
    p = sub.add_parser("compare", help="compare two runs query by query in one HTML report",
                       description="The metric per query for two TREC runs, their differences as a sorted plot, "
                                   "wins/ties/losses and the paired t-test, and for the queries that differ most the "
                                   "two top-10 lists side by side with grades and snippets: one self-contained HTML "
                                   "file, readable offline.")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--data", default=None, help="BEIR folder: its qrels (--split), queries and corpus (snippets)")
    p.add_argument("--split", default="test")
    p.add_argument("--qrels", default=None, help="a qrels file instead of --data (query-id corpus-id score)")
    p.add_argument("--index", default=None, help="an index whose stored texts give the snippets (with --qrels)")
    p.add_argument("--metric", default="ndcg@10", help="the per-query metric (default: ndcg@10)")
    p.add_argument("--names", default=None, metavar="A,B", help="the runs' names in the report (default: file names)")
    p.add_argument("--shown", type=int_option(1, 100_000), default=50,
                   help="queries shown with both lists side by side, those that differ most (default: 50)")
    p.add_argument("--output", required=True, help="the HTML file to write")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="medcolbert",
        description="Late-interaction (ColBERT) retrieval, reranking and evaluation for medical text.",
        epilog="Run 'medcolbert COMMAND --help' for the options of one command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_parser_bm25, _parser_rerank, _parser_index, _parser_search, _parser_update, _parser_check,
                _parser_interpolate, _parser_convert, _parser_export_onnx, _parser_evaluate, _parser_mine, _parser_make_mix, _parser_panel, _parser_experiment,
                _parser_serve, _parser_train, _parser_info, _parser_compare):
        add(sub)
    return parser


def cmd_bm25(args: argparse.Namespace) -> int:
    """Run BM25 over a BEIR split and print its metrics."""
    from .evaluation.datasets import load_beir, write_run
    from .evaluation.metrics import evaluate, format_table, write_json
    from .retrievers import BM25Retriever

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


def cmd_rerank(args: argparse.Namespace) -> int:
    """Rerank a first stage with a ColBERT model and print both rows."""
    from .evaluation.datasets import load_beir, read_run, write_run
    from .evaluation.metrics import evaluate, format_table, write_json
    from .modeling.encoder import ColBERT
    from .retrievers import MaxSimReranker
    from .vector_cache import VectorCache

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
        from .retrievers import make_retriever

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate run files and print one row each."""
    from .evaluation.datasets import load_beir, load_qrels, read_run
    from .evaluation.metrics import evaluate, format_table, write_json

    metrics = _metrics(args.metrics)
    _check_output(args.json, "--json")
    qrels = load_beir(args.data, args.split).qrels if args.data else load_qrels(args.qrels)
    rows = {}
    for path in args.runs:
        run = read_run(path)
        if not any(q in qrels for q in run):
            raise MedColbertError(f"{path}: none of its queries has judgments in the qrels")
        rows[Path(path).name] = evaluate(run, qrels, metrics)
    print(format_table(rows, metrics), file=_human(args))
    if args.json:
        write_json({"results": rows}, args.json)
    return 0


def _index_model(index, model: str | None, device: str | None = None):  # type: ignore[no-untyped-def]
    """The model named on the command line, else the one recorded in the index manifest."""
    return index.load_model(model, device)


def cmd_index(args: argparse.Namespace) -> int:
    """Build an index and print its size."""
    from .indexing.builder import build_index, init_distributed
    from .indexing.index import Index
    from .modeling.encoder import ColBERT

    if args.from_vectors:
        from .indexing.vectors import build_from_vectors

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
        from .indexing.shards import build_set, open_set

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


def cmd_search(args: argparse.Namespace) -> int:
    """Search an index for a split's queries, evaluate, and optionally write the run."""
    from .evaluation.datasets import load_qrels, load_queries, write_run
    from .evaluation.metrics import evaluate, format_table, write_json
    from .indexing.index import Index
    from .retrievers import PlaidRetriever
    from .search.plaid import SearchConfig

    metrics = _metrics(args.metrics)
    _check_output(args.output)
    _check_output(args.json, "--json")
    if (args.query is None) == (args.data is None):
        raise MedColbertError("give --data (a BEIR folder's queries) or --query (one query), not both")
    if args.explain and args.query is None:
        raise MedColbertError("--explain explains one query's hits: give --query")
    from .indexing.shards import is_shard_set

    if is_shard_set(args.index):
        return _search_set(args)
    if args.ray:
        raise MedColbertError(f"--ray searches a shard set (built with index --shards); {args.index} is one index")
    index = Index.open(args.index)
    index.matching(args.where)   # a bad filter fails here, before the model loads
    if args.query is not None:
        return _search_one(args, index)
    args.k = args.k or 100
    data = Path(args.data)
    queries_all = load_queries(data / "queries.jsonl")
    qrels_path = data / "qrels" / f"{args.split}.tsv"
    if args.all_queries:
        qrels, queries = None, queries_all
    else:
        if not qrels_path.is_file():
            available = sorted(p.stem for p in (data / "qrels").glob("*.tsv")) if (data / "qrels").is_dir() else []
            raise MedColbertError(f"{args.data}: no qrels for split '{args.split}' (available: "
                                  f"{', '.join(available) or 'none'}); --all-queries searches every query unevaluated")
        qrels = load_qrels(qrels_path, queries_all)
        queries = {q: queries_all[q] for q in qrels}
    if qrels is not None:
        held = set(index.doc_ids)
        if not any(d in held for rels in qrels.values() for d in rels):
            raise MedColbertError(f"{args.index} holds none of the documents judged in {qrels_path}: the scores would "
                                  f"all be 0 (was the index built from another corpus?)")
    model = _index_model(index, args.model, args.device)
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


def _mode_knobs(args: argparse.Namespace) -> dict:
    """The search mode's knobs from the command line (none for plaid)."""
    if args.mode == "plaid":
        return {}
    return {"mode": args.mode, "fusion": args.fusion, "lexical_weight": args.lexical_weight,
            "pooled_weight": args.pooled_weight} if args.mode == "hybrid" else {"mode": args.mode}


def _search_set(args: argparse.Namespace) -> int:
    """search over a shard set: its shards as threads here, or on Ray actors with --ray."""
    from .evaluation.datasets import load_qrels, load_queries, write_run
    from .evaluation.metrics import evaluate, format_table, write_json
    from .search.plaid import SearchConfig

    if args.mode != "plaid":
        raise MedColbertError(f"--mode {args.mode}: a shard set is searched with plaid only (BM25's statistics are "
                              "per shard)")
    config = SearchConfig(args.ncells, args.threshold, args.ndocs, exact=args.exact, preset=args.preset)
    if args.ray:
        from .search.ray_shards import RayShardedSearcher

        searcher = RayShardedSearcher(args.index, _set_model(args), args.replicas, args.ray_address,
                                      on_missing="partial" if args.allow_partial else "fail",
                                      config={k: v for k, v in config.__dict__.items() if v is not None})
    else:
        from .search.sharded import ShardedSearcher

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
        data, k = Path(args.data), args.k or 100
        queries = load_queries(data / "queries.jsonl")
        qrels = None
        if not args.all_queries:
            qrels_path = data / "qrels" / f"{args.split}.tsv"
            if not qrels_path.is_file():
                raise MedColbertError(f"{args.data}: no qrels for split '{args.split}'")
            qrels = load_qrels(qrels_path, queries)
            queries = {q: queries[q] for q in qrels}
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
    from .indexing.index import Index
    from .indexing.shards import read_set

    first = read_set(args.index)["shards"][0]["name"]
    return Index.open(Path(args.index) / first).load_model(args.model, args.device)


def _search_one(args: argparse.Namespace, index) -> int:  # type: ignore[no-untyped-def]
    """Print one query's hits: rank, id, score and a text snippet (or JSON lines with --json -)."""
    import json

    from .retrievers import PlaidRetriever
    from .search.plaid import SearchConfig

    k = args.k or 10
    knobs = _mode_knobs(args)
    retriever = PlaidRetriever.from_index(index, index.load_model(args.model, args.device), SearchConfig(
        args.ncells, args.threshold, args.ndocs, exact=args.exact, preset=args.preset), where=args.where, **knobs)
    if args.explain and not index.has_documents:
        raise MedColbertError(f"--explain: {args.index} stores no document texts to show matches in")
    hits = retriever.hits({"q": args.query}, k=k)["q"]
    # The stored entry that matched (a split document's best passage) is the snippet.
    rows = retriever.searcher.documents(hits) if index.has_documents else [{"id": d, "score": s} for d, s, _ in hits]
    if args.explain and rows:
        from .explain import explain_texts

        # The stored entry that matched (a split document's best passage), as the row's text is; one batch.
        notes = explain_texts(retriever.searcher.model, args.query, [row.get("text", "") for row in rows],
                              [hit[1] for hit in hits], lexical=args.mode != "plaid")
        for row, note in zip(rows, notes):
            row["explanation"] = note
    if args.json:
        from .evaluation.metrics import write_json

        write_json({"query": args.query, "k": k, "hits": rows}, args.json)
    out = _human(args)
    color = out.isatty() and os.environ.get("NO_COLOR") is None
    for rank, row in enumerate(rows, start=1):
        if "explanation" in row:
            from .explain import render

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


def cmd_update(args: argparse.Namespace) -> int:
    """Apply additions, deletions and compaction to an index."""
    from .evaluation.datasets import check_row_id, iter_lines
    from .indexing.index import Index

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
        from .indexing.builder import CorpusSource

        for doc_id, text, meta in CorpusSource(args.add).iter_records():
            documents[doc_id] = text
            if meta:
                metadata[doc_id] = meta
    if ids or documents:
        from .indexing.encoded import EncodedDocuments

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


def cmd_check(args: argparse.Namespace) -> int:
    """Verify an index's files against their checksums."""
    from .indexing.index import Index

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


def cmd_interpolate(args: argparse.Namespace) -> int:
    """Write a WiSE-FT interpolation of two checkpoints."""
    import torch

    from .modeling.checkpoint import interpolate_colbert

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(args.dtype)
    print(f"wrote {interpolate_colbert(args.model, args.start, args.alpha, args.output, dtype=dtype)}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Write a checkpoint in another layout."""
    from . import ColBERT

    model = ColBERT.from_pretrained(args.model, device="cpu", dtype="float32")
    print(f"wrote {model.save_pretrained(args.output, format=args.format)} ({args.format} layout, from {model.layout})")
    return 0


_CHECK_TEXTS = ["do statins cause muscle pain?", "Statin therapy is associated with myopathy and muscle pain.",
                "what is the first-line drug for type 2 diabetes in an adult with kidney disease and obesity?",
                "Metformin (a biguanide) lowers hepatic glucose output; HbA1c falls by about 1%."]


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """Export the encoder to ONNX and check it against torch."""
    from .modeling.onnx_export import export_onnx

    if args.data:
        from .evaluation.datasets import load_beir

        data = load_beir(args.data, args.split)
        queries = list(data.queries.values())
        docs = data.texts(sorted(data.corpus)[: args.check_docs])
    else:
        queries, docs = _CHECK_TEXTS, _CHECK_TEXTS
    from . import ColBERT

    model = ColBERT.from_pretrained(args.model, device="cpu", dtype="float32")
    figures = export_onnx(model, args.output, queries, docs, int8=not args.no_int8)
    figures.update(model=model.name, queries=len(queries), documents=len(docs))
    for kind in ("float32", "int8"):
        if kind in figures:
            f = figures[kind]
            print(f"{kind}: max abs diff queries {f['queries_max_abs_diff']:.2e}, documents {f['documents_max_abs_diff']:.2e}; "
                  f"lowest cosine {min(f['queries_min_cosine'], f['documents_min_cosine']):.4f}"
                  + ("" if kind == "float32" else (" (kept)" if f["kept"] else " (below 0.99: not written)")))
    if args.json:
        from .fsutil import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    """Mine hard negatives and write triplets."""
    from .evaluation.datasets import load_beir, load_corpus
    from .training.data import beir_to_triplets, pairs_to_triplets, write_triplets
    from .training.mining import mine_negatives, plaid_stage

    try:
        window = tuple(int(x) for x in args.window.split(","))
        assert len(window) == 2
    except (ValueError, AssertionError):
        raise MedColbertError(f"--window must be START,END, got {args.window!r}") from None
    if args.data:
        data = load_beir(args.data, args.split)
        triplets = beir_to_triplets(data)
        corpus = {d: doc.full_text for d, doc in data.corpus.items()}
    else:
        triplets = pairs_to_triplets(args.input)
        corpus = {f"p{i}": t for i, t in enumerate(dict.fromkeys(p for t in triplets for p in t.pos))}
    if args.corpus:
        corpus = {d: doc.full_text for d, doc in load_corpus(args.corpus).items()}
    if args.model:
        from .modeling.encoder import ColBERT

        if not args.index:
            raise MedColbertError("--model needs --index (where to build or reuse the PLAID index)")
        retriever = plaid_stage(ColBERT.from_pretrained(args.model), corpus, args.index)
    else:
        from .retrievers import BM25Retriever

        retriever = BM25Retriever(corpus)
    mined = mine_negatives(triplets, corpus, retriever, n_negatives=args.negatives, window=window,  # type: ignore[arg-type]
                           near_duplicate=args.near_duplicate, seed=args.seed)
    write_triplets(args.output, mined)
    print(f"{len(mined)} triplets, {sum(len(t.neg) for t in mined) / len(mined):.2f} negatives each -> {args.output}")
    return 0


def cmd_make_mix(args: argparse.Namespace) -> int:
    """Build the medical training mix."""
    import json

    from .training.mix import build_medical_mix

    _, report = build_medical_mix(args.data_root, args.output, n_negatives=args.negatives, seed=args.seed,
                                  consumer_health=args.consumer_health, teacher=args.teacher,
                                  teacher_max_length=args.teacher_max_length, miner=args.miner,
                                  meqsum=args.meqsum, shared=not args.no_shared, triplet_sets=args.triplets_dataset,
                                  triplet_limit=args.triplets_limit)
    print(json.dumps(report, indent=2))
    return 0


def cmd_panel(args: argparse.Namespace) -> int:
    """Write the real-question panel report from recorded experiments."""
    from .evaluation.panel import write_panel

    path = write_panel(args.folders, args.output, args.base, args.reference)
    print(path.read_text(), end="")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run an experiment file."""
    from .experiment import ExperimentConfig, ExperimentDrift, run_experiment

    cfg = ExperimentConfig.from_yaml(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    try:
        run_experiment(cfg, log=_log)
    except ExperimentDrift as exc:
        print((cfg.out / "results.md").read_text())
        print(f"medcolbert experiment: {exc}", file=sys.stderr)
        return 3
    print((cfg.out / "results.md").read_text())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP service until interrupted."""
    try:
        import uvicorn

        from .service import create_app, read_api_key, timed_http_protocol
    except ImportError as exc:
        raise MedColbertError(f"serving needs FastAPI, uvicorn and prometheus-client: pip install 'medcolbert[serve]' ({exc})") from None
    from .indexing.shards import is_shard_set, read_set
    from .indexing.storage import read_manifest

    api_key = read_api_key(args.api_key_file)
    if is_shard_set(args.index):
        from .shard_service import create_shard_app

        read_set(args.index)   # a broken set fails here, before the server starts
        if args.first_stage:
            raise MedColbertError("--first-stage: a shard set is served by PLAID only")
        app = create_shard_app(args.index, args.model, api_key=api_key, ray=args.ray, replicas=args.replicas,
                               ray_address=args.ray_address, allow_partial=args.allow_partial)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    http=timed_http_protocol(app.state.service.limits.header_timeout_s))
        return 0
    if args.ray:
        raise MedColbertError(f"--ray serves a shard set (built with index --shards); {args.index} is one index")
    read_manifest(Path(args.index))  # a wrong path fails here, before the server starts
    try:
        app = create_app(args.index, args.model, api_key=api_key,
                         batching={"auto": None, "on": True, "off": False}[args.batching], first_stages=args.first_stage)
    except ValueError as exc:  # an unknown --first-stage, refused before the server starts
        raise MedColbertError(f"--first-stage: {exc}") from None
    limits = app.state.service.limits
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                http=timed_http_protocol(limits.header_timeout_s))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run a training config."""
    from .training.trainer import train

    final = train(args.config, max_steps=args.max_steps, output_dir=args.output_dir)
    print(f"final model: {final}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, devices, whether the compiled PLAID stages are built, and the default model."""
    import platform

    import torch

    from . import __version__
    from .modeling.checkpoint import BASE_MODEL_ID, release_model_path
    from .machine import cpu_features, cpu_model
    from .modeling.precision import choose_query_precision
    from .search import cpu_kernel

    kernel = cpu_kernel.load()
    try:
        import faiss

        faiss_line = f"{faiss.__version__} ({'GPU' if hasattr(faiss, 'StandardGpuResources') else 'CPU only'})"
    except ImportError:
        faiss_line = "not installed"
    default = release_model_path()
    lines = [
        ("medcolbert", __version__),
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__}, {torch.get_num_threads()} CPU threads, CPU capability "
                  f"{torch.backends.cpu.get_cpu_capability()}"),
        ("cuda", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
         if torch.cuda.is_available() else "not available"),
        ("faiss", faiss_line),
        ("compiled PLAID stages", kernel.path if kernel is not None else
         "not in use (not built at install, or MEDCOLBERT_PLAID_KERNEL=torch): search runs the torch engine"),
        ("default model", str(default) if default is not None else f"{BASE_MODEL_ID} (no released checkpoint here)"),
        ("cpu", cpu_model()),
        ("cpu features", ", ".join(cpu_features()) or "not read"),
        ("PLAID loops", "none (torch engine)" if kernel is None else
         f"{kernel.isa} (this CPU runs: {', '.join(kernel.isas())}; MEDCOLBERT_PLAID_ISA caps it)" + (
             "; hand-written lookup and decompression loops" if kernel.isa != "portable" else
             "; compiler-vectorised C")),
    ]
    if args.precision:
        from .modeling.encoder import ColBERT

        model = ColBERT.from_pretrained(args.model, device="cpu")
        model.trace_queries = True
        got = choose_query_precision(model, remeasure=True)
        times = ", ".join(f"{k} {v} ms" for k, v in got.get("p50_ms", {}).items())
        cos = ", ".join(f"{k} {v}" for k, v in got.get("min_cosine", {}).items())
        lines.append(("query precision", f"{got['chosen']} for {model.name} on this CPU ({got['reason']}; one "
                                         f"query p50: {times}; min cosine to fp32: {cos})"))
    else:
        lines.append(("query precision", "chosen when a search starts; --precision measures it now"))
    lines += _exact_stage_lines(args.index, kernel is not None)
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def _exact_stage_lines(index_path: str | None, compiled: bool) -> list[tuple[str, str]]:
    """`info`'s lines on the PLAID exact stage: measured now for an index, else what this CPU has remembered."""
    import os

    from .machine import cpu_id, stored
    from .search.engine import choose_exact_stage

    def describe(entry: dict) -> str:
        times = ", ".join(f"{k} {v} ms" for k, v in entry.get("best_ms", {}).items())
        return f"{entry['chosen']} ({entry.get('reason', 'measured')}" + (f"; best of 21 calls over {entry['vectors']} vectors: {times})"
                                                                         if times else ")")

    if not compiled:
        return [("exact stage", "torch engine (the compiled stages are not in use)")]
    if index_path is not None:
        from .indexing.index import Index
        from .search.engine import PlaidEngine

        engine = PlaidEngine(Index.open(index_path), "cpu")
        return [("exact stage", describe(choose_exact_stage(engine, remeasure=True)))]
    forced = os.environ.get("MEDCOLBERT_EXACT_STAGE", "auto")
    if forced != "auto":
        return [("exact stage", f"{forced} (forced by MEDCOLBERT_EXACT_STAGE)")]
    mine = {k: v for k, v in stored("exact-stage").items() if k.startswith(cpu_id() + "|") and isinstance(v, dict)}
    if not mine:
        return [("exact stage", "chosen when an index is first searched on this CPU; --index PATH measures it now")]
    return [(f"exact stage ({key.rsplit('|', 2)[-2]}, {key.rsplit('|', 1)[-1]})", describe(entry))
            for key, entry in sorted(mine.items())]


def cmd_compare(args: argparse.Namespace) -> int:
    """Write the HTML report comparing two runs query by query."""
    from .evaluation.compare import compare_runs, report_html
    from .evaluation.datasets import load_beir, load_qrels, read_run
    from .evaluation.metrics import parse_metric
    from .fsutil import atomic_write_text

    if (args.data is None) == (args.qrels is None):
        raise MedColbertError("give --data (a BEIR folder) or --qrels (a qrels file), not both")
    parse_metric(args.metric)   # an unknown metric fails before anything is read
    if not args.output.endswith((".html", ".htm")):
        raise MedColbertError(f"--output {args.output!r}: the report is HTML; name it .html")
    names = tuple(args.names.split(",")) if args.names else (Path(args.run_a).stem, Path(args.run_b).stem)
    if len(names) != 2 or not all(n.strip() for n in names):
        raise MedColbertError(f"--names takes two names separated by a comma, got {args.names!r}")
    queries: dict[str, str] = {}
    snippet = None
    if args.data is not None:
        data = load_beir(args.data, args.split)
        qrels, queries, corpus = data.qrels, data.queries, data.corpus
        snippet = lambda d: corpus[d].full_text if d in corpus else None  # noqa: E731
    else:
        qrels, corpus = load_qrels(args.qrels), None
        if args.index:
            from .indexing.index import Index

            index = Index.open(args.index)
            if not index.has_documents:
                raise MedColbertError(f"--index {args.index} stores no texts to take snippets from")
            snippet = lambda d: index.document(d)["text"] if index.passages_of(d) else None  # noqa: E731
    # A run naming documents the corpus lacks is refused with the file and line (read_run checks ids).
    run_a = read_run(args.run_a, corpus=corpus)
    run_b = read_run(args.run_b, corpus=corpus)
    comparison = compare_runs(run_a, run_b, qrels, args.metric, names)  # type: ignore[arg-type]
    page = report_html(comparison, run_a, run_b, qrels, queries, snippet, shown=args.shown)
    atomic_write_text(Path(args.output), page)
    print(f"{names[0]} {comparison['mean'][0]:.4f} vs {names[1]} {comparison['mean'][1]:.4f} {args.metric} over "
          f"{comparison['queries']} queries (wins {comparison['wins']}, ties {comparison['ties']}, losses "
          f"{comparison['losses']}, paired t p = {comparison['p_paired_t']:.3g}); report: {args.output}")
    return 0


COMMANDS = {"info": cmd_info, "compare": cmd_compare, "bm25": cmd_bm25, "rerank": cmd_rerank, "index": cmd_index, "search": cmd_search,
            "update": cmd_update, "check": cmd_check, "interpolate": cmd_interpolate, "convert": cmd_convert,
            "export-onnx": cmd_export_onnx, "evaluate": cmd_evaluate, "mine": cmd_mine, "make-mix": cmd_make_mix,
            "train": cmd_train, "experiment": cmd_experiment, "panel": cmd_panel, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `medcolbert` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (MedColbertError, ValueError) as exc:
        # Bad input is reported in one line; MEDCOLBERT_DEBUG=1 shows the traceback for bug reports.
        if os.environ.get("MEDCOLBERT_DEBUG"):
            raise
        print(f"medcolbert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file the command could not read or write: one line with the path and the system's reason.
        if os.environ.get("MEDCOLBERT_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"medcolbert {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished document chunks stay cached and the next run resumes from them",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
