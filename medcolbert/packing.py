"""Byte strings as plain arrays: one uint8 array of their bytes and int64 offsets (how the index stores texts,
metadata, ids and vocabularies). A leaf module, so that the filter and lexical code below the index can use it."""

from __future__ import annotations

import numpy as np


def pack_strings(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as one uint8 array and int64 offsets [n + 1]."""
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in items]) if items else []
    return np.frombuffer(b"".join(items), dtype=np.uint8).copy(), offsets
