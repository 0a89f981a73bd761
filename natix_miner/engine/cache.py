"""Thread-safe LRU cache of cascade results, keyed by the caller's image key.

The caller supplies the key: the sha256 hex digest of the image's raw (decoded-from-base64)
bytes, which ``imaging.decode_b64_image`` already computes. Identical bytes give the identical
answer, so a validator re-sending an image costs a dictionary lookup.

What the engine stores is its choice (see ``cascade.py``): only complete answers (exit by
threshold or after the last tier, with no model fault), so a degraded answer given under
deadline pressure or during a model failure is never replayed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ResultCache(Generic[V]):
    def __init__(self, size: int = 4096):
        self.size = max(0, int(size))
        self._data: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def get(self, key: str | None) -> V | None:
        if key is None or not self.enabled:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str | None, value: V) -> None:
        if key is None or not self.enabled:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self.stores += 1
            while len(self._data) > self.size:
                self._data.popitem(last=False)
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._data

    def stats(self) -> dict:
        with self._lock:
            total = self.hits + self.misses
            return {
                "size": len(self._data),
                "capacity": self.size,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": (self.hits / total) if total else 0.0,
                "stores": self.stores,
                "evictions": self.evictions,
            }
