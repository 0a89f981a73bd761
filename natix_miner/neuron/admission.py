"""Admission control: degrade under load, never refuse a validator (issue 12).

Before this module a global cap on requests in flight (``--blacklist.max_concurrent``, 64) answered
403 "miner busy" to *permitted validators* when ten of them started a burst of ten at once. A 403 is a
-1 for the validator (reward 0 for that query), while the same requests could have been answered in
time: the ten copies of a burst are the same image and are computed once.

Now the decision depends on who asks:

* **Permitted validators** (a validator permit on the metagraph) are never refused for load. In the
  blacklist step their request is only counted (:meth:`Admission.reserve` returns ``None``). In
  ``forward``, once the image is decoded and its sha256 is known:

  - a copy of an image that is already being computed waits for that computation
    (:class:`SingleFlight`: the burst's ten copies cost one engine call even when they land in
    different micro-batches);
  - otherwise :meth:`Admission.plan` compares the *expected completion* with the request's deadline:
    ``now + (distinct images in the engine + 1) × service time / parallelism``. The service time is
    an exponential moving average of the engine's time per distinct image (seeded with ``prior_s``).
    ``"full"`` when it fits: the engine runs as usual. ``"cheap"`` when it does not: the answer
    comes from the result cache when the image was seen, else the safe fallback (``finalize(None)``,
    0.4999 = "no roadwork"), without queueing engine work that would finish too late and delay the
    requests behind it. A cheap answer is a valid probability: the validator scores it like any
    other answer instead of a -1.

* **Everyone else** admitted by the blacklist (registered callers without a permit, only with
  ``--blacklist.allow_non_validators``) keeps the hard caps: 403 "miner busy" when ``max_concurrent``
  requests are in flight (all callers counted), and 403 when that caller alone has
  ``max_concurrent_per_hotkey`` in flight. Unregistered callers never get this far
  (:func:`~natix_miner.neuron.blacklist.check_caller`), and the per-caller rate limit
  (:class:`~natix_miner.neuron.blacklist.RateLimiter`) still refuses real abuse from anyone.

Reservations: the blacklist step runs before ``forward`` (all requests of a burst reach it before any
forward starts), so a slot is reserved there by ``(hotkey, nonce)`` and claimed by ``forward``, which
also learns when the request passed the blacklist and counts its deadline from then; a request
refused after the blacklist (bad signature, replay) never reaches ``forward`` and its reservation
expires after ``reservation_ttl_s``.

Everything here is thread-safe (the blacklist runs in the axon's threads, ``forward`` on its event
loop), never raises into the axon, and imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable, Optional

FULL = "full"
CHEAP = "cheap"


@dataclass
class AdmissionStats:
    full: int = 0  # distinct images sent to the engine
    cheap: int = 0  # answered from the cache or the fallback because the engine could not make the deadline
    joined: int = 0  # copies that waited for an identical image already being computed
    refused: int = 0  # 403 "busy" / per-caller cap (non-validators only)


class Admission:
    """In-flight accounting, hard caps for non-validators, deadline-aware plan for validators.

    ``max_concurrent`` / ``max_concurrent_per_hotkey``: the caps for callers without a validator
    permit (0 = none). ``prior_s``: service time per distinct image assumed before any measurement.
    ``parallelism``: distinct images the engine computes at once (1 on a CPU with one model worker).
    ``alpha``: weight of a new measurement in the service-time average. ``clock``: for tests.
    """

    def __init__(self, max_concurrent: int = 64, max_concurrent_per_hotkey: int = 32, *, prior_s: float = 0.5,
                 parallelism: int = 1, alpha: float = 0.2, reservation_ttl_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_concurrent = max(0, int(max_concurrent or 0))
        self.max_concurrent_per_hotkey = max(0, int(max_concurrent_per_hotkey or 0))
        self.service_s = max(1e-3, float(prior_s))
        self.parallelism = max(1, int(parallelism))
        self.alpha = float(alpha)
        self.reservation_ttl_s = float(reservation_ttl_s)
        self.clock = clock
        self.inflight = 0
        self.inflight_by: dict[Optional[str], int] = {}
        self.reserved: dict[tuple[Optional[str], Any], float] = {}
        self.computing = 0  # distinct images inside the engine now
        self.stats = AdmissionStats()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ counting (blacklist -> forward)
    def _count(self, hotkey: Optional[str], delta: int) -> None:
        self.inflight += delta
        if hotkey is not None:
            n = self.inflight_by.get(hotkey, 0) + delta
            if n > 0:
                self.inflight_by[hotkey] = n
            else:
                self.inflight_by.pop(hotkey, None)

    def _expire(self, now: float) -> None:
        for key, t in list(self.reserved.items()):
            if now - t > self.reservation_ttl_s:
                del self.reserved[key]
                self._count(key[0], -1)

    def reserve(self, hotkey: Optional[str], nonce: Any, *, validator: bool) -> Optional[str]:
        """Reserve a slot for this request (blacklist step). A refusal reason, or ``None`` when
        admitted. A permitted validator is always admitted."""
        cap, per = self.max_concurrent, self.max_concurrent_per_hotkey
        with self._lock:
            self._expire(self.clock())
            if not validator:
                if cap and self.inflight >= cap:
                    self.stats.refused += 1
                    return f"miner busy: {self.inflight} requests in flight (--blacklist.max_concurrent {cap})"
                if per and hotkey is not None and self.inflight_by.get(hotkey, 0) >= per:
                    self.stats.refused += 1
                    return (f"too many requests in flight from {hotkey} "
                            f"(--blacklist.max_concurrent_per_hotkey {per})")
            key = (hotkey, nonce)
            if key not in self.reserved:
                self.reserved[key] = self.clock()
                self._count(hotkey, +1)
        return None

    def claim(self, hotkey: Optional[str], nonce: Any) -> float | None:
        """``forward`` starts: its reservation becomes the running slot (or a slot is taken now).

        Returns when the request passed the blacklist (``clock()`` time), or ``None`` without a
        reservation: the miner counts the request's deadline from there, not from the start of
        ``forward``, because on a saturated machine the axon's steps in between can take seconds."""
        with self._lock:
            reserved_at = self.reserved.pop((hotkey, nonce), None)
            if reserved_at is None:  # expired or a direct call
                self._count(hotkey, +1)
            return reserved_at

    def release(self, hotkey: Optional[str]) -> None:
        with self._lock:
            self._count(hotkey, -1)

    # ------------------------------------------------------------------ the plan (forward)
    def expected_s(self) -> float:
        """Seconds until a new distinct image would be answered by the engine."""
        return (self.computing + 1) * self.service_s / self.parallelism

    def plan(self, deadline_at: float, now: float | None = None) -> str:
        """``"full"`` when the engine is expected to answer before ``deadline_at`` (then call
        :meth:`begin`/:meth:`end` around the engine call), else ``"cheap"``."""
        now = self.clock() if now is None else now
        with self._lock:
            if now + self.expected_s() <= deadline_at:
                return FULL
            self.stats.cheap += 1
            return CHEAP

    def begin(self) -> int:
        """A distinct image enters the engine; returns how many were there before it."""
        with self._lock:
            ahead = self.computing
            self.computing += 1
            self.stats.full += 1
            return ahead

    def end(self, elapsed_s: float | None, ahead: int = 0) -> None:
        """It left after ``elapsed_s`` (None: no measurement, e.g. it failed) with ``ahead`` in front."""
        with self._lock:
            self.computing = max(0, self.computing - 1)
            if elapsed_s is not None and elapsed_s >= 0:
                sample = elapsed_s * self.parallelism / (ahead + 1)
                self.service_s = max(1e-3, (1 - self.alpha) * self.service_s + self.alpha * sample)

    def snapshot(self) -> dict:
        with self._lock:
            return {"in_flight": self.inflight, "computing": self.computing,
                    "service_ms": round(self.service_s * 1000.0, 1), "full": self.stats.full,
                    "cheap": self.stats.cheap, "joined": self.stats.joined, "refused": self.stats.refused}


class SingleFlight:
    """One computation per key at a time on one event loop: later callers with the same key wait for
    the first one's result (``None`` when it failed) instead of computing it again."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def running(self, key: Hashable) -> Optional[asyncio.Future]:
        fut = self._flights.get(key)
        return fut if fut is not None and not fut.done() else None

    async def join(self, fut: asyncio.Future, timeout: float) -> Any:
        """Wait for another caller's computation; ``None`` when it fails or takes longer than ``timeout``."""
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=max(0.0, timeout))
        except (asyncio.TimeoutError, asyncio.CancelledError):
            return None

    async def lead(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``compute()`` as the leader for ``key``; followers get its result, or ``None`` if it raised."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._flights[key] = fut
        result = None
        try:
            result = await compute()
            return result
        finally:
            if not fut.done():
                fut.set_result(result)
            if self._flights.get(key) is fut:
                del self._flights[key]
