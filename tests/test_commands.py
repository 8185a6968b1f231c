"""Every command the project prints (README, docs/, experiments/ READMEs, model cards, Make targets) still runs from
where it says: the script, experiment or config it names exists, its options parse with that command's own parser
(the medcolbert CLI, a benchmark's, a script's), the Make target exists. Nothing is run past its argument parsing."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE_VARS = {"BIN": ".venv/bin", "DATA": "../shared/data/scifact", "SPLIT": "test", "VENV": ".venv",
             "PYTHON": "python3"}
# Options whose value is written, not read: such a path need not exist before the command runs.
OUTPUTS = {"--out", "--output", "--output-dir", "--json", "--work", "-o", "--save", "--trec", ">", "--screenshots"}
PATH_ROOTS = ("experiments/", "scripts/", "checkpoints/", "docs/", "tests/", "medcolbert/")
STARTS = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:[\w.-]+/)*(medcolbert|python3?|make|bash)(?=\s|$)")


class _Parsed(Exception):
    """Raised by the patched parse_args once a parser accepted the arguments."""


def _sources() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "checkpoints").glob("*/README.md")),
             *sorted((ROOT / "experiments").rglob("README.md"))]
    return [f for f in files if f.is_file()]


def _markdown_commands(text: str) -> list[str]:
    """Commands in code spans and fenced blocks (continuation lines joined)."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        found += [line.strip() for line in joined.splitlines()]
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [m.strip() for m in re.findall(r"`([^`\n]+)`", re.sub(r"\\\n\s*", " ", text))]
    return found


def _make_commands() -> tuple[set[str], list[str]]:
    """The Makefile's targets and its recipe lines, with the plain variables substituted."""
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", text, flags=re.M))
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    recipes = [line.strip() for line in lines if line.startswith("\t")]
    out = []
    for line in recipes:
        for name, value in MAKE_VARS.items():
            line = line.replace(f"$({name})", value)
        out.append(line)
    return targets, out


def _split(command: str) -> list[str]:
    """One command line -> its simple commands (split at ;, &&, ||, |; up to a redirection)."""
    command = re.sub(r"\s+\((?:writes|and|after|see|e\.g\.)\b.*$", "", command)   # a remark after the command
    parts = re.split(r"\s*(?:&&|\|\||;|\||,\s+then\b)\s*", command)
    return [p for p in (re.sub(r"\s[12]?>.*$", "", p).strip() for p in parts) if STARTS.match(p)]


def _placeholder(token: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z_0-9]+([./]\S*)?|[A-Z]", token)) or bool(re.search(r"/[A-Z][A-Z_0-9]+(/|\.|$)", token)) or any(c in token for c in "<>[]{}$*…") \
        or "..." in token


def _parses(parse, argv: list[str]) -> str | None:  # type: ignore[no-untyped-def]
    """None when `parse(argv)` reaches argument parsing and the arguments are accepted, else the parser's complaint."""
    real, real_error = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.error
    errors: list[str] = []

    def patched(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        real(self, args, namespace)
        raise _Parsed

    def error(self, message: str) -> None:  # type: ignore[no-untyped-def]
        errors.append(message)   # (subcommands' parsers report through their own instance: patched on the class)
        raise SystemExit(2)

    argparse.ArgumentParser.parse_args = patched  # type: ignore[method-assign]
    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    saved = sys.argv
    try:
        parse(argv)
    except _Parsed:
        return None
    except SystemExit as exc:
        return errors[0] if errors else f"exited {exc.code} before parsing its arguments"
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]
        argparse.ArgumentParser.error = real_error  # type: ignore[method-assign]
        sys.argv = saved
    return "never parsed its arguments"


def _check(tokens: list[str], targets: set[str]) -> str | None:
    """What is wrong with one simple command, or None."""
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
        tokens = tokens[1:]
    prog, args = Path(tokens[0]).name, tokens[1:]
    concrete = not any(_placeholder(t) for t in args)
    for i, t in enumerate(args):
        # (an experiment's TREC runs, under runs/, are not kept in git: the experiment beside them writes them)
        if t.startswith(PATH_ROOTS) and not _placeholder(t) and (i == 0 or args[i - 1] not in OUTPUTS) \
                and "/runs/" not in t \
                and not (ROOT / t.rstrip(".,")).exists():
            return f"names {t}, which does not exist"
    if prog == "make":
        missing = [t for t in args if "=" not in t and not t.startswith("-") and t not in targets and "*" not in t]
        return f"make target(s) {missing} do not exist" if missing else None
    if prog == "bash":
        return None   # its script was checked as a path above
    if prog.startswith("python"):
        if not args or args[0] == "-c":
            return None
        if args[:2] == ["-m", "medcolbert"]:
            prog, args = "medcolbert", args[2:]
        elif args[:2] == ["-m", "medcolbert.bench"]:
            prog, args = "medcolbert", ["bench", *args[2:]]
        elif args[0] == "-m" or args[0].startswith("-"):
            return None
        else:
            script = ROOT / args[0]
            if not script.is_file():
                return f"runs {args[0]}, which does not exist"
            if not concrete or "parse_args(" not in script.read_text():
                return None

            def run(argv: list[str]) -> None:
                sys.argv = [str(script), *argv]
                runpy.run_path(str(script), run_name="__main__")
            return _parses(run, args[1:])
    from medcolbert.cli import COMMANDS, build_parser

    if prog != "medcolbert" or not concrete or not args or args[0] not in COMMANDS:
        return None   # prose naming the program ("medcolbert v5"), or a line with placeholders
    problem = _parses(lambda argv: build_parser().parse_args(argv), args)
    if problem and re.search(r"arguments are required|expected (at least )?one argument", problem):
        # A command or option named in prose ("`medcolbert make-mix`", "`--from-vectors`"), not a line to run: a
        # fragment lacks what a whole command gives. Misspelt options and paths are still caught.
        return None
    if problem:
        return problem
    if args[0] == "bench" and len(args) > 1:
        from medcolbert.bench import BENCHMARKS
        import importlib

        module = importlib.import_module(f"medcolbert.bench.{BENCHMARKS[args[1]][0]}")
        problem = _parses(module.main, args[2:])
        if problem and not args[2:] and "arguments are required" in problem:
            return None   # a benchmark named in prose ("`medcolbert bench shards`")
        return problem
    from medcolbert.errors import MedColbertError
    from medcolbert.experiment import ExperimentConfig
    from medcolbert.training.trainer import TrainConfig

    try:
        if args[0] == "experiment":
            ExperimentConfig.from_yaml(ROOT / args[1])
        if args[0] == "train" and "--config" in args:
            TrainConfig.from_yaml(ROOT / args[args.index("--config") + 1])
    except (MedColbertError, ValueError) as exc:
        return str(exc)
    return None


