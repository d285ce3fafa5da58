"""Adapted tasks kept between calls: a bounded cache keyed by random handles, expiring when unused.

>>> store = HandleStore(ttl_s=600, max_handles=1024, max_bytes=512 * 2**20)
>>> handle = store.put(task)          # 24 random URL-safe characters (144 bits): unguessable
>>> store.get(handle)                 # the task, its expiry renewed; KeyError once expired, evicted or released

Memory is bounded twice: by the number of handles and by the bytes of adapted state they hold (a MAML task holds
a copy of the adapted weights). When either bound is reached, the least recently used handle goes first.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from metadist.algorithms.functional import tensor_bytes
from metadist.inference import AdaptedTask

HANDLE_BYTES = 18  # token_urlsafe(18): 24 characters, 144 random bits


def state_bytes(task: AdaptedTask) -> int:
    return tensor_bytes(task.state)


@dataclass
class _Entry:
    task: AdaptedTask
    size: int
    expires_at: float


class HandleStore:
    """Thread-safe; each get renews the handle's expiry (handles expire `ttl_s` after their last use)."""

    def __init__(self, *, ttl_s: float, max_handles: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_handles = max_handles
        self.max_bytes = max_bytes
        self.clock = clock  # seconds, monotonic; tests may substitute their own
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._lock = threading.Lock()
        self.evicted = 0  # handles dropped to make room before they expired

    def put(self, task: AdaptedTask) -> str:
        size = state_bytes(task)
        if size > self.max_bytes:
            raise MemoryError(f"an adapted task of {size / 2**20:.1f} MB exceeds the handle store's {self.max_bytes / 2**20:.1f} MB (max_handles_mb)")
        handle = secrets.token_urlsafe(HANDLE_BYTES)
        with self._lock:
            now = self.clock()
            self._expire(now)
            while self._entries and (len(self._entries) >= self.max_handles or self._bytes + size > self.max_bytes):
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.size
                self.evicted += 1
            self._entries[handle] = _Entry(task, size, now + self.ttl_s)
            self._bytes += size
        return handle

    def get(self, handle: str) -> AdaptedTask:
        with self._lock:
            now = self.clock()
            entry = self._entries.get(handle)
            if entry is None or entry.expires_at <= now:
                self._expire(now)
                raise KeyError(handle)
            entry.expires_at = now + self.ttl_s
            self._entries.move_to_end(handle)
            return entry.task

    def release(self, handle: str) -> bool:
        with self._lock:
            self._expire(self.clock())
            entry = self._entries.pop(handle, None)
            if entry is not None:
                self._bytes -= entry.size
            return entry is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _expire(self, now: float) -> None:
        # LRU order is expiry order (every use sets now + ttl_s and moves to the end): stop at the first live one.
        while self._entries:
            handle, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            del self._entries[handle]
            self._bytes -= entry.size
