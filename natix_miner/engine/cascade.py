"""The cascade engine: the policy — tiers, early exit, deadlines, pooling (docs/architecture.md §1, §4, §6).

How a batch flows (``CascadeEngine._process``, used by the micro-batcher's flush threads and by
:meth:`CascadeEngine.infer_batch_sync` alike):

1. Tiers run in profile order on the images still undecided; the models of one tier run at the same
   time, each on its own worker (:mod:`natix_miner.engine.runner`), chunked by its ``batch_size``.
2. Before a tier, each image's time left is compared with each model's estimate (p95 latency ×
   chunks). A model runs on the images it fits; an image no model fits exits at once with what it has
   (``"deadline"``). Models that cannot run (breaker open, worker stuck) fail fast and do not count.
   Deadlines stay per image: a batch groups requests that arrived together, each keeps its own.
3. While a tier runs, the engine wakes at each image's deadline and at each call's own limit: an
   image past its deadline is answered with its votes so far; a call nobody waits for, or past its
   limit, is abandoned (its late result discarded, its worker busy until it returns).
4. After the tier, the votes so far are pooled (profile ``consensus``), remapped by the calibration
   and the image exits when ``max(P_cal, 1 − P_cal) >= tier.exit_threshold``. The *calibrated* P is
   tested because the calibration threshold is the decision boundary.
5. After the last tier: ``"exhausted"``; with no valid vote: ``"no_votes"`` and ``finalize(None)``.

The answer is ``finalize(calibrate(pooled, threshold, temperature), epsilon)``: a finite float in
[ε, 1 − ε], never exactly 0.5. Bringing models up is :mod:`natix_miner.engine.loader`; running a tier's
calls under the deadlines is :mod:`natix_miner.engine.executor`; one model's worker, breaker and output
check are :mod:`natix_miner.engine.runner`.

Cache: results are looked up by the caller's key (sha256 of the image bytes) before batching and
stored only when complete (exit by threshold or exhausted, no model error in the votes), so a
degraded answer is never replayed.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

from loguru import logger

from natix_miner.engine.batcher import MicroBatcher, Pending, future_deliverer
from natix_miner.engine.cache import ResultCache
from natix_miner.engine.consensus import calibrate, confidence, finalize, pool
from natix_miner.engine.executor import ImageState, run_tier
from natix_miner.engine.loader import load_order
from natix_miner.engine.runner import DEFAULT_MAX_CALL_S, EngineError, ModelRunner, classify_error
from natix_miner.types import CascadeResult, Deadline

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.devices import PlacementPlan
    from natix_miner.models.base import Adapter
    from natix_miner.profile import Profile, TierSpec

# re-exported: callers import these from the cascade module
__all__ = ["CascadeEngine", "DEFAULT_MAX_CALL_S", "EngineError", "INFER_GRACE_S", "classify_error", "load_order"]

#: how much longer than its deadline ``infer`` waits for the cascade before answering a fallback
INFER_GRACE_S = 0.1


@dataclass
class _Tier:
    spec: "TierSpec"
    runners: list[ModelRunner]


class CascadeEngine:
    """See the module docstring. Construct, :meth:`start`, then :meth:`infer` from asyncio code or
    :meth:`infer_batch_sync` from scripts; :meth:`close` at the end."""

    def __init__(self, profile: "Profile", *, allow_restricted: bool = False, devices: list[str] | None = None,
                 adapters: "dict[str, Adapter] | None" = None, device_memory_mb: dict[str, float] | None = None,
                 flush_workers: int = 2, breaker_failures: int = 3, breaker_cooldown_s: float = 30.0,
                 max_call_s: float = DEFAULT_MAX_CALL_S, headroom: float = 0.10):
        """``devices``: names to use (``cpu``, ``cuda``, ``cuda:N``; None = auto-detect, the CPU is
        always available for models pinned to it). ``adapters``: pre-built adapters by model name
        (tests). ``device_memory_mb``: device → total MB, overriding detection (tests, dry runs)."""
        self.profile = profile
        self.allow_restricted = allow_restricted
        self._devices = list(devices) if devices else None
        self._injected = dict(adapters or {})
        self._device_memory = dict(device_memory_mb) if device_memory_mb else None
        self.flush_workers = max(1, int(flush_workers))
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.max_call_s = max_call_s
        self.headroom = headroom
        self._tiers: list[_Tier] = []
        self._runners: dict[str, ModelRunner] = {}
        self.plan: "PlacementPlan | None" = None
        self.skipped: dict[str, str] = {}  # model -> why it is not running
        self.cache: ResultCache[CascadeResult] = ResultCache(profile.cache.size if profile.cache.enabled else 0)
        self._batcher: MicroBatcher | None = None
        self._start_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._ready = False
        self._closed = False
        self.requests = 0
        self.exit_reasons: Counter[str] = Counter()
        self.exits_per_tier: Counter[str] = Counter()
        self.deduplicated = 0  # identical images in a batch answered from one computation

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._ready and not self._closed

    def _capacities(self) -> dict[str, float]:
        from natix_miner.devices import resolve_capacities

        return resolve_capacities(self._devices, self._device_memory)

    def start(self) -> "PlacementPlan":
        """Build, place, load and warm up the models, then start the worker threads. Idempotent."""
        with self._start_lock:
            if self._ready:
                assert self.plan is not None
                return self.plan
            if self._closed:
                raise EngineError("engine was closed; build a new one")
            return self._start()

    def _start(self) -> "PlacementPlan":
        from natix_miner.engine.loader import load_models

        prof = self.profile
        up = load_models(prof, capacities=self._capacities, allow_restricted=self.allow_restricted,
                         adapters=self._injected, headroom=self.headroom, skipped=self.skipped)
        for tier in prof.tiers:
            if not tier.enabled:
                continue
            runners = []
            for t, ad in up.models:
                if t is tier:
                    r = ModelRunner(ad, tier.name, failure_threshold=self.breaker_failures,
                                    cooldown_s=self.breaker_cooldown_s, max_call_s=self.max_call_s)
                    runners.append(r)
                    self._runners[ad.name] = r
            if runners:
                self._tiers.append(_Tier(tier, runners))
        self.plan = up.plan
        self._batcher = MicroBatcher(self._process, max_batch=prof.batching.max_batch,
                                     max_wait_ms=prof.batching.max_wait_ms, workers=self.flush_workers,
                                     on_error=self._on_batch_error, name="engine").start()
        self._ready = True
        logger.info(f"engine ready: {len(self._runners)} model(s) in {len(self._tiers)} tier(s) "
                    f"[{', '.join(t.spec.name + ': ' + ', '.join(r.name for r in t.runners) for t in self._tiers)}]")
        return up.plan

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._batcher is not None:
            self._batcher.close()
        for r in self._runners.values():
            r.close()
            try:
                r.adapter.unload()
            except Exception as e:
                logger.warning(f"model {r.name}: unload failed: {e}")
        self._ready = False

    def __enter__(self) -> "CascadeEngine":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------ requests
    def _check_started(self) -> None:
        if not self._ready and not self._closed:
            raise EngineError("engine not started: call start() first")

    def _cache_hit(self, key: str | None, t0: float) -> CascadeResult | None:
        hit = self.cache.get(key)
        if hit is None:
            return None
        with self._stats_lock:
            self.exit_reasons["cache"] += 1
        return replace(hit, cached=True, exit_reason="cache", latency_ms=(time.monotonic() - t0) * 1000.0,
                       votes=list(hit.votes), tiers_used=list(hit.tiers_used))

    async def infer(self, image: Any, *, key: str | None = None, deadline: Deadline | None = None) -> CascadeResult:
        """Answer one image. Never blocks the event loop; never raises for model faults."""
        t0 = time.monotonic()
        self._check_started()
        with self._stats_lock:
            self.requests += 1
        if deadline is None:
            deadline = Deadline.after(self.profile.deadline_s)
        hit = self._cache_hit(key, t0)
        if hit is not None:
            return hit
        if self._closed or self._batcher is None:
            return self._fallback(t0, "fallback")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CascadeResult | None] = loop.create_future()
        req = Pending(payload=image, deadline=deadline, deliver=future_deliverer(loop, fut), key=key, enqueued_at=t0)
        self._batcher.submit(req)
        rem = deadline.remaining()
        try:
            res = await asyncio.wait_for(fut, timeout=None if math.isinf(rem) else rem + INFER_GRACE_S)
        except asyncio.TimeoutError:
            req.resolve(None)  # a late cascade answer is dropped
            logger.warning("engine did not answer by the deadline (queue saturated?); answering the fallback")
            return self._fallback(t0, "fallback")
        return res if res is not None else self._fallback(t0, "fallback")

    def infer_batch_sync(self, images: Sequence[Any], *, keys: Sequence[str | None] | None = None,
                         deadline_s: float | None = None) -> list[CascadeResult]:
        """Answer a list of images in the calling thread (evaluation tools).

        Same code path as a micro-batch flush, on one batch holding all images (each model is
        called in chunks of its ``batch_size``). ``deadline_s=None`` means no deadline: every
        tier runs (calls are still limited by ``timeout_s``, else ``max_call_s``).
        """
        t0 = time.monotonic()
        self._check_started()
        n = len(images)
        if keys is not None and len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} images")
        deadline = Deadline.after(deadline_s)
        results: list[CascadeResult | None] = [None] * n
        reqs: list[Pending] = []
        with self._stats_lock:
            self.requests += n
        for i, im in enumerate(images):
            k = keys[i] if keys is not None else None
            hit = self._cache_hit(k, t0)
            if hit is not None:
                results[i] = hit
                continue

            def deliver(r: Any, i: int = i) -> None:
                results[i] = r

            reqs.append(Pending(payload=im, deadline=deadline, deliver=deliver, key=k, enqueued_at=t0))
        if reqs:
            if self._closed:
                self._on_batch_error(reqs, RuntimeError("engine closed"))
            else:
                try:
                    self._process(reqs)
                except Exception as e:
                    logger.exception(f"batch failed: {e}")
                    self._on_batch_error(reqs, e)
        return [r if r is not None else self._fallback(t0, "fallback") for r in results]

    # ------------------------------------------------------------------------------ results
    def _fallback(self, t0: float, reason: str) -> CascadeResult:
        eps = self.profile.calibration.epsilon
        p = finalize(None, eps)
        with self._stats_lock:
            self.exit_reasons[reason] += 1
        return CascadeResult(prediction=p, confidence=confidence(p), tiers_used=[], votes=[],
                             latency_ms=(time.monotonic() - t0) * 1000.0, exit_reason=reason, raw_p=None)

    def _on_batch_error(self, items: list[Pending], exc: BaseException) -> None:
        for it in items:
            if not it.done:
                it.resolve(self._fallback(it.enqueued_at, "fallback"))

    def _pooled(self, s: ImageState) -> float | None:
        c = self.profile.consensus
        return pool(c.method, s.ps, s.ws, c.bias)

    def _calibrated(self, pooled: float) -> float:
        cal = self.profile.calibration
        return calibrate(pooled, cal.threshold, cal.temperature)

    def _finish(self, s: ImageState, reason: str) -> None:
        if s.done:
            return
        s.done = True
        pooled = self._pooled(s)
        eps = self.profile.calibration.epsilon
        if pooled is None:
            reason = "no_votes"
            pred = finalize(None, eps)
        else:
            pred = finalize(self._calibrated(pooled), eps)
        res = CascadeResult(prediction=pred, confidence=confidence(pred), tiers_used=list(s.tiers_used),
                            votes=list(s.votes), latency_ms=(time.monotonic() - s.req.enqueued_at) * 1000.0,
                            exit_reason=reason, raw_p=pooled)
        s.result = res
        with self._stats_lock:
            self.exit_reasons[reason] += 1
            self.exits_per_tier[s.tiers_used[-1] if s.tiers_used else "none"] += 1
        if reason in ("threshold", "exhausted") and s.req.key is not None and all(v.error is None for v in s.votes):
            self.cache.put(s.req.key, res)
        s.req.resolve(res)

    # ------------------------------------------------------------------------------ the cascade
    def _process(self, batch: list[Pending]) -> None:
        # Identical images in one batch (a validator's burst of ten copies) are computed once: the
        # first request with a key leads, the others get its result.
        states: list[ImageState] = []
        leaders: dict[str, ImageState] = {}
        followers: list[tuple[Pending, ImageState]] = []
        for r in batch:
            if r.done:
                continue
            if r.key is not None and r.key in leaders:
                followers.append((r, leaders[r.key]))
                continue
            st = ImageState(r)
            states.append(st)
            if r.key is not None:
                leaders[r.key] = st
        try:
            self._run_cascade(states)
        finally:
            for r, lead in followers:
                if lead.result is not None:
                    with self._stats_lock:
                        self.deduplicated += 1
                    r.resolve(replace(lead.result, latency_ms=(time.monotonic() - r.enqueued_at) * 1000.0))
                elif not r.done:
                    r.resolve(self._fallback(r.enqueued_at, "fallback"))

    def _run_cascade(self, states: list[ImageState]) -> None:
        active = states
        for tier in self._tiers:
            if not active:
                break
            now = time.monotonic()
            for s in active:
                if s.req.deadline.at <= now:
                    self._finish(s, "deadline")
            active = [s for s in active if not s.done]
            if not active:
                break
            assign = self._assign(tier, active)
            active = [s for s in active if not s.done]
            if not active:
                break
            run_tier(tier.spec.name, assign, self._finish)
            active = [s for s in active if not s.done]
            thr = tier.spec.exit_threshold
            for s in active:
                pooled = self._pooled(s)
                if pooled is not None and confidence(self._calibrated(pooled)) >= thr:
                    self._finish(s, "threshold")
            active = [s for s in active if not s.done]
        for s in active:
            self._finish(s, "exhausted")

    def _assign(self, tier: _Tier, active: list[ImageState]) -> list[tuple[ModelRunner, list[ImageState]]]:
        """Which images each model of the tier runs on.

        A model that can run (breaker closed or due for a trial, worker not stuck) gets the
        images whose remaining time covers its latency estimate. An image that no runnable model
        fits is answered now with exit "deadline" (the tier is skipped for it). Models that cannot
        run get every image: they fail fast ("breaker_open" / "busy"), which records why and lets
        the breaker count a stuck worker.
        """
        runnable = [r for r in tier.runners if r.can_run()]
        out: list[tuple[ModelRunner, list[ImageState]]] = []
        fitted: set[int] = set()
        for r in runnable:
            est = r.estimate_s(len(active))
            mine = [s for s in active if s.req.deadline.remaining() >= est]
            fitted.update(id(s) for s in mine)
            if mine:
                out.append((r, mine))
        if runnable:
            for s in active:
                if id(s) not in fitted:
                    logger.debug(f"tier {tier.spec.name} skipped for request {s.req.id}: "
                                 f"{s.req.deadline.remaining() * 1000:.0f} ms left is less than any model's estimate")
                    self._finish(s, "deadline")
        rest = [s for s in active if not s.done]
        for r in tier.runners:
            if r not in runnable and rest:
                out.append((r, rest))
        order = {id(r): i for i, r in enumerate(tier.runners)}
        out.sort(key=lambda rs: order[id(rs[0])])
        return out

    # ------------------------------------------------------------------------------ stats
    def stats(self) -> dict:
        with self._stats_lock:
            d: dict[str, Any] = {
                "profile": self.profile.name,
                "ready": self.ready,
                "requests": self.requests,
                "exit_reasons": dict(self.exit_reasons),
                "exits_per_tier": dict(self.exits_per_tier),
                "deduplicated": self.deduplicated,
            }
        c = self.cache.stats()
        d["cache_hits"] = c["hits"]
        d["cache"] = c
        d["batcher"] = self._batcher.stats() if self._batcher is not None else None
        d["models"] = {name: r.snapshot() for name, r in self._runners.items()}
        d["breakers"] = {name: r.breaker.state for name, r in self._runners.items()}
        d["skipped"] = dict(self.skipped)
        d["placement"] = self.plan.as_dict() if self.plan is not None else {}
        return d
