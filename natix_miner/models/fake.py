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
from typing import Literal

from pydantic import Field

from natix_miner.models.base import Adapter, AdapterError, FamilyOptions
from natix_miner.models.registry import register
from natix_miner.types import Vote


class FakeOptions(FamilyOptions):
    p: float = 0.7
    p_by_color: bool = False
    latency_ms: float = Field(0.0, ge=0.0)
    fail: Literal["raise", "oom", "hang", "nan"] | None = None
    fail_every: int = Field(1, ge=1)
    hang_s: float = Field(30.0, ge=0.0)
    fail_first: int | None = Field(None, ge=0)
    load_fail: bool = False
    measured_memory_mb: float | None = Field(None, ge=0.0)


@register("fake")
class FakeAdapter(Adapter):
    options_model = FakeOptions
    opts: FakeOptions
    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.calls = 0
        self.batches: list[int] = []
        self._lock = threading.Lock()
        self._release = threading.Event()

    def load(self, device: str) -> None:
        o = self.opts
        if o.load_fail:
            raise AdapterError(f"{self.name}: injected load failure")
        self.device = device
        self.loaded = True
        self._release.clear()
        self.measured_memory_mb = float(o.measured_memory_mb if o.measured_memory_mb is not None
                                        else self.spec.memory_mb)

    def unload(self) -> None:
        self._release.set()
        super().unload()

    def warmup(self) -> None:  # warmup must not count as a call or trigger faults
        return None

    def predict(self, images):
        o = self.opts  # parsed once, when the adapter was built
        with self._lock:
            self.calls += 1
            n = self.calls
            self.batches.append(len(images))
        latency = o.latency_ms / 1000.0
        if latency:
            time.sleep(latency)
        fail = o.fail
        first = o.fail_first
        if fail and n % o.fail_every == 0 and (first is None or n <= first):
            if fail == "raise":
                raise RuntimeError(f"{self.name}: injected failure")
            if fail == "oom":
                raise MemoryError(f"{self.name}: injected out-of-memory")
            if fail == "hang":
                self._release.wait(o.hang_s)
            if fail == "nan":
                return [Vote(float("nan")) for _ in images]
        if o.p_by_color:
            votes = []
            for im in images:
                small = im.convert("RGB").resize((8, 8))
                px = list(small.getdata())
                r = sum(p[0] for p in px) / len(px)
                b = sum(p[2] for p in px) / len(px)
                votes.append(Vote(min(1.0, max(0.0, 0.5 + (r - b) / 510.0)), {"r": r, "b": b}))
            return votes
        return [Vote(o.p) for _ in images]
