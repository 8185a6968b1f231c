"""The per-call thread count: torch's own setting less the cores other processes keep busy."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from medcolbert.indexing.index import Index
from medcolbert.machine import THREADS, ThreadChoice
from medcolbert.search.plaid import Searcher


class _Load:
    """CPU-time readings of a 2-CPU machine on which other processes keep `others` cores busy."""

    def __init__(self) -> None:
        self.now, self.everyone, self.ours, self.others = 0.0, 0.0, 0.0, 0.0

    def clock(self) -> float:
        return self.now

    def read(self) -> tuple[float, float, int]:
        return self.everyone, self.ours, 2

    def advance(self, seconds: float, ours: float) -> None:
        """`seconds` pass; this process uses `ours` cores of CPU time meanwhile, the others their share."""
        self.now += seconds
        self.ours += ours * seconds
        self.everyone += (ours + self.others) * seconds


@pytest.fixture()
def two_threads():
    """torch set to two threads for the test (the setting a thread choice chooses against), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_free_cores_decide_and_this_process_own_work_does_not_count(two_threads):
    load = _Load()
    choice = ThreadChoice(reader=load.read, clock=load.clock)
    assert choice.threads(2) == 2   # one reading: nothing known yet
    load.advance(0.3, ours=2.0)   # our own two busy threads are not "others"
    assert choice.threads(2) == 2 and choice.others() == pytest.approx(0.0)
    load.others = 1.0             # another process takes a core
    load.advance(0.3, ours=1.0)
    with choice.run() as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2   # restored after the call
    load.advance(0.1, ours=1.0)
    assert choice.threads(2) == 1   # within INTERVAL of the last reading: the same answer, no new reading
    load.others = 0.3             # light load: two threads still
    load.advance(0.3, ours=1.0)
    assert choice.threads(2) == 2
    assert choice.threads(1) == 1   # never more than the process's setting
    unknown = ThreadChoice(reader=lambda: None)
    assert unknown.threads(2) == 2


def test_a_busy_process_on_this_machine_is_seen(two_threads):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    if not os.path.exists("/proc/stat") or cpus < 2:
        pytest.skip("needs Linux's /proc/stat and two CPUs")
    torch.set_num_threads(cpus)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        choice = ThreadChoice()
        time.sleep(0.3)
        choice.others()
        time.sleep(ThreadChoice.INTERVAL + 0.3)
        assert choice.others() >= 0.6   # the busy process's core (more if the machine has other work)
        assert choice.threads(cpus) <= cpus - 1
    finally:
        busy.kill()
        busy.wait()


def test_inner_and_fixed_calls_run_at_the_outer_setting(two_threads):
    load = _Load()
    load.others = 1.0
    choice = ThreadChoice(reader=load.read, clock=load.clock)
    choice.threads(2)
    load.advance(0.3, ours=1.0)
    with choice.run() as outer:
        assert outer == 1
        with choice.run() as inner:
            assert inner is None and torch.get_num_threads() == 1
    with choice.fixed():
        with choice.run() as inner:
            assert inner is None and torch.get_num_threads() == 2
    choice.enabled = False
    with choice.run() as off:
        assert off is None and torch.get_num_threads() == 2


def test_search_results_do_not_depend_on_the_thread_count(tiny_model, tmp_path, two_threads):
    docs = {f"d{i}": text for i, text in enumerate([
        "metformin lowers blood glucose in type 2 diabetes", "warfarin dosing and vitamin k interactions",
        "asthma inhalers relieve wheezing", "statins can cause muscle pain", "high blood pressure and salt",
        "antibiotics may raise warfarin levels", "insulin pumps for type 1 diabetes", "migraine triggers and relief"])}
    index = Index.build(tmp_path / "ix", tiny_model, docs, nbits=2, num_centroids=4, show_progress=False)
    searcher = Searcher(index, tiny_model)
    queries = ["warfarin and antibiotics", "diabetes medicine", "muscle pain from statins"]
    quiet = [searcher.search(q, k=3) for q in queries]
    # The process's own choice object, told that another process keeps a core busy: searches run at one thread.
    load = _Load()
    load.others = 1.0
    saved = THREADS.reader, THREADS.clock, THREADS._last, THREADS._others
    THREADS.reader, THREADS.clock, THREADS._last = load.read, load.clock, None
    try:
        THREADS.threads(2)
        load.advance(0.3, ours=1.0)
        assert THREADS.threads(2) == 1
        busy = [searcher.search(q, k=3) for q in queries]
    finally:
        THREADS.reader, THREADS.clock, THREADS._last, THREADS._others = saved
    assert [[d for d, _ in hits] for hits in busy] == [[d for d, _ in hits] for hits in quiet]
    for got, ref in zip(busy, quiet):
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(got, ref))


def test_machine_choices_are_keyed_by_cpu_features_as_well_as_the_name():
    """Two "AMD EPYC"s, one AVX2-only and one with AVX-512 BF16, must not share what was measured on either."""
    from medcolbert.machine import parse_features

    zen3 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
    zen4 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512_bf16 avx512_vnni\n"
    xeon = "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n"
    assert parse_features(zen3) == ("avx2", "fma")
    assert parse_features(zen4) == ("avx512f", "avx512_bf16", "avx2", "fma")
    assert parse_features(xeon) == ("avx512f", "avx512_bf16", "amx_bf16", "avx2", "fma")
    assert parse_features(arm) == ("asimd",) and parse_features("nothing here") == ()
    from medcolbert.machine import simd_class

    assert [simd_class(parse_features(t)) for t in (zen3, zen4, xeon, arm, "")] == \
        ["avx2", "avx512bf16", "amx", "neon", "portable"]
