"""What every command shares: option types and ranges, the data / model / output options, logging."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import MedColbertError
from ..validation import int_option


# Accepted ranges of the numeric options (argparse names the option and the range on a bad value).
K = int_option(1, 100_000)

POSITIVE = int_option(1)

DEFAULT_METRICS = "ndcg@10,map@100,recall@100,mrr@10"

def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

def _metrics(text: str) -> list[str]:
    from ..evaluation.metrics import parse_metrics

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

def _index_model(index, model: str | None, device: str | None = None,  # type: ignore[no-untyped-def]
                 query_encoder: str | None = None):
    """The model named on the command line, else the one recorded in the index manifest."""
    return index.load_model(model, device, query_encoder=query_encoder)


def _add_query_encoder_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--query-encoder", default="full", metavar="full|distilled|DIR",
                   help="encode queries with the full model (default), or with its distilled query encoder (the "
                        "model folder's query_encoder/, fewer layers: faster on CPUs without bfloat16 units; "
                        "documents and indexes are unchanged), or with the one in DIR")


def _add_shard_args(p: argparse.ArgumentParser, partial_help: str) -> None:
    """A shard set's options: served on Ray actors, where, how many replicas, and whether a partial answer is
    acceptable."""
    p.add_argument("--ray", action="store_true",
                   help="a shard set at --index (index --shards): its shards on Ray actors (default: threads here)")
    p.add_argument("--ray-address", default=None, help="with --ray: a running cluster (default: $RAY_ADDRESS, else local)")
    p.add_argument("--replicas", type=int_option(1, 16), default=1, help="with --ray: actors per shard (default: 1)")
    p.add_argument("--allow-partial", action="store_true", help=partial_help)
