"""Background prefetch keeps order, overlaps work, and hands errors to the consumer."""

from __future__ import annotations

import threading

import pytest

from metadist.data import Prefetcher


def test_prefetch_yields_in_order():
    assert list(Prefetcher(lambda k: k * k, range(10), depth=3)) == [k * k for k in range(10)]


def test_prefetch_runs_ahead_by_at_most_depth():
    produced = []
    gate = threading.Event()

    def produce(k):
        produced.append(k)
        return k

    it = Prefetcher(produce, range(100), depth=2)
    assert next(it) == 0
    gate.wait(0.3)
    assert len(produced) <= 4  # one consumed, two queued, one waiting to be queued
    it.close()


def test_prefetch_reraises_producer_errors():
    def produce(k):
        if k == 3:
            raise ValueError("bad step 3")
        return k

    it = Prefetcher(produce, range(10))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad step 3"):
        next(it)
