"""This machine: the CPU's name, choices measured on it once and remembered (query precision, exact stage), and
the thread count a latency-bound call gets under the machine's current load."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
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


# The instruction sets the engine's and the encoder's choices depend on (x86: AVX-512, its bfloat16 dot products,
# AMX, AVX2, FMA; ARM: Advanced SIMD). "AMD EPYC" names both AVX2-only and AVX-512 BF16 machines, so the model
# name alone cannot key what was measured on one.
FEATURES = ("avx512f", "avx512_bf16", "amx_bf16", "avx2", "fma", "asimd")


def parse_features(cpuinfo: str) -> tuple[str, ...]:
    """The FEATURES a /proc/cpuinfo text lists (its first "flags" or "Features" line), in FEATURES' order."""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return tuple(f for f in FEATURES if f in have)
    return ()


def cpu_features() -> tuple[str, ...]:
    """This CPU's FEATURES (empty where /proc/cpuinfo cannot be read)."""
    try:
        return parse_features(Path("/proc/cpuinfo").read_text())
    except OSError:
        return ()


def simd_class(features: tuple[str, ...] | None = None) -> str:
    """The widest of the CPU types the project records separately: amx, avx512bf16, avx512, avx2, neon or portable."""
    have = set(cpu_features() if features is None else features)
    for name, flag in (("amx", "amx_bf16"), ("avx512bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2"),
                       ("neon", "asimd")):
        if flag in have:
            return name
    return "portable"


def cpu_id() -> str:
    """The CPU's model name and its FEATURES: the key of every choice measured on this machine."""
    return f"{cpu_model()} [{'+'.join(cpu_features()) or 'features unknown'}]"


def torch_capability() -> str:
    """The instruction set torch's CPU kernels run with (AVX512, AVX2, DEFAULT, ...; ATEN_CPU_CAPABILITY can lower it)."""
    import torch   # here, so that reading the machine's name does not import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:   # a torch without the query
        return "unknown"


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
    """How many torch threads a latency-bound call uses: the process's setting, less the cores that other
    processes keep busy.

    On a quiet 2-core machine two threads encode a query faster than one (3.6 vs 4.6 ms here); beside one other busy
    process, OpenMP's second worker waits for a core at every parallel region and a search took 19 ms at p50 and
    170 ms at p95 at two threads against 6 / 7 ms at one (experiments/engine/threads-under-load/). The machine's
    load is read from /proc/stat (the CPUs this process may run on) and this process's own CPU time, at most every
    INTERVAL seconds; a call then runs at round(free cores) threads, at least one and at most the process's
    setting. The setting is changed around the call only; a call inside another governed call (a search's query
    encoding) runs at the outer call's setting. Concurrent calls may see each other's setting for their duration:
    a slower call, never a different result. Where /proc/stat cannot be read, nothing changes.
    $MEDCOLBERT_THREAD_CHOICE=off turns it off."""

    INTERVAL = 0.25   # seconds between readings of the machine's load (jiffies are 10 ms: shorter is too coarse)

    def __init__(self, reader: Callable[[], tuple[float, float, int] | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """reader: () -> (CPU seconds spent so far by every process on this process's CPUs, by this process, how
        many CPUs), or None where unknown (default: /proc/stat); clock: seconds, monotonic."""
        self.reader = reader or _read_cpu_time
        self.clock = clock
        self.enabled = os.environ.get("MEDCOLBERT_THREAD_CHOICE", "auto") != "off"
        self._last: tuple[float, float, float] | None = None   # (clock, everyone's CPU seconds, ours)
        self._others = 0.0
        self._cpus: int | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def others(self) -> float:
        """Cores kept busy by other processes over the last reading interval (0 until two readings)."""
        now = self.clock()
        with self._lock:
            if self._last is not None and now - self._last[0] < self.INTERVAL:
                return self._others
            reading = self.reader()
            if reading is None:
                return 0.0
            everyone, ours, self._cpus = reading
            self._others = 0.0 if self._last is None else \
                max(0.0, ((everyone - self._last[1]) - (ours - self._last[2])) / max(now - self._last[0], 1e-9))
            self._last = (now, everyone, ours)
            return self._others

    def threads(self, full: int) -> int:
        """The thread count for a call now, where the process is set to `full` threads."""
        if not self.enabled or full < 2:
            return full
        others = self.others()
        cpus = self._cpus or full
        return max(1, min(full, int(cpus - others + 0.5)))

    @contextlib.contextmanager
    def run(self) -> Iterator[int | None]:
        """Run the block at the thread count for now (restored after); inside another governed (or fixed) block,
        just run it."""
        if getattr(self._local, "active", False) or not self.enabled:
            yield None
            return
        import torch   # here, so that reading the machine's name does not import torch

        full = torch.get_num_threads()
        threads = self.threads(full)
        if threads != full:
            torch.set_num_threads(threads)
        self._local.active = True
        try:
            yield threads
        finally:
            self._local.active = False
            if threads != full:
                torch.set_num_threads(full)

    @contextlib.contextmanager
    def fixed(self) -> Iterator[None]:
        """Governed calls inside run at the process's own thread count (for measurements)."""
        was = getattr(self._local, "active", False)
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = was


def _read_cpu_time() -> tuple[float, float, int] | None:
    """(CPU seconds spent by everyone on the CPUs this process may use, by this process, their count), from
    /proc/stat (Linux); None elsewhere."""
    try:
        allowed = {f"cpu{c}" for c in os.sched_getaffinity(0)}
        tick = os.sysconf("SC_CLK_TCK")
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu"):
                    break
                fields = line.split()
                if fields[0] in allowed:
                    # user nice system idle iowait irq softirq steal ...: all but idle and iowait is busy
                    values = [int(v) for v in fields[1:9]]
                    busy += sum(values) - values[3] - values[4]
    except (OSError, AttributeError, ValueError):
        return None
    own = os.times()
    return busy / tick, own.user + own.system, len(allowed)


# One for the process: the load it reads is the machine's, whichever model or index a call uses.
THREADS = ThreadChoice()
