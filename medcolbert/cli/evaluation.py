"""Evaluation commands: evaluate, experiment, panel, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import MedColbertError
from ..validation import int_option
from .common import _log, _metrics, _human, _check_output, _add_output_args


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

def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate run files and print one row each."""
    from ..evaluation.datasets import load_beir, load_qrels, read_run
    from ..evaluation.metrics import evaluate, format_table, write_json

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

def _parser_experiment(sub: argparse._SubParsersAction) -> None:
    """The `experiment` command's options."""
    p = sub.add_parser("experiment", help="run an experiment file: systems x data sets, tables, significance, plots",
                       description="Run every system of the YAML file on every data set; write the results "
                                   "table (markdown + JSON), TREC runs, per-query scores, paired significance "
                                   "against the baseline and plots under the output folder. Fails (exit 3) "
                                   "when a result drifts past the tolerance from the scores the file expects.")
    p.add_argument("config", help="experiment YAML (see experiments/README.md)")
    p.add_argument("--output-dir", default=None, help="override the output folder")

def cmd_experiment(args: argparse.Namespace) -> int:
    """Run an experiment file."""
    from ..experiment import ExperimentConfig, ExperimentDrift, run_experiment

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

def _parser_panel(sub: argparse._SubParsersAction) -> None:
    """The `panel` command's options."""
    p = sub.add_parser("panel", help="the real-question panel from recorded experiments: each set, paired tests, release rule",
                       description="Reads results.json and perquery/ of experiment folders (e.g. experiments/quality/panel and "
                                   "experiments/quality/panel/rerank) and writes PANEL.md and panel.json: every system on each set "
                                   "against the untuned base and a reference model, and issue 29's release rule.")
    p.add_argument("folders", nargs="+", help="experiment output folders")
    p.add_argument("--base", default="MiniLM (base)", help="the untuned base's system name (default: MiniLM (base))")
    p.add_argument("--reference", default="dense-minilm-v2", help="second comparison (default: dense-minilm-v2)")
    p.add_argument("--output", default="experiments/quality/panel/report", help="folder for PANEL.md and panel.json")

def cmd_panel(args: argparse.Namespace) -> int:
    """Write the real-question panel report from recorded experiments."""
    from ..evaluation.panel import write_panel

    path = write_panel(args.folders, args.output, args.base, args.reference)
    print(path.read_text(), end="")
    return 0

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

def cmd_compare(args: argparse.Namespace) -> int:
    """Write the HTML report comparing two runs query by query."""
    from ..evaluation.compare import compare_runs, report_html
    from ..evaluation.datasets import load_beir, load_qrels, read_run
    from ..evaluation.metrics import parse_metric
    from ..fsutil import atomic_write_text

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
            from ..indexing.index import Index

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


def _parser_bench(sub: argparse._SubParsersAction) -> None:
    from ..bench import BENCHMARKS

    p = sub.add_parser("bench", help="run one of the benchmarks (without a name: list them)",
                       description="Run a benchmark; its records go where its --out says. 'medcolbert bench NAME "
                                   "--help' shows one benchmark's options.",
                       epilog="benchmarks: " + "; ".join(f"{n}: {w}" for n, (_, w) in BENCHMARKS.items()))
    p.add_argument("name", nargs="?", choices=sorted(BENCHMARKS), metavar="NAME", help="the benchmark to run")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the named benchmark with its own options, or list them."""
    from ..bench.__main__ import main

    return main(([args.name] if args.name else []) + list(args.options))
