"""Circuit breaker, result cache, deadline and latency tracker units."""

from __future__ import annotations

import threading
import time

import pytest

from natix_miner.engine.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from natix_miner.engine.cache import ResultCache
from natix_miner.engine.deadline import DEFAULT_PRIOR_S, Deadline, LatencyTracker


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_breaker_opens_after_consecutive_failures_then_half_open_then_closes():
    clk = Clock()
    b = CircuitBreaker(3, 30.0, clock=clk)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == CLOSED
    assert b.allow()
    b.record_failure()
    assert b.state == OPEN and b.times_opened == 1
    assert not b.allow() and b.rejected == 1
    clk.t += 29.9
    assert not b.allow()
    clk.t += 0.2
    assert b.state == HALF_OPEN and b.would_allow()
    assert b.allow()  # the one trial call
    assert not b.allow()  # a second caller is refused while the trial runs
    b.record_success()
    assert b.state == CLOSED and b.consecutive_failures == 0
    assert b.allow()


def test_breaker_success_resets_the_count_and_failed_trial_reopens():
    clk = Clock()
    b = CircuitBreaker(2, 5.0, clock=clk)
    b.allow(); b.record_failure()
    b.allow(); b.record_success()
    b.allow(); b.record_failure()
    assert b.state == CLOSED  # not two *consecutive* failures
    b.allow(); b.record_failure()
    assert b.state == OPEN
    clk.t += 5.0
    assert b.allow()
    b.record_failure()
    assert b.state == OPEN and b.times_opened == 2
    clk.t += 4.0
    assert not b.allow()
    clk.t += 1.0
    assert b.allow()
    b.cancel()  # the trial never ran: the slot is free again
    assert b.allow()
    snap = b.snapshot()
    assert snap["failures"] == 4 and snap["successes"] == 1 and snap["state"] == HALF_OPEN


def test_cache_lru_and_counters():
    c = ResultCache(2)
    assert c.get("a") is None
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now most recent
    c.put("c", 3)  # evicts b
    assert "b" not in c and c.get("b") is None
    assert c.get("c") == 3
    s = c.stats()
    assert s["hits"] == 2 and s["misses"] == 2 and s["evictions"] == 1 and s["size"] == 2
    c.put(None, 5)
    assert c.get(None) is None
    off = ResultCache(0)
    off.put("a", 1)
    assert off.get("a") is None and len(off) == 0


def test_cache_is_thread_safe():
    c = ResultCache(64)

    def work(k):
        for i in range(500):
            c.put(f"{k}-{i % 80}", i)
            c.get(f"{k}-{(i * 7) % 80}")

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(c) == 64
    s = c.stats()
    assert s["hits"] + s["misses"] == 2000


def test_deadline():
    d = Deadline.after(0.2)
    assert 0.15 < d.remaining() <= 0.2
    assert Deadline(time.monotonic() - 1).remaining() == 0.0
    assert Deadline.never().remaining() == float("inf")
    assert Deadline.after(None).remaining() == float("inf")


def test_latency_tracker_prior_then_p95():
    t = LatencyTracker(None, window=20, min_samples=5)
    assert t.estimate() == DEFAULT_PRIOR_S and t.p95() is None
    t.observe(0.3)  # one slow sample is believed at once
    assert t.estimate() == pytest.approx(0.3)
    t2 = LatencyTracker(2.0, min_samples=5)  # prior from a timeout_s of 2 s
    for _ in range(4):
        t2.observe(0.01)
    assert t2.estimate() == 2.0
    t2.observe(0.01)
    assert t2.estimate() == pytest.approx(0.01)
    for i in range(100):
        t.observe(i / 1000.0)
    xs = sorted(i / 1000.0 for i in range(80, 100))  # the window keeps the last 20
    assert t.p50() == pytest.approx((xs[9] + xs[10]) / 2)
    assert xs[17] <= t.p95() <= xs[19]
    t.observe(float("nan"))
    t.observe(-1)
    assert t.count == 101
