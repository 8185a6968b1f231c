"""Filesystem helpers for writes that must never leave a half-written result behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


FAILPOINT_ENV = "MEDCOLBERT_FAILPOINT"


def failpoint(name: str) -> None:
    """Die at once (as kill -9 would) when $MEDCOLBERT_FAILPOINT names this point: crash tests use it to
    stop a real build or update between two of its writes. Unset, it costs one dictionary lookup."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os._exit(137)


def _backup_name(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.replaced")


def _usual_modes(folder: Path) -> None:
    """Give a staged folder the modes a plain mkdir/open would (mkdtemp makes it private: 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


def replace_folder(src: Path, dst: Path) -> None:
    """Move a finished folder to dst by renames only, replacing whatever folder was there.

    Between the two renames dst is briefly absent; the old folder then sits at `.NAME.replaced` beside
    it, and `recover_replaced(dst)` (run when a folder is opened) puts it back after a crash there.
    """
    recover_replaced(dst)
    _usual_modes(src)
    if dst.exists():
        backup = _backup_name(dst)
        os.replace(dst, backup)
        failpoint("replace-between-renames")
        os.replace(src, dst)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def recover_replaced(dst: Path) -> bool:
    """Undo a replacement cut off between its renames: restore the old folder if dst is missing; True if it did."""
    backup = _backup_name(dst)
    if not backup.exists():
        return False
    if dst.exists():   # the new folder made it; only the old one's removal was cut off
        shutil.rmtree(backup, ignore_errors=True)
        return False
    os.replace(backup, dst)
    return True


@contextlib.contextmanager
def staged_folder(dst: Path) -> Iterator[Path]:
    """A temporary folder beside dst that replaces dst when the block finishes, and vanishes if it fails."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        replace_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    """Write a text file through a temporary file in the same folder, renamed over the target at the end."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
