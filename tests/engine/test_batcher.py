"""The micro-batcher on its own (the engine-level batching test is in test_cascade.py)."""

from __future__ import annotations

import asyncio
import threading
import time

from natix_miner.engine.batcher import MicroBatcher, Pending, future_deliverer
from natix_miner.engine.deadline import Deadline


class Recorder:
    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, batch: list[Pending]) -> None:
        with self.lock:
            self.batches.append([p.payload for p in batch])
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        for p in batch:
            p.resolve(p.payload * 10)


def _submit_many(b: MicroBatcher, n: int) -> list[list]:
    out: list[list] = [[] for _ in range(n)]
    for i in range(n):
        b.submit(Pending(payload=i, deadline=Deadline.after(5.0), deliver=out[i].append))
    return out


def _wait(out: list[list], timeout: float = 3.0) -> None:
    t0 = time.monotonic()
    while any(not o for o in out) and time.monotonic() - t0 < timeout:
        time.sleep(0.005)


def test_a_lone_request_is_dispatched_at_once_when_idle():
    """With the models idle, a request does not wait for company: even with a one-minute window it is
    dispatched alone, at once (the batcher records that it did not gather)."""
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=16, max_wait_ms=60_000.0).start()
    try:
        out = _submit_many(b, 1)
        _wait(out, timeout=10.0)
        assert out == [[0]] and rec.batches == [[0]]
        st = b.stats()
        assert st["immediate"] == 1 and st["gathered"] == 0
        assert st["last_wait_ms"] < st["max_wait_ms"] / 10  # not the window: drained what was queued
        assert all(name.startswith("batcher-flush") for name in rec.threads)
    finally:
        b.close()


