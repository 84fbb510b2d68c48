"""Dequantized-weight cache shared by every session of every model.

Keyed by (model id, tensor name, device, dtype or packing), bounded by a byte budget with LRU
eviction.  Entries are tensors or objects with an `nbytes` attribute (fast.py's packed layers).
The budget defaults to 4 GiB (REALM_CACHE_MB overrides): SmolLM2 in f32 needs 538 MB, so the
default keeps a few small models fully resident while a large one streams through.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


DEFAULT_BUDGET = int(os.environ.get("REALM_CACHE_MB", "4096")) * (1 << 20)


class WeightCache:
    def __init__(self, budget_bytes: int = DEFAULT_BUDGET):
        self.budget = budget_bytes
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            t = self._items.get(key)
            if t is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return t
            self.misses += 1
        # Built outside the lock so two models dequantize concurrently; a rare duplicate build of
        # the same key is cheaper than serializing every miss.
        t = make()
        size = t.nbytes
        with self._lock:
            if key in self._items:
                return self._items[key]
            if size <= self.budget:
                self._items[key] = t
                self._bytes += size
                while self._bytes > self.budget:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return t

    def drop_model(self, model_id: int) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == model_id]:
                old = self._items.pop(key)
                self._bytes -= old.nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes


CACHE = WeightCache()
