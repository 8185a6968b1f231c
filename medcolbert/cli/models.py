"""Model commands: train, interpolate, convert, export-onnx, distill-query, and the training data's mine and make-mix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import MedColbertError
from ..validation import float_option, int_option
from .common import POSITIVE


def _parser_train(sub: argparse._SubParsersAction) -> None:
    """The `train` command's options."""
    p = sub.add_parser("train", help="fine-tune a ColBERT (or single-vector) model from a YAML config",
                       description="Train as the YAML config says (see experiments/README.md). An interrupted run "
                                   "resumes from its latest checkpoint when started again. Under torchrun every "
                                   "process takes a share of each batch (DistributedDataParallel).")
    p.add_argument("--config", required=True)
    p.add_argument("--max-steps", type=POSITIVE, default=None, help="override max_steps")
    p.add_argument("--output-dir", default=None, help="override output_dir")

def cmd_train(args: argparse.Namespace) -> int:
    """Run a training config."""
    from ..training.trainer import train

    final = train(args.config, max_steps=args.max_steps, output_dir=args.output_dir)
    print(f"final model: {final}")
    return 0

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

def cmd_interpolate(args: argparse.Namespace) -> int:
    """Write a WiSE-FT interpolation of two checkpoints."""
    import torch

    from ..modeling.checkpoint import interpolate_colbert

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(args.dtype)
    print(f"wrote {interpolate_colbert(args.model, args.start, args.alpha, args.output, dtype=dtype)}")
    return 0

def _parser_convert(sub: argparse._SubParsersAction) -> None:
    """The `convert` command's options."""
    p = sub.add_parser("convert", help="write a checkpoint in colbert-ai's, PyLate's or Sentence Transformers' layout",
                       description="Load a checkpoint in any layout medcolbert reads and write it in another, so that "
                                   "colbert-ai / RAGatouille, PyLate or Sentence Transformers' MultiVectorEncoder load "
                                   "it and encode as medcolbert does.")
    p.add_argument("--model", required=True, help="checkpoint folder, release name or hub id")
    p.add_argument("--format", required=True, choices=["colbert-ai", "pylate", "sentence-transformers"])
    p.add_argument("--output", required=True, help="folder to write")

def cmd_convert(args: argparse.Namespace) -> int:
    """Write a checkpoint in another layout."""
    from .. import ColBERT

    model = ColBERT.from_pretrained(args.model, device="cpu", dtype="float32")
    print(f"wrote {model.save_pretrained(args.output, format=args.format)} ({args.format} layout, from {model.layout})")
    return 0

_CHECK_TEXTS = ["do statins cause muscle pain?", "Statin therapy is associated with myopathy and muscle pain.",
                "what is the first-line drug for type 2 diabetes in an adult with kidney disease and obesity?",
                "Metformin (a biguanide) lowers hepatic glucose output; HbA1c falls by about 1%."]

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

def cmd_export_onnx(args: argparse.Namespace) -> int:
    """Export the encoder to ONNX and check it against torch."""
    from ..modeling.onnx_export import export_onnx

    if args.data:
        from ..evaluation.datasets import load_beir

        data = load_beir(args.data, args.split)
        queries = list(data.queries.values())
        docs = data.texts(sorted(data.corpus)[: args.check_docs])
    else:
        queries, docs = _CHECK_TEXTS, _CHECK_TEXTS
    from .. import ColBERT

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
        from ..fsutil import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0

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

def cmd_mine(args: argparse.Namespace) -> int:
    """Mine hard negatives and write triplets."""
    from ..evaluation.datasets import load_beir, load_corpus
    from ..training.data import beir_to_triplets, pairs_to_triplets, write_triplets
    from ..training.mining import mine_negatives, plaid_stage

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
        from ..modeling.encoder import ColBERT

        if not args.index:
            raise MedColbertError("--model needs --index (where to build or reuse the PLAID index)")
        retriever = plaid_stage(ColBERT.from_pretrained(args.model), corpus, args.index)
    else:
        from ..retrievers import BM25Retriever

        retriever = BM25Retriever(corpus)
    mined = mine_negatives(triplets, corpus, retriever, n_negatives=args.negatives, window=window,  # type: ignore[arg-type]
                           near_duplicate=args.near_duplicate, seed=args.seed)
    write_triplets(args.output, mined)
    print(f"{len(mined)} triplets, {sum(len(t.neg) for t in mined) / len(mined):.2f} negatives each -> {args.output}")
    return 0

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

