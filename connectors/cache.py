"""A least-recently-used cache bounded by an estimate of its size as well as by its number of entries.

A count alone does not bound memory when entries grow with what clients send: 500 statements of 500 columns and
100 terms each hold hundreds of megabytes. Each entry is weighed when it goes in (an estimate in bytes, from the
caller's `weigh`); the least recently used go out until both bounds hold, and an entry heavier than the whole
budget is not kept at all. Safe to share between the event loop and worker threads (statements are built in
threads when they are large).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SizedCache(Generic[K, V]):
    def __init__(self, max_entries: int, max_weight: int, weigh: Callable[[K, V], int]):
        self.max_entries = max_entries
        self.max_weight = max_weight
        self._weigh = weigh
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.weight = 0  # the estimated size of what is held now

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return default
            self._entries.move_to_end(key)
            return hit[0]

    def __setitem__(self, key: K, value: V) -> None:
        weight = max(1, self._weigh(key, value))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.weight -= old[1]
            if weight > self.max_weight:
                return
            while self._entries and (len(self._entries) >= self.max_entries
                                     or self.weight + weight > self.max_weight):
                _, (_, dropped) = self._entries.popitem(last=False)
                self.weight -= dropped
            self._entries[key] = (value, weight)
            self.weight += weight

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.weight = 0