class Gated(Recorder):
    """The first batch blocks until ``gate`` is set (a model busy on a batch)."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, batch):
        if not self.started.is_set():
            self.started.set()
            self.gate.wait(5.0)
        super().__call__(batch)


def test_requests_arriving_while_a_batch_runs_are_one_batch():
    rec = Gated()
    b = MicroBatcher(rec, max_batch=10, max_wait_ms=5_000.0, workers=2).start()
    try:
        first = _submit_many(b, 1)
        assert rec.started.wait(5.0)
        rest = [[] for _ in range(10)]
        for i in range(10):
            b.submit(Pending(payload=1 + i, deadline=Deadline.after(30.0), deliver=rest[i].append))
        _wait(rest, timeout=10.0)  # cut at max_batch, long before the 5 s window
        rec.gate.set()
        _wait(first)
        assert rec.batches == [list(range(1, 11)), [0]]  # the second batch finished while the first was held
        st = b.stats()
        assert st["immediate"] == 1 and st["gathered"] == 1 and st["mean_batch"] == 5.5
    finally:
        rec.gate.set()
        b.close()


def test_knobs_are_checked_at_construction():
    import pytest

    for kw in ({"max_batch": 0}, {"max_wait_ms": -1.0}, {"workers": 0}):
        with pytest.raises(ValueError, match="max_batch and workers"):
            MicroBatcher(lambda batch: None, **kw)


def test_max_batch_caps_and_max_batch_one_disables():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=4, max_wait_ms=100.0).start()
    try:
        out = _submit_many(b, 10)
        _wait(out)
        assert all(len(x) <= 4 for x in rec.batches) and sum(len(x) for x in rec.batches) == 10
    finally:
        b.close()
    rec1 = Recorder()
    b1 = MicroBatcher(rec1, max_batch=1, max_wait_ms=100.0).start()
    try:
        out = _submit_many(b1, 5)
        _wait(out)
        assert sorted(rec1.batches) == [[i] for i in range(5)]
    finally:
        b1.close()


def test_busy_workers_make_later_requests_batch_together():
    rec = Recorder(delay=0.15)
    b = MicroBatcher(rec, max_batch=16, max_wait_ms=0.0, workers=1).start()
    try:
        first = _submit_many(b, 1)
        time.sleep(0.03)  # the first batch is now running; these queue up meanwhile
        rest = [[] for _ in range(6)]
        for i in range(6):
            b.submit(Pending(payload=100 + i, deadline=Deadline.after(5.0), deliver=rest[i].append))
        _wait(first + rest)
        assert rec.batches[0] == [0]
        assert rec.batches[1] == [100 + i for i in range(6)]
    finally:
        b.close()


def test_a_failing_flush_still_answers_everyone():
    rec = Recorder(fail=True)
    errors = []

    def on_error(items, exc):
        errors.append((len(items), str(exc)))
        for it in items:
            it.resolve(-1)

    b = MicroBatcher(rec, max_batch=8, max_wait_ms=20.0, on_error=on_error).start()
    try:
        out = _submit_many(b, 3)
        _wait(out)
        assert out == [[-1], [-1], [-1]]
        assert errors == [(3, "boom")]
    finally:
        b.close()


def test_close_fails_queued_requests_and_later_submits():
    started = threading.Event()

    def slow(batch):
        started.set()
        time.sleep(0.2)
        for p in batch:
            p.resolve("ok")

    failed = []

    def on_error(items, exc):
        failed.extend(it.payload for it in items)
        for it in items:
            it.resolve("closed")

    b = MicroBatcher(slow, max_batch=1, max_wait_ms=0.0, workers=1, on_error=on_error).start()
    out = _submit_many(b, 3)
    started.wait(2.0)
    b.close()
    b.submit(Pending(payload=99, deadline=Deadline.after(1.0), deliver=lambda r: None))
    _wait(out)
    assert 99 in failed
    assert all(o for o in out)  # nobody is left waiting
    assert out == [["ok"], ["closed"], ["closed"]]  # queued work is not run after close


def test_pending_resolves_once_and_future_deliverer_crosses_threads():
    got = []
    p = Pending(payload=1, deadline=Deadline.never(), deliver=got.append)
    assert p.resolve("a") and not p.resolve("b")
    assert got == ["a"] and p.done

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        deliver = future_deliverer(loop, fut)
        threading.Thread(target=deliver, args=("x",)).start()
        return await asyncio.wait_for(fut, 2.0)

    assert asyncio.run(main()) == "x"


def test_identical_images_in_a_burst_are_computed_once():
    """A validator's burst of ten identical copies costs one model call on one image."""
    import asyncio

    from PIL import Image

    from natix_miner.engine.cascade import CascadeEngine
    from natix_miner.profile import parse_profile

    prof = parse_profile({"name": "dedup", "batching": {"max_batch": 16, "max_wait_ms": 20},
                          "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
                              {"name": "m", "type": "fake", "licence": "MIT", "options": {"p": 0.97}}]}]})
    eng = CascadeEngine(prof, devices=["cpu"])
    eng.start()
    try:
        img = Image.new("RGB", (32, 32), (200, 10, 10))

        async def burst():
            return await asyncio.gather(*[eng.infer(img, key="same-bytes") for _ in range(10)])

        results = asyncio.run(burst())
        adapter = eng._runners["m"].adapter
        assert all(abs(r.prediction - results[0].prediction) < 1e-12 for r in results)
        assert eng.stats()["deduplicated"] + eng.stats()["cache_hits"] == 9
        assert sum(adapter.batches) == 1
    finally:
        eng.close()


def test_a_lone_engine_request_does_not_pay_the_batch_window():
    """With a no-op model and a 5 s batch window, one request is dispatched at once (the batcher's own
    record says it did not wait for company) and is answered by the model."""
    import asyncio

    from PIL import Image

    from natix_miner.engine.cascade import CascadeEngine
    from natix_miner.profile import parse_profile

    prof = parse_profile({"name": "lone", "cache": {"enabled": False},
                          "batching": {"max_batch": 16, "max_wait_ms": 5000},
                          "tiers": [{"name": "t", "exit_threshold": 0.6, "models": [
                              {"name": "m", "type": "fake", "licence": "MIT", "options": {"p": 0.9}}]}]})
    eng = CascadeEngine(prof, devices=["cpu"])
    eng.start()
    try:
        async def one():
            return await eng.infer(Image.new("RGB", (16, 16)))

        r = asyncio.run(one())
        st = eng.stats()["batcher"]
        assert r.exit_reason == "threshold"
        assert st["immediate"] == 1 and st["gathered"] == 0
        assert st["last_wait_ms"] < 500.0  # far from the 5000 ms window
    finally:
        eng.close()
