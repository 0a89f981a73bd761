"""Deadlines and per-model latency estimates (docs/architecture.md §6).

:class:`Deadline` lives in :mod:`natix_miner.types` (models read it too) and is re-exported here.
A :class:`Deadline` is an absolute ``time.monotonic()`` instant, so it can be handed across
threads and queues without drifting. The axon builds one at receipt (``Deadline(t0 + budget)``);
the engine uses it to decide whether a tier still fits and how long to wait for a model.

A :class:`LatencyTracker` keeps a rolling window of a model's recent call latencies (seconds per
``predict`` call). Its :meth:`~LatencyTracker.estimate` is what the cascade compares with the time
left: the window's p95 once it holds ``min_samples`` samples; before that, the larger of the prior
(the model's ``timeout_s`` from the profile, else :data:`DEFAULT_PRIOR_S`) and the slowest sample
seen, so one slow first call is believed at once and an optimistic prior is not kept for long.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from natix_miner.types import Deadline

__all__ = ["DEFAULT_PRIOR_S", "Deadline", "LatencyTracker"]

#: latency assumed for a model with no ``timeout_s`` and no measurement yet. Optimistic on
#: purpose: an unmeasured model is tried, and a call never waits past the deadline anyway.
DEFAULT_PRIOR_S = 0.05


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty list."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    frac = pos - lo
    return sorted_xs[lo] * (1 - frac) + sorted_xs[hi] * frac


class LatencyTracker:
    """Rolling window of one model's call latencies (seconds). Thread-safe."""

    def __init__(self, prior_s: float | None = None, *, window: int = 128, min_samples: int = 5):
        self.prior_s = DEFAULT_PRIOR_S if prior_s is None else float(prior_s)
        self.min_samples = max(1, int(min_samples))
        self._xs: deque[float] = deque(maxlen=max(self.min_samples, int(window)))
        self._lock = threading.Lock()
        self.count = 0  # all observations ever, not only the window

    def observe(self, seconds: float) -> None:
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            return
        with self._lock:
            self._xs.append(float(seconds))
            self.count += 1

    def samples(self) -> list[float]:
        with self._lock:
            return list(self._xs)

    def quantile(self, q: float) -> float | None:
        xs = sorted(self.samples())
        return _quantile(xs, q) if xs else None

    def p50(self) -> float | None:
        return self.quantile(0.50)

    def p95(self) -> float | None:
        return self.quantile(0.95)

    def estimate(self) -> float:
        """Seconds one call is expected to take (p95, or the prior while samples are few)."""
        xs = sorted(self.samples())
        if len(xs) >= self.min_samples:
            return _quantile(xs, 0.95)
        if xs:
            return max(self.prior_s, xs[-1])
        return self.prior_s
