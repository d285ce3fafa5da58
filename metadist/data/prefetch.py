"""Background prefetch: sample the next batches on a thread while the current one is being learned from.

Sampling is numpy/torch work that releases the GIL for its copies, so one thread overlaps it with compute.
Because episodes are a pure function of (seed, step, task index), prefetching changes nothing but timing.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class Prefetcher(Iterator[T]):
    """Iterate over `produce(key)` for `keys` in order, computing up to `depth` results ahead.

    >>> for batch in Prefetcher(lambda step: sampler.sample(step, tasks), range(start, end), depth=2): ...

    An exception raised by `produce` is re-raised by `next()` in the consumer, not lost on the thread.
    """

    def __init__(self, produce: Callable[[int], T], keys: Iterable[int], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce, iter(keys)), name="metadist-prefetch", daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[int], T], keys: Iterator[int]) -> None:
        try:
            for key in keys:
                if self._stop.is_set():
                    return
                self._put((True, produce(key)))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put((False, exc))
            return
        self._put((True, _DONE))

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __next__(self) -> T:
        ok, item = self._queue.get()
        if not ok:
            self.close()
            raise item
        if item is _DONE:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
