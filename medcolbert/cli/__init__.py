"""The `medcolbert` command line: one module per command group (retrieval, models, evaluation, serving, info),
each command's parser beside its function; this module assembles the parser and dispatches."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import MedColbertError
from .retrieval import (_parser_bm25, _parser_rerank, _parser_index, _parser_search, _parser_update,
    _parser_check, cmd_bm25, cmd_rerank, cmd_index, cmd_search, cmd_update, cmd_check)
from .models import (_parser_train, _parser_interpolate, _parser_convert, _parser_export_onnx, _parser_mine,
    _parser_make_mix, _parser_distill_query, cmd_train, cmd_interpolate, cmd_convert, cmd_export_onnx, cmd_mine,
    cmd_make_mix, cmd_distill_query)
from .evaluation import (_parser_evaluate, _parser_experiment, _parser_panel, _parser_compare, _parser_bench,
    cmd_evaluate, cmd_experiment, cmd_panel, cmd_compare, cmd_bench)
from .serving import _parser_serve, cmd_serve
from .info import _parser_info, cmd_info


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="medcolbert",
        description="Late-interaction (ColBERT) retrieval, reranking and evaluation for medical text.",
        epilog="Run 'medcolbert COMMAND --help' for the options of one command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_parser_bm25, _parser_rerank, _parser_index, _parser_search, _parser_update, _parser_check,
                _parser_interpolate, _parser_convert, _parser_export_onnx, _parser_evaluate, _parser_mine,
                _parser_make_mix, _parser_panel, _parser_experiment, _parser_serve, _parser_train, _parser_info,
                _parser_compare, _parser_bench, _parser_distill_query):
        add(sub)
    return parser


COMMANDS = {"info": cmd_info, "compare": cmd_compare, "bm25": cmd_bm25, "rerank": cmd_rerank, "index": cmd_index,
            "search": cmd_search,
            "update": cmd_update, "check": cmd_check, "interpolate": cmd_interpolate, "convert": cmd_convert,
            "export-onnx": cmd_export_onnx, "evaluate": cmd_evaluate, "mine": cmd_mine, "make-mix": cmd_make_mix,
            "train": cmd_train, "experiment": cmd_experiment, "panel": cmd_panel, "serve": cmd_serve,
            "bench": cmd_bench, "distill-query": cmd_distill_query}


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