def _usage_lines() -> list[tuple[str, str]]:
    """Command lines in the benchmarks' and scripts' docstrings and in the experiment files' comments."""
    out = []
    files = [*sorted((ROOT / "medcolbert" / "bench").glob("*.py")), *sorted((ROOT / "scripts").glob("*.py")),
             *sorted((ROOT / "experiments").rglob("*.yaml")), *sorted((ROOT / "experiments").rglob("*.py"))]
    for f in files:
        text = f.read_text()
        if f.suffix == ".py":
            text = (re.match(r'\s*(?:#.*\n)*\s*(?:"""|\'\'\')(.*?)(?:"""|\'\'\')', text, flags=re.S) or [None, ""])[1]
        else:
            text = "\n".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
        text = re.sub(r"\\\\?\n\s*", " ", text)   # continuation lines, also as written inside a docstring (\\)
        for line in text.splitlines():
            line = re.sub(r"^(?:Reproduce|Usage|Command|Run):\s*", "", line.strip())
            for part in re.findall(r"`([^`]+)`", line) if "`" in line else [line]:
                out += [(str(f.relative_to(ROOT)), c) for c in _split(part)]
    return out


def _all_commands() -> list[tuple[str, str]]:
    out = _usage_lines()
    for f in _sources():
        for line in _markdown_commands(f.read_text()):
            out += [(str(f.relative_to(ROOT)), c) for c in _split(line)]
    _, recipes = _make_commands()
    out += [("Makefile", c) for line in recipes for c in _split(line)]
    return out


def test_the_sources_hold_commands():
    commands = _all_commands()
    # The README's set-up and test commands, a benchmark, an experiment and a Make target are among them.
    assert len(commands) > 80
    text = " ".join(c for _, c in commands)
    for expected in ("medcolbert bench", "medcolbert experiment experiments/", "make "):
        assert expected in text


def test_every_printed_command_runs_from_its_place(monkeypatch):
    monkeypatch.chdir(ROOT)
    targets, _ = _make_commands()
    broken = []
    for where, command in _all_commands():
        try:
            tokens = shlex.split(command, comments=True)
        except ValueError:
            continue   # prose inside backticks, not a command line
        problem = _check(tokens, targets)
        if problem:
            broken.append(f"{where}: `{command}`: {problem}")
    assert not broken, "\n".join(broken)


def test_a_wrong_command_is_caught():
    targets, _ = _make_commands()
    assert "does not exist" in _check(["python", "scripts/no_such_script.py"], targets)
    assert "does not exist" in _check(["medcolbert", "experiment", "experiments/plaid-knobs-v6.yaml"], targets)
    assert _check(["medcolbert", "bench", "shards", "--no-such-option"], targets)
    assert _check(["make", "no-such-target"], targets)
    assert _check(["medcolbert", "bench", "shards", "--out", "x"], targets) is None


if __name__ == "__main__":
    pytest.main([__file__, "-q"])


@pytest.mark.parametrize("name", sorted(__import__("medcolbert.bench", fromlist=["BENCHMARKS"]).BENCHMARKS))
def test_every_benchmark_answers_help(name, capsys):
    from medcolbert.bench import run_benchmark

    with pytest.raises(SystemExit) as done:
        run_benchmark(name, ["--help"])
    assert done.value.code == 0
    assert f"medcolbert bench {name}" in capsys.readouterr().out


def test_the_bench_command_lists_and_refuses(capsys):
    from medcolbert.cli import main

    assert main(["bench"]) == 0
    listed = capsys.readouterr().out
    assert "shards-scale" in listed and "engines" in listed
    with pytest.raises(SystemExit) as done:
        main(["bench", "no-such-benchmark"])
    assert done.value.code == 2
    assert "invalid choice: 'no-such-benchmark'" in capsys.readouterr().err
