"""This machine: the CPU's name, and choices measured on it once and remembered (query precision, exact stage)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
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


class ThreadChoice:
    """Per call, the torch thread count that has been faster lately: the process's own setting, or one thread.

    On a quiet 2-core machine two threads encode a query faster (3.2 vs 4.1 ms here); beside one other busy
    process, OpenMP's second worker waits for a core at every parallel region and a search takes several times
    longer at two threads than at one, with a p95 near 190 ms (experiments/engines/threads-under-load/). So the
    recent times of each setting are kept per kind of call (per unit of work), and the faster one runs. Load that
    comes shows at once in the running setting's own times. At one thread, the process's setting is tried once
    every EXPLORE calls times how much slower it was (at most EXPLORE_MAX), so that the load's going is noticed
    while trying costs about the same share of time whatever the gap, and again on the next calls while it keeps
    winning; at the process's setting, one thread is tried only once in EXPLORE_MAX calls. The setting is changed around the call only; a call inside another governed
    call (a search's query encoding) runs at the outer call's setting. Concurrent calls may see each other's
    setting for their duration: a slower call, never a different result. $MEDCOLBERT_THREAD_CHOICE=off turns it
    off."""

    WINDOW = 9          # recent times kept per kind and setting (their median decides)
    FILL = 5            # times of each setting before deciding (the first calls of a kind alternate)
    EXPLORE = 40        # at one thread, the process's setting runs once in EXPLORE x (its median / one thread's) calls
    EXPLORE_MAX = 400   # ... and in any case once in this many
    MARGIN = 1.5        # one thread is chosen only when this much faster: calls differ in cost (queries of other
                        # lengths, other candidate counts), and a busy machine makes the gap 2-25x

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        """clock: seconds, monotonic."""
        self.clock = clock
        self.enabled = os.environ.get("MEDCOLBERT_THREAD_CHOICE", "auto") != "off"
        self._times: dict[tuple[str, int], deque[float]] = {}
        self._since_other: dict[str, int] = {}
        self._retry: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def pick(self, kind: str, full: int) -> int:
        """The thread count for the next call of `kind`, where the process is set to `full` threads."""
        if not self.enabled or full < 2:
            return full
        with self._lock:
            many, one = self._times.get((kind, full), ()), self._times.get((kind, 1), ())
            if len(many) < self.FILL or len(one) < self.FILL:
                return full if len(many) <= len(one) else 1
            at_full, at_one = statistics.median(many), statistics.median(one)
            best, other = (1, full) if self._one_wins(at_full, at_one) else (full, 1)
            since = self._since_other[kind] = self._since_other.get(kind, 0) + 1
            # Running at the process's setting, load that comes shows in its own times, and one thread's history
            # already says when to switch: trying one thread is only a rare check of that history. Running at
            # one thread, only trying the process's setting can show that the load has gone.
            every = self.EXPLORE_MAX if best == full else \
                min(self.EXPLORE_MAX, self.EXPLORE * at_full / max(at_one, 1e-12))
            if self._retry.get(kind) or since >= every:
                self._since_other[kind] = 0
                return other
            return best

    def record(self, kind: str, threads: int, seconds_per_unit: float) -> None:
        """One call's time per unit of work at `threads`."""
        with self._lock:
            times = self._times.setdefault((kind, threads), deque(maxlen=self.WINDOW))
            rival = next((v for (k, t), v in self._times.items() if k == kind and t != threads and v), None)
            if len(times) >= self.FILL and rival is not None and len(rival) >= self.FILL:
                # A setting that is not running (the rule prefers the other) and whose time now would make the
                # rule prefer it: the load may have changed, so it runs again on the next call, and again while
                # it keeps winning, until its median shows the change (one lucky call costs one more trial).
                mine, theirs = statistics.median(times), statistics.median(rival)
                if threads == 1:
                    self._retry[kind] = not self._one_wins(theirs, mine) and self._one_wins(theirs, seconds_per_unit)
                else:
                    self._retry[kind] = self._one_wins(mine, theirs) and not self._one_wins(seconds_per_unit, theirs)
            times.append(seconds_per_unit)

    def _one_wins(self, at_full: float, at_one: float) -> bool:
        """The rule: one thread runs when it is MARGIN times faster than the process's setting."""
        return at_one * self.MARGIN < at_full

    @contextlib.contextmanager
    def run(self, kind: str, work: float = 1.0) -> Iterator[int | None]:
        """Run the block at the thread count chosen for `kind` (restored after) and record its time per unit of
        work; inside another governed (or fixed) block, just run it."""
        if getattr(self._local, "active", False) or not self.enabled:
            yield None
            return
        import torch   # here, so that reading the machine's name does not import torch

        full = torch.get_num_threads()
        threads = self.pick(kind, full)
        if threads != full:
            torch.set_num_threads(threads)
        self._local.active, self._local.unusual = True, False
        start = self.clock()
        try:
            yield threads
        finally:
            elapsed = self.clock() - start
            self._local.active = False
            if threads != full:
                torch.set_num_threads(full)
            if full >= 2 and not self._local.unusual:
                self.record(kind, threads, elapsed / max(work, 1e-9))

    def unusual(self) -> None:
        """Leave the governed call in progress on this thread out of the times (it did one-off work: tracing a
        query graph takes 0.3 s, and would make its setting look 40x slower for a long while)."""
        self._local.unusual = True

    @contextlib.contextmanager
    def fixed(self) -> Iterator[None]:
        """Governed calls inside run at the process's own thread count and are not recorded (for measurements)."""
        was = getattr(self._local, "active", False)
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = was

    def state(self) -> dict[str, dict[int, float]]:
        """Per kind of call, each setting's recent median time per unit of work (for `medcolbert info`)."""
        with self._lock:
            out: dict[str, dict[int, float]] = {}
            for (kind, threads), times in self._times.items():
                if times:
                    out.setdefault(kind, {})[threads] = statistics.median(times)
            return out


# One for the process: the load it measures is the machine's, whichever model or index a call uses.
THREADS = ThreadChoice()
