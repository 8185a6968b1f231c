"""`python -m medcolbert.bench NAME [OPTIONS]`: run one benchmark (without NAME: list them)."""

from __future__ import annotations

import sys

from . import BENCHMARKS, run_benchmark


def main(argv: list[str] | None = None) -> int:
    """List the benchmarks, or run the one named first with the remaining arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print("usage: medcolbert bench NAME [OPTIONS]   (or python -m medcolbert.bench NAME ...; NAME --help: its options)\n")
        for name, (_, what) in BENCHMARKS.items():
            print(f"  {name:<14} {what}")
        return 0
    if argv[0] not in BENCHMARKS:
        print(f"medcolbert bench: error: unknown benchmark {argv[0]!r}; one of: {', '.join(sorted(BENCHMARKS))}",
              file=sys.stderr)
        return 2
    return run_benchmark(argv[0], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
