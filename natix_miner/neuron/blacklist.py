"""Who may query the miner, and in what order (PROTOCOL §4.3, §5.8).

Pure functions over a :class:`~natix_miner.neuron.chain.ChainSnapshot`, so they are trivial to
test and cannot raise into the axon (an exception inside bittensor's blacklist step turns into a
500 for the caller; every path here returns a decision instead).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from natix_miner.neuron.chain import ChainSnapshot


@dataclass(frozen=True)
class BlacklistPolicy:
    require_permit: bool = True  # --blacklist.force_validator_permit unless --blacklist.allow_non_validators
    min_stake: float = 0.0  # TAO; 0 = no floor


def check_caller(hotkey: str | None, snapshot: ChainSnapshot | None, policy: BlacklistPolicy) -> tuple[bool, str]:
    """Return ``(blacklisted, reason)`` for a caller hotkey. Never raises."""
    try:
        if not hotkey:
            return True, "missing caller hotkey"
        if snapshot is None:
            return True, "metagraph not synced yet"
        uid = snapshot.uid_of(hotkey)
        if uid is None:
            return True, f"unregistered hotkey {hotkey}"
        if policy.require_permit and not snapshot.validator_permit[uid]:
            return True, f"non-validator hotkey {hotkey} (uid {uid}) holds no validator permit"
        if policy.min_stake > 0:
            stake = snapshot.stake[uid]
            if not (stake >= policy.min_stake):  # also refuses NaN
                return True, f"stake {stake:.1f} of uid {uid} below --blacklist.min_stake {policy.min_stake:g}"
        return False, f"allowed uid {uid}"
    except Exception as e:  # defensive: a blacklist must never raise
        return True, f"blacklist error: {type(e).__name__}: {e}"


def has_validator_permit(hotkey: str | None, snapshot: ChainSnapshot | None) -> bool:
    """True when ``hotkey`` is registered and holds a validator permit: such a caller is never refused
    for load (:mod:`natix_miner.neuron.admission`), only degraded. Never raises."""
    try:
        if snapshot is None or not hotkey:
            return False
        uid = snapshot.uid_of(hotkey)
        if uid is None:
            return False
        return bool(snapshot.validator_permit[uid])
    except Exception:
        return False


def caller_priority(hotkey: str | None, snapshot: ChainSnapshot | None) -> float:
    """Priority = caller stake (TAO), like the official miner; 0.0 when unknown. Never raises."""
    try:
        if snapshot is None or not hotkey:
            return 0.0
        uid = snapshot.uid_of(hotkey)
        if uid is None:
            return 0.0
        s = float(snapshot.stake[uid])
        return s if math.isfinite(s) else 0.0
    except Exception:
        return 0.0


class RateLimiter:
    """Sliding-window request limit per caller hotkey (0 = unlimited). Thread-safe, never raises."""

    def __init__(self, max_requests: int, window_s: float = 60.0, max_callers: int = 10_000):
        self.max_requests = int(max_requests)
        self.window_s = float(window_s)
        self.max_callers = max_callers
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, hotkey: str, now: float | None = None) -> bool:
        if self.max_requests <= 0:
            return True
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._hits.get(hotkey)
            if q is None:
                if len(self._hits) >= self.max_callers:  # bound memory: forget idle callers
                    cutoff = now - self.window_s
                    for k in [k for k, v in self._hits.items() if not v or v[-1] < cutoff]:
                        del self._hits[k]
                q = self._hits.setdefault(hotkey, deque())
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.max_requests:
                return False
            q.append(now)
            return True
