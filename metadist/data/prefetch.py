"""Background sampling: batches computed on a thread while the current one is being learned from.

Sampling is numpy/torch work that releases the GIL for its copies, so one thread overlaps it with compute.
Because episodes are a pure function of (seed, step, task index), prefetching changes nothing but timing.

`Lookahead` is the mechanism: results of `produce(key)` asked for ahead of need, by key, computed on one thread
(so the sampler and its class cache are only ever used by that thread). `Prefetcher` walks a known sequence of
keys with it (the local trainer's steps); a task worker, which learns its next slice only from its driver, asks
its `Lookahead` for the keys it was told of.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Lookahead(Generic[K, T]):
    """`produce(key)` on one background thread: `ahead(key)` starts it, `take(key)` returns it (computing it now,
    on the same thread, when it was not asked for ahead). An exception raised by `produce` is re-raised by `take`."""

    def __init__(self, produce: Callable[[K], T], *, thread_name: str = "metadist-sample") -> None:
        self._produce = produce
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._pending: dict[K, Future[T]] = {}
        self.hits = 0  # takes whose result was asked for ahead
        self.misses = 0

    def ahead(self, key: K) -> None:
        if key not in self._pending:
            self._pending[key] = self._pool.submit(self._produce, key)

    def has(self, key: K) -> bool:
        """Whether `key` was asked for ahead (and not taken or dropped since)."""
        return key in self._pending

    def take(self, key: K) -> T:
        future = self._pending.pop(key, None)
        if future is None:
            self.misses += 1
            future = self._pool.submit(self._produce, key)
        else:
            self.hits += 1
        return future.result()

    def drop(self, stale: Callable[[K], bool]) -> None:
        """Forget the keys that will not be taken (a guess that missed): not started ones are never computed."""
        for key in [k for k in self._pending if stale(k)]:
            self._pending.pop(key).cancel()

    def close(self) -> None:
        self.drop(lambda _: True)
        self._pool.shutdown(wait=True)


class Prefetcher(Iterator[T]):
    """Iterate over `produce(key)` for `keys` in order, computing up to `depth` results ahead.

    >>> for batch in Prefetcher(lambda step: sampler.sample(step, tasks), range(start, end), depth=2): ...

    An exception raised by `produce` is re-raised by `next()` in the consumer, not lost on the thread.
    """

    def __init__(self, produce: Callable[[int], T], keys: Iterable[int], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._keys = iter(keys)
        self._lookahead: Lookahead[int, T] = Lookahead(produce, thread_name="metadist-prefetch")
        self._queued: deque[int] = deque()
        for _ in range(depth):
            self._queue_next()

    def _queue_next(self) -> None:
        for key in self._keys:
            self._lookahead.ahead(key)
            self._queued.append(key)
            return

    def __next__(self) -> T:
        if not self._queued:
            self.close()
            raise StopIteration
        key = self._queued.popleft()
        self._queue_next()
        try:
            return self._lookahead.take(key)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._queued.clear()
        self._lookahead.close()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
