"""Per-model circuit breaker.

States:

- ``closed``: calls go through; ``failure_threshold`` consecutive failures open it.
- ``open``: calls are refused (the model's vote is simply missing) until ``cooldown_s`` passed.
- ``half_open``: after the cool-down, exactly one trial call is let through; success closes the
  breaker, failure opens it again for another cool-down.

Every :meth:`CircuitBreaker.allow` that returns True must be followed by exactly one
:meth:`record_success`, :meth:`record_failure` or :meth:`cancel` (the engine records calls,
timeouts and "worker still busy" as outcomes, and cancels calls dropped before they started). The clock is injectable for tests.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic, name: str = ""):
        self.failure_threshold = max(1, int(failure_threshold))
        self.cooldown_s = max(0.0, float(cooldown_s))
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.consecutive_failures = 0
        self.successes = 0
        self.failures = 0
        self.rejected = 0  # calls refused while open / half-open with a trial in flight
        self.times_opened = 0

    @property
    def state(self) -> str:
        """Current state; an open breaker whose cool-down has passed reads as half_open."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
                return HALF_OPEN
            return self._state

    def would_allow(self) -> bool:
        """Whether :meth:`allow` would let a call through now (does not take the trial slot)."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                return self._clock() - self._opened_at >= self.cooldown_s
            return not self._trial_in_flight

    def allow(self) -> bool:
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() - self._opened_at < self.cooldown_s:
                    self.rejected += 1
                    return False
                self._state = HALF_OPEN
                self._trial_in_flight = False
            if self._trial_in_flight:
                self.rejected += 1
                return False
            self._trial_in_flight = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self.successes += 1
            self.consecutive_failures = 0
            self._state = CLOSED
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            self.consecutive_failures += 1
            if self._state == OPEN:
                return  # a call let through before it opened: the cool-down already runs
            if self._state == HALF_OPEN or self.consecutive_failures >= self.failure_threshold:
                self.times_opened += 1
                self._state = OPEN
                self._opened_at = self._clock()
                self._trial_in_flight = False

    def cancel(self) -> None:
        """An allowed call that never ran (it was dropped from a queue): free the trial slot."""
        with self._lock:
            if self._state == HALF_OPEN:
                self._trial_in_flight = False

    def snapshot(self) -> dict:
        state = self.state
        with self._lock:
            return {
                "state": state,
                "consecutive_failures": self.consecutive_failures,
                "successes": self.successes,
                "failures": self.failures,
                "rejected": self.rejected,
                "times_opened": self.times_opened,
            }
