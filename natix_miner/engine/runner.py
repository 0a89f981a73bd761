"""The model runner: one adapter behind its own worker thread (the vLLM "worker" of this engine).

The cascade (:mod:`natix_miner.engine.cascade`) decides *what* runs; a :class:`ModelRunner` owns
*how* one model runs:

- a daemon worker thread (:class:`ModelWorker`) that calls ``adapter.predict`` one job at a time,
  so a hung model never blocks interpreter exit;
- chunking by the model's ``batch_size`` and the per-call limit (``timeout_s`` per chunk × chunks,
  capped by the latest deadline of the images; ``max_call_s`` when neither sets one);
- abandonment: a call nobody waits for any more, or past its limit, is given up; its late result
  is discarded and the worker counts as *stuck* until it returns, so later calls fail fast with
  "busy" instead of queueing behind a hung model;
- the circuit breaker (settings from the model spec: ``breaker_failures``, ``breaker_cooldown_s``)
  and the latency window the cascade plans with;
- the output check: each vote's ``p`` must be a finite number in [0, 1] (:func:`checked_p`);
  errors are classified (:func:`classify_error`: "oom" or "error") and counted.

Only plain records cross this boundary: the cascade hands in images and gets back per-image
``(p, error)`` lists or one error string.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from loguru import logger

from natix_miner.engine.breaker import CircuitBreaker
from natix_miner.engine.deadline import LatencyTracker
from natix_miner.types import Deadline, Vote

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.models.base import Adapter
    from natix_miner.profile import ModelSpec

#: how long a call may run when neither the request nor the model sets a limit (evaluation runs)
DEFAULT_MAX_CALL_S = 120.0


class EngineError(RuntimeError):
    """The engine cannot start (no model left, nothing loads, bad device list)."""


def classify_error(exc: BaseException) -> str:
    """``"oom"`` for MemoryError / any ``*OutOfMemoryError`` (torch's included, by name), else
    ``"error"``."""
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return "oom"
    return "error"


def free_cuda_cache() -> None:
    """Empty torch's CUDA cache after an OOM, when torch is already loaded (never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass


def checked_p(raw: Any) -> float | None:
    """``raw`` as a probability in [0, 1] (tiny float overshoot clamped), or None when it is not one."""
    try:
        p = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(p) or p < -1e-6 or p > 1.0 + 1e-6:
        return None
    return min(max(p, 0.0), 1.0)


@dataclass
class ModelJob:
    """One ``predict`` call (all chunks of one batch) as seen by both sides of the worker queue."""

    fn: Callable[[], Any]
    n_chunks: int
    limit_s: float  # the call's own limit (timeout_s per chunk × chunks)
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    abandoned: bool = False
    future: Future = field(default_factory=Future)

    @property
    def limit_at(self) -> float:
        return self.submitted_at + self.limit_s


class ModelWorker:
    """One daemon thread running a runner's jobs in order."""

    def __init__(self, name: str, runner: "ModelRunner"):
        self._q: queue.SimpleQueue[ModelJob | None] = queue.SimpleQueue()
        self._runner = runner
        self._thread = threading.Thread(target=self._loop, name=f"model-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: ModelJob) -> None:
        self._q.put(job)

    def stop(self) -> None:
        self._q.put(None)

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if not self._runner._begin(job):
                continue  # abandoned while queued
            try:
                res = job.fn()
            except BaseException as e:  # noqa: BLE001 - a model fault of any kind
                job.future.set_exception(e)
            else:
                job.future.set_result(res)
            finally:
                self._runner._end(job)


class ModelRunner:
    """One adapter with its worker thread, breaker, latency window and counters."""

    def __init__(self, adapter: "Adapter", tier: str, *, failure_threshold: int, cooldown_s: float,
                 max_call_s: float):
        self.adapter = adapter
        self.spec: "ModelSpec" = adapter.spec
        self.name = adapter.name
        self.tier = tier
        failures, cooldown = breaker_settings(self.spec, failure_threshold, cooldown_s)
        self.breaker = CircuitBreaker(failures, cooldown, name=self.name)
        self.latency = LatencyTracker(self.spec.timeout_s)
        self.max_call_s = max_call_s
        self._lock = threading.Lock()
        self._stuck: ModelJob | None = None
        self.calls = 0  # predict jobs started
        self.failures = 0
        self.timeouts = 0
        self.busy = 0
        self.invalid = 0
        self.errors: Counter[str] = Counter()
        self._worker = ModelWorker(self.name, self)

    # -- planning
    def n_chunks(self, n_images: int) -> int:
        return max(1, math.ceil(n_images / max(1, self.spec.batch_size)))

    def estimate_s(self, n_images: int) -> float:
        return self.latency.estimate() * self.n_chunks(n_images)

    def can_run(self) -> bool:
        """Breaker lets a call through and the worker is not stuck on an abandoned call."""
        with self._lock:
            if self._stuck is not None:
                return False
        return self.breaker.would_allow()

    # -- worker side
    def _begin(self, job: ModelJob) -> bool:
        with self._lock:
            if job.abandoned:
                return False
            job.started_at = time.monotonic()
            self.calls += 1
            return True

    def _end(self, job: ModelJob) -> None:
        with self._lock:
            job.finished_at = time.monotonic()
            if self._stuck is job:
                self._stuck = None
                logger.info(f"model {self.name}: abandoned call returned after "
                            f"{job.finished_at - (job.started_at or job.submitted_at):.2f} s (result discarded); "
                            "worker free again")

    def _predict_chunks(self, images: list[Any], limit_at: float) -> list[Any]:
        bs = max(1, self.spec.batch_size)
        out: list[Any] = []
        deadline = Deadline(limit_at)  # adapters that budget their own work (the VLM thinking tier) read it
        for i in range(0, len(images), bs):
            chunk = images[i:i + bs]
            t = time.monotonic()
            votes = self.adapter.predict(chunk, deadline=deadline)
            self.latency.observe(time.monotonic() - t)
            votes = list(votes) if votes is not None else []
            if len(votes) != len(chunk):
                raise ValueError(f"predict returned {len(votes)} votes for {len(chunk)} images")
            out.extend(votes)
        return out

    # -- caller side
    def start(self, images: list[Any], timeout_cap_s: float) -> ModelJob | str:
        """Submit one call for ``images``; returns the job, or an error string when skipped."""
        if not self.breaker.allow():
            return "breaker_open"
        with self._lock:
            stuck = self._stuck
        if stuck is not None:
            self.breaker.record_failure()
            with self._lock:
                self.failures += 1
                self.busy += 1
                self.errors["busy"] += 1
            return "busy: a previous call is still running"
        n = self.n_chunks(len(images))
        per_chunk = self.spec.timeout_s if self.spec.timeout_s is not None else self.max_call_s
        limit_s = min(per_chunk * n, timeout_cap_s if timeout_cap_s > 0 else per_chunk * n)
        limit_at = time.monotonic() + limit_s
        job = ModelJob(fn=lambda: self._predict_chunks(images, limit_at), n_chunks=n, limit_s=limit_s)
        self._worker.submit(job)
        return job

    def abandon(self, job: ModelJob, why: str) -> bool:
        """Give up on a call. False when it had already finished (then use its result)."""
        with self._lock:
            if job.finished_at is not None or job.future.done():
                return False
            job.abandoned = True
            started = job.started_at
            if started is not None:
                self._stuck = job
                self.failures += 1
                self.timeouts += 1
                self.errors["timeout"] += 1
        if started is None:
            self.breaker.cancel()  # never ran: not the model's fault
            return True
        elapsed = time.monotonic() - started
        self.latency.observe(elapsed)  # a lower bound, so the estimate learns the model is slow
        self.breaker.record_failure()
        logger.warning(f"model {self.name} ({self.tier}): call abandoned after {elapsed:.3f} s ({why}); "
                       f"breaker {self.breaker.state}")
        return True

    def outcome(self, job: ModelJob) -> tuple[list[float | None], list[str | None]] | str:
        """Turn a finished job into per-image (p, error) lists, or one error string for all."""
        exc = job.future.exception()
        if exc is not None:
            kind = classify_error(exc)
            if kind == "oom":
                free_cuda_cache()
            self.breaker.record_failure()
            with self._lock:
                self.failures += 1
                self.errors[kind] += 1
            msg = f"{kind}: {type(exc).__name__}: {exc}"[:300]
            logger.warning(f"model {self.name} ({self.tier}) failed: {msg}; breaker {self.breaker.state}")
            return msg
        ps: list[float | None] = []
        errs: list[str | None] = []
        bad = 0
        for v in job.future.result():
            raw = v.p if isinstance(v, Vote) else getattr(v, "p", v)
            p = checked_p(raw)
            if p is None:
                bad += 1
                ps.append(None)
                errs.append(f"invalid p: {raw!r}"[:100])
            else:
                ps.append(p)
                errs.append(None)
        if bad:
            self.breaker.record_failure()
            with self._lock:
                self.failures += 1
                self.invalid += 1
                self.errors["invalid"] += 1
            logger.warning(f"model {self.name} ({self.tier}): {bad}/{len(ps)} invalid probabilities "
                           f"(NaN or outside [0, 1]); those votes are dropped")
        else:
            self.breaker.record_success()
        return ps, errs

    def snapshot(self) -> dict:
        p50, p95 = self.latency.p50(), self.latency.p95()
        with self._lock:
            d = {
                "tier": self.tier,
                "device": self.adapter.device,
                "calls": self.calls,
                "failures": self.failures,
                "timeouts": self.timeouts,
                "busy": self.busy,
                "invalid": self.invalid,
                "errors": dict(self.errors),
                "stuck": self._stuck is not None,
            }
        d.update({
            "latency_p50_ms": None if p50 is None else p50 * 1000.0,
            "latency_p95_ms": None if p95 is None else p95 * 1000.0,
            "estimate_ms": self.latency.estimate() * 1000.0,
            "memory_mb": self.adapter.memory_mb,
            "breaker": self.breaker.snapshot(),
        })
        return d

    def close(self) -> None:
        self._worker.stop()


def breaker_settings(spec: "ModelSpec", failures: int, cooldown_s: float) -> tuple[int, float]:
    """The model's breaker settings: its spec fields when set, else the engine defaults."""
    f, c = spec.breaker_failures, spec.breaker_cooldown_s
    return (int(failures if f is None else f), float(cooldown_s if c is None else c))
