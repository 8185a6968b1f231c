"""The import layering docs/architecture.md describes, checked on the source (every import, including those inside
functions): lower layers never reach up."""

from __future__ import annotations

import ast
from pathlib import Path

import medcolbert

ROOT = Path(medcolbert.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """Every medcolbert module -> the medcolbert modules it imports (absolute names)."""
    out: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("medcolbert"):
                    found.add(target)
                    # `from . import x` / `from .search import cpu_kernel`: the names may be modules too
                    found.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("medcolbert"))
        out[name] = found
    return out


def _inside(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_layers_hold():
    graph = imports()
    assert len(graph) > 40   # the walk found the package
    top = ("medcolbert.cli", "medcolbert.service", "medcolbert.shard_service")
    rules = [
        # (who, may not import, except)
        (("medcolbert",), top, top + ("medcolbert.__main__",)),   # nothing below the front ends imports them
        (("medcolbert.indexing",), ("medcolbert.search",), ()),
        (("medcolbert.modeling",), ("medcolbert.indexing", "medcolbert.search", "medcolbert.retrievers",
                                    "medcolbert.training", "medcolbert.experiment"), ()),
        (("medcolbert.search",), ("medcolbert.retrievers", "medcolbert.training", "medcolbert.experiment",
                                  "medcolbert.pyterrier", "medcolbert.langchain"), ()),
        (("medcolbert.evaluation.datasets", "medcolbert.evaluation.metrics", "medcolbert.errors",
          "medcolbert.validation", "medcolbert.config", "medcolbert.fsutil", "medcolbert.filters"),
         ("medcolbert.modeling", "medcolbert.indexing", "medcolbert.search", "medcolbert.retrievers"), ()),
    ]
    # The benchmarks sit beside the front ends: only the command line and the benchmarks themselves import them (the
    # package's own helpers, medcolbert.bench, serve the experiment harness too).
    benches = {m for m in graph if m.startswith("medcolbert.bench.")}
    rules.append((("medcolbert",), tuple(benches), ("medcolbert.bench", "medcolbert.cli")))
    # The one sanctioned step down: the index opens the compiled kernel's loader (a leaf with no medcolbert imports).
    allowed = {("medcolbert.indexing.index", "medcolbert.search.cpu_kernel"), ("medcolbert.indexing.index", "medcolbert.search")}
    broken = []
    for who, forbidden, exempt in rules:
        for module, targets in graph.items():
            if not _inside(module, who) or _inside(module, exempt):
                continue
            for target in targets:
                if _inside(target, forbidden) and (module, target) not in allowed:
                    broken.append(f"{module} imports {target}")
    assert not broken, "\n".join(sorted(broken))
    leaf = graph["medcolbert.search.cpu_kernel"]
    assert not leaf, f"search/cpu_kernel.py must stay a leaf: it imports {sorted(leaf)}"
