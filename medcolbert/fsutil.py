"""Filesystem helpers for writes that must never leave a half-written result behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_folder(src: Path, dst: Path) -> None:
    """Move a finished folder to dst by renames only, replacing whatever folder was there."""
    if dst.exists():
        backup = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, backup)
        os.replace(src, dst)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
