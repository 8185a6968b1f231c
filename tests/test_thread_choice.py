"""The per-call thread count: one thread where it has been faster lately (a busy machine), torch's own otherwise."""

from __future__ import annotations

import pytest
import torch

from medcolbert.indexing.index import Index
from medcolbert.machine import THREADS, ThreadChoice
from medcolbert.search.plaid import Searcher


class _Machine:
    """A clock whose calls cost what the thread count torch is set to costs on a machine in a given state."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cost = {2: 1.0, 1: 1.3}   # quiet: two threads faster

    def clock(self) -> float:
        return self.now

    def work(self) -> int:
        threads = torch.get_num_threads()
        self.now += self.cost[threads]
        return threads


@pytest.fixture()
def two_threads():
    """torch set to two threads for the test (the setting a thread choice chooses against), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _calls(choice: ThreadChoice, machine: _Machine, n: int) -> list[int]:
    ran = []
    for _ in range(n):
        with choice.run("search"):
            ran.append(machine.work())
    return ran


def test_one_thread_runs_while_it_is_faster_and_two_once_the_load_is_gone(two_threads):
    machine = _Machine()
    choice = ThreadChoice(clock=machine.clock)
    quiet = _calls(choice, machine, 200)
    assert torch.get_num_threads() == 2   # restored after every call
    # After the first calls (alternating), two threads; one thread once in EXPLORE_MAX calls at most.
    fill = 2 * ThreadChoice.FILL
    assert quiet[:fill] == [2, 1] * ThreadChoice.FILL
    assert quiet[fill:].count(1) <= 200 // ThreadChoice.EXPLORE_MAX + 1
    machine.cost = {2: 8.0, 1: 1.3}   # another process takes a core
    busy = _calls(choice, machine, 400)
    switched = busy.index(1)
    assert switched <= ThreadChoice.WINDOW // 2 + 1   # seen in the running setting's own times
    assert busy[switched + 1:].count(2) <= 400 // ThreadChoice.EXPLORE + 1
    machine.cost = {2: 1.0, 1: 1.3}   # the other process ends
    after = _calls(choice, machine, ThreadChoice.EXPLORE_MAX)
    # Back to two threads at the first trial of them that beats one thread (once in EXPLORE x the gap calls).
    back = next(i for i in range(len(after)) if after[i:i + ThreadChoice.EXPLORE // 2].count(1) == 0)
    assert back <= ThreadChoice.EXPLORE * 8.0 / 1.3 + ThreadChoice.WINDOW
    assert after[back:].count(1) <= (len(after) - back) // ThreadChoice.EXPLORE_MAX + 1


def test_near_ties_keep_the_process_setting_and_one_off_work_is_left_out(two_threads):
    machine = _Machine()
    machine.cost = {2: 1.3, 1: 1.0}   # one thread 30% faster: within the margin
    choice = ThreadChoice(clock=machine.clock)
    assert _calls(choice, machine, 100)[2 * ThreadChoice.FILL:].count(2) >= 88
    with choice.run("search") as threads:
        machine.now += 1000.0   # e.g. tracing a graph
        choice.unusual()
    assert max(choice.state()["search"].values()) < 2   # not recorded
    assert threads in (1, 2)


def test_inner_and_fixed_calls_run_at_the_outer_setting_unrecorded(two_threads):
    choice = ThreadChoice()
    with choice.run("search"):
        outer = torch.get_num_threads()
        with choice.run("encode") as inner:
            assert inner is None and torch.get_num_threads() == outer
    with choice.fixed():
        with choice.run("encode") as inner:
            assert inner is None and torch.get_num_threads() == 2
    assert set(choice.state()) == {"search"}
    choice.enabled = False
    with choice.run("search") as off:
        assert off is None


def test_search_results_do_not_depend_on_the_thread_choice(tiny_model, tmp_path):
    docs = {f"d{i}": text for i, text in enumerate([
        "metformin lowers blood glucose in type 2 diabetes", "warfarin dosing and vitamin k interactions",
        "asthma inhalers relieve wheezing", "statins can cause muscle pain", "high blood pressure and salt",
        "antibiotics may raise warfarin levels", "insulin pumps for type 1 diabetes", "migraine triggers and relief"])}
    index = Index.build(tmp_path / "ix", tiny_model, docs, nbits=2, num_centroids=4, show_progress=False)
    searcher = Searcher(index, tiny_model)
    queries = ["warfarin and antibiotics", "diabetes medicine", "muscle pain from statins"]
    was = THREADS.enabled
    try:
        THREADS.enabled = False
        fixed = [searcher.search(q, k=3) for q in queries]
        THREADS.enabled = True
        for _ in range(3):   # through the first calls (both settings) and the chosen one
            governed = [searcher.search(q, k=3) for q in queries]
            assert [[d for d, _ in hits] for hits in governed] == [[d for d, _ in hits] for hits in fixed]
            for got, ref in zip(governed, fixed):
                assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(got, ref))
    finally:
        THREADS.enabled = was
