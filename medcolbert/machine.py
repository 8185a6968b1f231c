"""This machine: the CPU's name, and choices measured on it once and remembered (query precision, exact stage)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (lscpu's "Model name"), for records and for cache keys."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    """$MEDCOLBERT_CACHE, else ~/.cache/medcolbert."""
    root = os.environ.get("MEDCOLBERT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "medcolbert"


def remembered(name: str, key: str, measure: Callable[[], dict], valid: Callable[[dict], bool],
               remeasure: bool = False) -> dict:
    """The entry stored under key in the cache file `name`.json, else measure() stored there (atomically).

    An unreadable file or an entry that is not valid() is measured again; a read-only home still gets the
    measured entry, just not remembered.
    """
    path = cache_dir() / f"{name}.json"
    known = stored(name)
    entry = None if remeasure else known.get(key)
    if isinstance(entry, dict) and valid(entry):
        return entry
    entry = measure()
    known[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return entry


def stored(name: str) -> dict[str, Any]:
    """Everything remembered in the cache file `name`.json ({} if none or unreadable)."""
    try:
        got = json.loads((cache_dir() / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}
