"""The compiled PLAID stages for CPU (search/_plaid_cpu.c), when the install could build them.

`load()` returns None where the extension is missing (no C compiler at install time) or disabled with
MEDCOLBERT_PLAID_KERNEL=torch; the engine then runs its torch stages, which give the same results.
Each loop exists for AVX-512, AVX2 with FMA and portable C (and the exact stage's lookup for NEON on ARM), chosen
at run time by what the CPU supports; MEDCOLBERT_PLAID_ISA=avx2|portable (or `CpuKernel.set_isa`) caps the choice,
for tests and comparisons.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import platform
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

_P = ctypes.c_void_p
_I = ctypes.c_int64
# The kernel's instruction-set levels on this architecture, narrowest first (their position is the level number in
# the C source: x86-64 portable / AVX2 / AVX-512; AArch64 portable / NEON).
ISAS = ("portable", "neon") if platform.machine().lower() in ("aarch64", "arm64") else ("portable", "avx2", "avx512")


class CpuKernel:
    """Typed wrappers around the shared library's functions."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.mc_candidates.restype = _I
        lib.mc_candidates.argtypes = [_P, _I, _I, _P, _P, _P, _P, _P, _I, ctypes.c_float, _I, _I, _I, _P, _P]
        lib.mc_decompress.restype = None
        lib.mc_decompress.argtypes = [_P, _P, _P, _I, _P, _P, _I, _P, _I, _P, _P]
        lib.mc_segment_maxsim.restype = None
        lib.mc_segment_maxsim.argtypes = [_P, _I, _P, _P, _I, _P]
        lib.mc_exact_lookup.restype = None
        lib.mc_exact_lookup.argtypes = [_P, _I, _P, _I, _I, _P, _P, _P, _P, _P, _I, _P]
        lib.mc_lut_width.restype = _I
        lib.mc_lut_width.argtypes = [_I]
        lib.mc_int8_rows_dot.restype = None
        lib.mc_int8_rows_dot.argtypes = [_P, _I, _I, _P, _P, _P]
        lib.mc_revision.restype = _I
        lib.mc_revision.argtypes = []
        lib.mc_isa.restype = _I
        lib.mc_isa.argtypes = []
        lib.mc_set_isa.restype = _I
        lib.mc_set_isa.argtypes = [_I]
        self.lib, self.path = lib, path
        # Which loops these are (bumped in the C source when one changes speed): keys remembered choices.
        self.revision = int(lib.mc_revision())
        self.widest = ISAS[int(lib.mc_set_isa(-1))]

    @property
    def isa(self) -> str:
        """The instruction set the loops run with now: avx512, avx2 or portable (neon or portable on ARM)."""
        return ISAS[int(self.lib.mc_isa())]

    def set_isa(self, isa: str | None) -> str:
        """Run the loops with `isa` (None: the widest this CPU supports); returns the set in use.

        A set wider than the CPU supports is refused (its instructions would fault)."""
        if isa is None:
            return ISAS[int(self.lib.mc_set_isa(-1))]
        if isa not in ISAS:
            raise ValueError(f"PLAID kernel instruction set must be one of {', '.join(ISAS)}, got {isa!r}")
        if ISAS.index(isa) > ISAS.index(self.widest):
            raise ValueError(f"this CPU runs the PLAID kernel's {self.widest} loops at most, not {isa}")
        return ISAS[int(self.lib.mc_set_isa(ISAS.index(isa)))]

    @contextlib.contextmanager
    def using(self, isa: str) -> Iterator[CpuKernel]:
        """Run the loops with `isa` inside the block (the process-wide setting: not for concurrent searches)."""
        was = self.isa
        self.set_isa(isa)
        try:
            yield self
        finally:
            self.set_isa(was)

    def isas(self) -> tuple[str, ...]:
        """The instruction sets this CPU can run the loops with, narrowest first."""
        return ISAS[:ISAS.index(self.widest) + 1]

    def candidates(self, table: np.ndarray, ivf_offsets: np.ndarray, ivf_docs: np.ndarray, pair_offsets: np.ndarray,
                   pair_codes: np.ndarray, deleted: np.ndarray | None, ncells: int, threshold: float, ndocs: int,
                   n_exact: int, slots: np.ndarray, exact_share: int = 0) -> np.ndarray:
        """Stages 1-3 for one query's centroid scores table [C + 1, Lq]: the surviving document positions.

        exact_share > 0: n_exact is a minimum, and stage 3 keeps the survivors' count / exact_share if more."""
        C, Lq = table.shape[0] - 1, table.shape[1]
        out = np.empty(len(slots), dtype=np.int32)
        n = self.lib.mc_candidates(_ptr(table, np.float32), C, Lq, _ptr(ivf_offsets, np.int64),
                                   _ptr(ivf_docs, np.int32), _ptr(pair_offsets, np.int64), _ptr(pair_codes, np.int32),
                                   None if deleted is None else _ptr(deleted, np.uint8), ncells, threshold, ndocs,
                                   n_exact, exact_share, _ptr(slots, np.int32), out.ctypes.data)
        if n < 0:
            raise MemoryError("PLAID candidate stages: out of memory")
        return out[:n]

    def decompress(self, codes: np.ndarray, packed: np.ndarray, centroids: np.ndarray, scales: np.ndarray,
                   byte_table: np.ndarray, rows: np.ndarray | None = None, out: np.ndarray | None = None,
                   norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decompressed vectors [n, dim] (not normalized) and their norms, of `rows` of codes/packed (all rows if None).

        centroids are int8 [C, dim] with float32 scales [C], as the codec stores them.
        """
        n = len(codes) if rows is None else len(rows)
        dim = centroids.shape[1]
        if packed.shape[1:] != (dim // byte_table.shape[1],) or packed.shape[0] != len(codes):
            raise ValueError(f"packed residuals have shape {packed.shape}, expected ({len(codes)}, {dim // byte_table.shape[1]})")
        if rows is not None and n and (int(rows.min()) < 0 or int(rows.max()) >= len(codes)):
            raise IndexError(f"rows out of range for {len(codes)} vectors")
        out = np.empty((n, dim), dtype=np.float32) if out is None else out
        norms = np.empty(n, dtype=np.float32) if norms is None else norms
        if out.shape != (n, dim) or norms.shape != (n,):
            raise ValueError(f"output buffers of shapes {out.shape} and {norms.shape} for {n} vectors of {dim}")
        self.lib.mc_decompress(None if rows is None else _ptr(rows, np.int64), _ptr(codes, np.int32),
                               _ptr(packed, np.uint8), n, _ptr(centroids, np.int8), _ptr(scales, np.float32), dim,
                               _ptr(byte_table, np.float32), byte_table.shape[1], _ptr(out, np.float32),
                               _ptr(norms, np.float32))
        return out, norms

    def segment_maxsim(self, sim: np.ndarray, lens: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
        """Per group of consecutive rows of sim [rows, Lq] (sizes lens; row r divided by norms[r] if given): the sum of the column maxima."""
        if int(lens.sum()) != sim.shape[0] or (norms is not None and norms.shape != (sim.shape[0],)):
            raise ValueError(f"{sim.shape[0]} rows of scores for groups of {int(lens.sum())} rows "
                             f"and {None if norms is None else len(norms)} norms")
        out = np.empty(len(lens), dtype=np.float32)
        self.lib.mc_segment_maxsim(_ptr(sim, np.float32), sim.shape[1],
                                   None if norms is None else _ptr(norms, np.float32), _ptr(lens, np.int64), len(lens),
                                   out.ctypes.data)
        return out

    def exact_lut(self, table: np.ndarray, lut: np.ndarray, codes: np.ndarray, packed: np.ndarray, norms: np.ndarray,
                  starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Exact MaxSim per document from compressed vectors: (centroid score + residual byte lookups) / norm, max, sum.

        table [C', Lq] centroid scores indexed by codes; lut [nbytes, 256, lut_width(Lq)] (zeros past Lq); codes [n],
        packed [n, nbytes] and norms [n] per vector; document d is rows starts[d] .. starts[d] + lens[d]. Returns
        float32 [len(lens)].
        """
        Lq, nbytes = table.shape[1], packed.shape[1]
        if lut.shape != (nbytes, 256, self.lut_width(Lq)) or len(codes) != len(packed) or norms.shape != (len(codes),) \
                or starts.shape != lens.shape:
            raise ValueError(f"lookup table {lut.shape}, {len(codes)} codes, packed {packed.shape}, {len(norms)} norms "
                             f"and {len(starts)} starts / {len(lens)} lengths do not fit together")
        if len(lens) and (int((starts + lens).max()) > len(codes) or int(starts.min()) < 0):
            raise IndexError(f"document rows out of range for {len(codes)} vectors")
        if len(codes) and int(codes.max()) >= table.shape[0]:
            raise IndexError(f"a code past the {table.shape[0]} rows of the centroid score table")
        out = np.empty(len(lens), dtype=np.float32)
        self.lib.mc_exact_lookup(_ptr(table, np.float32), Lq, _ptr(lut, np.float32), lut.shape[2], nbytes,
                                 _ptr(codes, np.int32), _ptr(packed, np.uint8), _ptr(norms, np.float32),
                                 _ptr(starts, np.int64), _ptr(lens, np.int64), len(lens), out.ctypes.data)
        return out

    def lut_width(self, Lq: int) -> int:
        """The row width exact_lut's lookup table must have for Lq query tokens with the loops in use (Lq rounded
        up to 16 with AVX-512 and to 8 with AVX2 where Lq <= 128, else Lq)."""
        return int(self.lib.mc_lut_width(Lq))

    def int8_rows_dot(self, rows: np.ndarray, q: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
        """rows (int8 [n, dim]) times q (float32 [dim]), each times its scale if given: float32 [n]."""
        if rows.ndim != 2 or q.shape != (rows.shape[1],) or (scales is not None and scales.shape != (rows.shape[0],)):
            raise ValueError(f"int8 rows of shape {rows.shape}, a vector of shape {q.shape} and "
                             f"{None if scales is None else scales.shape} scales do not fit together")
        out = np.empty(rows.shape[0], dtype=np.float32)
        self.lib.mc_int8_rows_dot(_ptr(rows, np.int8), rows.shape[0], rows.shape[1],
                                  None if scales is None else _ptr(scales, np.float32), _ptr(q, np.float32),
                                  out.ctypes.data)
        return out


def _ptr(a: np.ndarray, dtype: type) -> int:
    """The data pointer of a C-contiguous array of exactly this dtype (a wrong one would be read as garbage)."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise TypeError(f"expected a C-contiguous {np.dtype(dtype).name} array, got {a.dtype} "
                        f"(contiguous: {a.flags.c_contiguous})")
    return a.ctypes.data


@lru_cache(maxsize=1)
def _load_cached() -> CpuKernel | None:
    spec = importlib.util.find_spec("medcolbert.search._plaid_cpu")
    if spec is None or not spec.origin:
        return None
    try:
        kernel = CpuKernel(spec.origin)
    except (OSError, AttributeError):   # AttributeError: a library built from an older source (reinstall)
        return None
    isa = os.environ.get("MEDCOLBERT_PLAID_ISA", "auto").lower()
    kernel.set_isa(None if isa in ("", "auto") else isa)
    return kernel


def load() -> CpuKernel | None:
    """The compiled stages, or None where they are not built or MEDCOLBERT_PLAID_KERNEL=torch."""
    if os.environ.get("MEDCOLBERT_PLAID_KERNEL", "").lower() == "torch":
        return None
    return _load_cached()
