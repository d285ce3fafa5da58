"""A fixed-size arena of decoded classes, evicted least-recently-used, within a memory budget.

All cached classes live in one uint8 tensor [slots, max_count, C, H, W], so a whole batch of episodes is
gathered with a single advanced-indexing call instead of one copy per class: that is most of the sampler's
speed. The arena is allocated once (pages are touched only as classes arrive), so the budget is a hard bound.
"""

from __future__ import annotations

import numpy as np
import torch

from metadist.data.shardset import ShardSet
from metadist.errors import EpisodeError


class ClassCache:
    def __init__(self, shards: ShardSet, class_indices: np.ndarray, budget_mb: float) -> None:
        manifest = shards.manifest
        self.shards = shards
        counts = np.array([manifest.classes[i].count for i in class_indices])
        self.max_count = int(counts.max())
        self.example_shape = manifest.example_shape
        slot_bytes = self.max_count * int(np.prod(self.example_shape))
        self.slots = int(min(len(class_indices), max(1, (budget_mb * 2**20) // slot_bytes)))
        self.budget_mb = budget_mb
        self.arena = torch.empty((self.slots, self.max_count, *self.example_shape), dtype=torch.uint8)
        self._arena_np = self.arena.numpy()  # the same memory, written from numpy without a tensor wrapper
        self.slot_of = np.full(len(manifest.classes), -1, dtype=np.int64)  # class index → slot, -1 if absent
        self.class_in = np.full(self.slots, -1, dtype=np.int64)  # slot → class index
        self.last_used = np.zeros(self.slots, dtype=np.int64)
        self.clock = 0
        self.loads = 0

    def touch(self, slots: np.ndarray) -> None:
        """Mark resident slots as just used (for LRU eviction)."""
        self.clock += 1
        self.last_used[slots] = self.clock

    def ensure(self, classes: np.ndarray) -> np.ndarray:
        """Make `classes` (unique manifest indices) resident; return their slots."""
        if len(classes) > self.slots:
            raise EpisodeError(
                f"{self.shards.uri}: {len(classes)} classes are needed at once but the cache holds {self.slots} "
                f"within cache_mb={self.budget_mb}; raise cache_mb or sample fewer tasks per call"
            )
        self.clock += 1
        slots = self.slot_of[classes]
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            protected = slots[slots >= 0]
            self.last_used[protected] = self.clock  # never evict what this call needs
            for i in missing:
                slot = int(np.argmin(self.last_used))
                old = self.class_in[slot]
                if old >= 0:
                    self.slot_of[old] = -1
                pixels = self.shards.read_class(int(classes[i]))
                self._arena_np[slot, : len(pixels)] = pixels
                self.slot_of[classes[i]] = slot
                self.class_in[slot] = classes[i]
                self.last_used[slot] = self.clock
                slots[i] = slot
                self.loads += 1
        self.last_used[slots] = self.clock
        return slots