def cmd_make_mix(args: argparse.Namespace) -> int:
    """Build the medical training mix."""
    import json

    from ..training.mix import build_medical_mix

    _, report = build_medical_mix(args.data_root, args.output, n_negatives=args.negatives, seed=args.seed,
                                  consumer_health=args.consumer_health, teacher=args.teacher,
                                  teacher_max_length=args.teacher_max_length, miner=args.miner,
                                  meqsum=args.meqsum, shared=not args.no_shared, triplet_sets=args.triplets_dataset,
                                  triplet_limit=args.triplets_limit)
    print(json.dumps(report, indent=2))
    return 0

def _parser_distill_query(sub: argparse._SubParsersAction) -> None:
    """The `distill-query` command's options."""
    p = sub.add_parser("distill-query", help="distil a model's query encoder into fewer layers (faster query "
                                             "encoding on CPUs without bfloat16 units; documents unchanged)",
                       description="Train a student of --num-layers of the model's layers to give its query vectors "
                                   "and pooled vector (no labels: the training splits' questions under --data), and "
                                   "write it to OUT/query_encoder/ (and into the model folder with --install). "
                                   "Interrupted runs resume from OUT/state.pt when started again.")
    p.add_argument("--model", default=None, help="the model to distil (default: the released medcolbert-minilm-v5)")
    p.add_argument("--data", default="../shared/data", help="folder holding medquad/, medical_question_pairs/, "
                                                            "consumer-health/, meqsum/ and scifact/ (default: "
                                                            "../shared/data)")
    p.add_argument("--out", required=True, help="run folder (state, log, the finished query_encoder/)")
    p.add_argument("--num-layers", type=int_option(1, 64), default=3, help="the student's layers (default: 3)")
    p.add_argument("--layers", default=None, metavar="I,J,...",
                   help="the teacher's layers the student starts from (default: the candidate closest to the "
                        "teacher before training)")
    p.add_argument("--steps", type=int_option(1, 1_000_000), default=3000, help="training steps (default: 3000)")
    p.add_argument("--batch-size", type=int_option(2, 4096), default=32, help="texts per step (default: 32)")
    p.add_argument("--lr", type=float_option(1e-7, 1.0), default=1.5e-4, help="peak learning rate (default: 1.5e-4)")
    p.add_argument("--pooled-weight", type=float_option(0.0, 100.0), default=1.0,
                   help="weight of the pooled vector's loss beside the token vectors' (default: 1)")
    p.add_argument("--layer-weight", type=float_option(0.0, 100.0), default=0.0,
                   help="weight of matching each student layer's states to the teacher's at that depth (default 0)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from this query_encoder/ folder's weights (e.g. an earlier run's) instead of the teacher's")
    p.add_argument("--seed", type=int_option(0, 2**31 - 1), default=42)
    p.add_argument("--install", action="store_true",
                   help="also copy the finished query_encoder/ into the model's folder (query_encoder='distilled')")

def cmd_distill_query(args: argparse.Namespace) -> int:
    """Distil the query encoder and report its fidelity on held-apart texts."""
    import shutil

    from ..modeling.checkpoint import resolve_model_folder
    from ..training.distill_query import DistillConfig, distill_query, question_texts

    layers = None
    if args.init is not None and not (Path(args.init) / "query_encoder.json").is_file():
        raise MedColbertError(f"--init {args.init}: no query_encoder.json there (give a query_encoder/ folder)")
    if args.layers is not None:
        try:
            layers = [int(x) for x in args.layers.split(",")]
        except ValueError:
            raise MedColbertError(f"--layers {args.layers!r}: expected comma-separated layer numbers, e.g. 0,3,5") from None
        if len(layers) != args.num_layers:
            raise MedColbertError(f"--layers names {len(layers)} layers but --num-layers is {args.num_layers}")
    folder, name = resolve_model_folder(args.model, prefer_release=True)
    texts, counts = question_texts(args.data, seed=args.seed)
    # The model as named (a release name rather than this machine's path), since the run's files record it.
    config = DistillConfig(model=str(args.model or name), out=args.out, num_layers=args.num_layers, layers=layers,
                           steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, sources=counts,
                           pooled_weight=args.pooled_weight, layer_weight=args.layer_weight, init=args.init)
    done = distill_query(config, texts)
    print(f"wrote {done}")
    if args.install:
        from ..fsutil import staged_folder

        with staged_folder(folder / done.name) as tmp:
            shutil.copytree(done, tmp, dirs_exist_ok=True)
        print(f"installed in {folder / done.name}")
    return 0
