"""A controllable adapter for tests, benchmarks and fault injection. Loads nothing.

Options (``options:`` in the profile):

- ``p``: a constant probability (default 0.7), or
- ``p_by_color: true``: P = mean red minus mean blue, mapped to [0, 1] (a deterministic image-dependent
  signal for end-to-end tests: a red image is "roadwork", a blue one is not),
- ``latency_ms``: sleep this long per call (default 0),
- ``fail``: ``raise`` | ``oom`` | ``hang`` | ``nan`` — how the model misbehaves,
- ``fail_every``: misbehave on every N-th call only (default 1 = always, when ``fail`` is set),
- ``hang_s``: how long ``hang`` blocks (default 30 s; ``unload()`` releases a hung call early),
- ``fail_first``: misbehave only on the first N calls, then recover (default: no limit),
- ``load_fail: true``: ``load()`` raises :class:`AdapterError` (a model whose weights are missing),
- ``measured_memory_mb``: what ``load()`` reports as measured memory (default: ``memory_mb``).

``calls`` counts ``predict`` calls and ``batches`` records each call's batch size.
"""

from __future__ import annotations

import threading
import time

from natix_miner.models.base import Adapter, AdapterError
from natix_miner.models.registry import register
from natix_miner.types import Vote


@register("fake")
class FakeAdapter(Adapter):
    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.calls = 0
        self.batches: list[int] = []
        self._lock = threading.Lock()
        self._release = threading.Event()

    def load(self, device: str) -> None:
        if self.spec.options.get("load_fail"):
            raise AdapterError(f"{self.name}: injected load failure")
        self.device = device
        self.loaded = True
        self._release.clear()
        self.measured_memory_mb = float(self.spec.options.get("measured_memory_mb", self.spec.memory_mb))

    def unload(self) -> None:
        self._release.set()
        super().unload()

    def warmup(self) -> None:  # warmup must not count as a call or trigger faults
        return None

    def predict(self, images):
        opts = self.spec.options
        with self._lock:
            self.calls += 1
            n = self.calls
            self.batches.append(len(images))
        latency = float(opts.get("latency_ms", 0.0)) / 1000.0
        if latency:
            time.sleep(latency)
        fail = opts.get("fail")
        first = opts.get("fail_first")
        if fail and n % int(opts.get("fail_every", 1)) == 0 and (first is None or n <= int(first)):
            if fail == "raise":
                raise RuntimeError(f"{self.name}: injected failure")
            if fail == "oom":
                raise MemoryError(f"{self.name}: injected out-of-memory")
            if fail == "hang":
                self._release.wait(float(opts.get("hang_s", 30.0)))
            if fail == "nan":
                return [Vote(float("nan")) for _ in images]
        if opts.get("p_by_color"):
            votes = []
            for im in images:
                small = im.convert("RGB").resize((8, 8))
                px = list(small.getdata())
                r = sum(p[0] for p in px) / len(px)
                b = sum(p[2] for p in px) / len(px)
                votes.append(Vote(min(1.0, max(0.0, 0.5 + (r - b) / 510.0)), {"r": r, "b": b}))
            return votes
        return [Vote(float(opts.get("p", 0.7))) for _ in images]
