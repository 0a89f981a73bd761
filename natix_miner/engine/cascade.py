"""The cascade engine: tiers of models, early exit, deadlines, fault isolation, micro-batching.

How a batch flows (``CascadeEngine._process``, used by the micro-batcher's flush threads and by
:meth:`CascadeEngine.infer_batch_sync` alike):

1. Tiers run in profile order on the images that are still undecided. Every model of a tier is
   called once per batch (chunked by its ``batch_size``); the models of one tier run at the same
   time, each in its own worker thread.
2. Before a tier, each image's remaining time is compared with each model's estimate (its p95
   latency, ``LatencyTracker.estimate``, × number of chunks). A model runs on the images whose
   remaining time covers its estimate; an image that no model of the tier fits skips the tier and
   is answered at once with what it has (``exit_reason = "deadline"``). With one model per tier,
   or models of similar speed, this is "skip the tier when its max p95 does not fit"; with mixed
   speeds, the fast models still vote instead of the whole tier being lost. Models that cannot
   run (breaker open, worker stuck on an abandoned call) do not count in the estimate: they fail
   fast. Deadlines stay per image: a batch groups requests that arrived within a few ms, and
   each keeps its own deadline.
3. While a tier runs, the engine wakes at each image's deadline and at each call's own limit
   (``timeout_s`` per chunk): an image whose deadline passed is answered with its votes so far;
   a call nobody waits for any more, or past its limit, is *abandoned*: its late result is
   discarded, the model's worker is marked busy until the call returns (later calls fail fast
   with "busy" instead of queueing behind a hung model), and its breaker counts a failure.
4. After the tier, each image's votes so far are pooled (profile ``consensus``), the pooled P is
   remapped by the calibration (threshold → 0.5, temperature), and the image exits when
   ``max(P_cal, 1 − P_cal) >= tier.exit_threshold``. The *calibrated* P is used for the exit test
   because the calibration threshold is the decision boundary: confidence must measure the
   distance from that boundary, not from a raw 0.5 that is not where the decision is made.
5. After the last tier: ``"exhausted"``. With no valid vote at all: ``"no_votes"`` and the
   neutral fallback ``finalize(0.5) = 0.4999`` (class "none").

The answer is ``prediction = finalize(calibrate(pooled, threshold, temperature), epsilon)``:
a finite float in [ε, 1 − ε], never exactly 0.5.

Fault isolation: a model that raises (``MemoryError`` / ``torch.cuda.OutOfMemoryError`` are
recognised by name as "oom", and the CUDA cache is emptied when torch is already loaded),
returns NaN/out-of-range values or the wrong number of votes, or times out, loses its vote for
that batch; the error is counted, logged and recorded in the result's votes, and its circuit
breaker is updated (3 consecutive failures → skipped for a 30 s cool-down, then one trial call).

Cache: results are looked up by the caller's key (sha256 of the image bytes) before batching and
stored only when complete (exit by threshold or exhausted, no model error in the votes), so a
degraded answer is never replayed.
"""

from __future__ import annotations

import asyncio
import math
import queue
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loguru import logger

from natix_miner.engine.batcher import MicroBatcher, Pending, future_deliverer
from natix_miner.engine.breaker import CircuitBreaker
from natix_miner.engine.cache import ResultCache
from natix_miner.engine.consensus import calibrate, confidence, finalize, pool
from natix_miner.engine.deadline import Deadline, LatencyTracker
from natix_miner.engine.types import CascadeResult, ModelVote, Vote

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.devices import PlacementPlan
    from natix_miner.models.base import Adapter
    from natix_miner.profile import ModelSpec, Profile, TierSpec


class EngineError(RuntimeError):
    """The engine cannot start (no model left, nothing loads, bad device list)."""


#: how long a call may run when neither the request nor the model sets a limit (evaluation runs)
DEFAULT_MAX_CALL_S = 120.0
#: how much longer than its deadline ``infer`` waits for the cascade before answering a fallback
INFER_GRACE_S = 0.1


def classify_error(exc: BaseException) -> str:
    """``"oom"`` for MemoryError / any ``*OutOfMemoryError`` (torch's included, by name), else
    ``"error"``."""
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return "oom"
    return "error"


def _free_cuda_cache() -> None:
    torch = sys.modules.get("torch")  # never import torch just for this
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass


# ---------------------------------------------------------------------------------------------
# Per-model worker: one daemon thread, so a hung model never blocks interpreter exit


@dataclass
class _Job:
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


class _Worker:
    def __init__(self, name: str, runner: "_ModelRunner"):
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._runner = runner
        self._thread = threading.Thread(target=self._loop, name=f"model-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> None:
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


class _ModelRunner:
    """One adapter with its worker thread, breaker, latency window and counters."""

    def __init__(self, adapter: "Adapter", tier: str, *, failure_threshold: int, cooldown_s: float,
                 max_call_s: float):
        self.adapter = adapter
        self.spec: "ModelSpec" = adapter.spec
        self.name = adapter.name
        self.tier = tier
        opts = self.spec.options or {}
        self.breaker = CircuitBreaker(int(opts.get("breaker_failures", failure_threshold)),
                                      float(opts.get("breaker_cooldown_s", cooldown_s)), name=self.name)
        self.latency = LatencyTracker(self.spec.timeout_s)
        self.max_call_s = max_call_s
        self._lock = threading.Lock()
        self._stuck: _Job | None = None
        self.calls = 0  # predict jobs started
        self.failures = 0
        self.timeouts = 0
        self.busy = 0
        self.invalid = 0
        self.errors: Counter[str] = Counter()
        self._worker = _Worker(self.name, self)

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
    def _begin(self, job: _Job) -> bool:
        with self._lock:
            if job.abandoned:
                return False
            job.started_at = time.monotonic()
            self.calls += 1
            return True

    def _end(self, job: _Job) -> None:
        with self._lock:
            job.finished_at = time.monotonic()
            if self._stuck is job:
                self._stuck = None
                logger.info(f"model {self.name}: abandoned call returned after "
                            f"{job.finished_at - (job.started_at or job.submitted_at):.2f} s (result discarded); "
                            "worker free again")

    def _predict_chunks(self, images: list[Any], limit_at: float | None = None) -> list[Any]:
        bs = max(1, self.spec.batch_size)
        out: list[Any] = []
        # adapters that budget their own work (the VLM thinking tier) get the call's deadline
        wants_deadline = bool(getattr(self.adapter, "accepts_deadline", False)) and limit_at is not None
        for i in range(0, len(images), bs):
            chunk = images[i:i + bs]
            t = time.monotonic()
            if wants_deadline:
                votes = self.adapter.predict(chunk, deadline=Deadline(limit_at))
            else:
                votes = self.adapter.predict(chunk)
            self.latency.observe(time.monotonic() - t)
            votes = list(votes) if votes is not None else []
            if len(votes) != len(chunk):
                raise ValueError(f"predict returned {len(votes)} votes for {len(chunk)} images")
            out.extend(votes)
        return out

    # -- caller side
    def start(self, images: list[Any], timeout_cap_s: float) -> _Job | str:
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
        job = _Job(fn=lambda: self._predict_chunks(images, limit_at), n_chunks=n, limit_s=limit_s)
        self._worker.submit(job)
        return job

    def abandon(self, job: _Job, why: str) -> bool:
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

    def outcome(self, job: _Job) -> tuple[list[float | None], list[str | None]] | str:
        """Turn a finished job into per-image (p, error) lists, or one error string for all."""
        exc = job.future.exception()
        if exc is not None:
            kind = classify_error(exc)
            if kind == "oom":
                _free_cuda_cache()
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
            p = _checked_p(raw)
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


def _checked_p(raw: Any) -> float | None:
    try:
        p = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(p) or p < -1e-6 or p > 1.0 + 1e-6:
        return None
    return min(max(p, 0.0), 1.0)


# ---------------------------------------------------------------------------------------------


@dataclass
class _Tier:
    spec: "TierSpec"
    runners: list[_ModelRunner]


@dataclass
class _ImageState:
    req: Pending
    votes: list[ModelVote] = field(default_factory=list)
    tiers_used: list[str] = field(default_factory=list)
    ps: list[float] = field(default_factory=list)
    ws: list[float] = field(default_factory=list)
    done: bool = False
    result: CascadeResult | None = None

    def add(self, mv: ModelVote) -> None:
        self.votes.append(mv)
        if mv.p is not None:
            self.ps.append(mv.p)
            self.ws.append(mv.weight)


def _preallocates(spec: "ModelSpec") -> bool:
    """Engines that reserve a fraction of the GPU up front (vLLM checks at start that it is still free)."""
    return spec.type == "vlm" and str((spec.options or {}).get("engine", "")).lower() == "vllm"


def load_order(built: list[tuple[Any, "Adapter"]]) -> list[tuple[Any, "Adapter"]]:
    """Load order: engines that pre-allocate GPU memory first (one at a time), then everything else in
    profile order. Tiers keep their profile order regardless; this only decides what loads first."""
    return [b for b in built if _preallocates(b[1].spec)] + [b for b in built if not _preallocates(b[1].spec)]


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
        self._runners: dict[str, _ModelRunner] = {}
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
        from natix_miner.devices import detect_devices

        if self._device_memory is not None:
            caps = dict(self._device_memory)
            if self._devices:
                keep = {"cpu"} | {d for d in self._devices if d != "cuda"}
                if "cuda" in self._devices:
                    keep |= {d for d in caps if d.startswith("cuda:")}
                caps = {d: v for d, v in caps.items() if d in keep}
            caps.setdefault("cpu", detect_devices(cuda=False)["cpu"])
            return caps
        if not self._devices or "auto" in self._devices:
            return detect_devices(cuda=True)
        want_cuda = any(d.startswith("cuda") for d in self._devices)
        det = detect_devices(cuda=want_cuda)
        caps = {"cpu": det["cpu"]}
        for d in self._devices:
            if d == "cpu":
                continue
            if d == "cuda":
                caps.update({k: v for k, v in det.items() if k.startswith("cuda:")})
                if len(caps) == 1:
                    raise EngineError("device 'cuda' requested but no CUDA GPU is visible")
            elif d in det:
                caps[d] = det[d]
            else:
                raise EngineError(f"device {d!r} requested but not available; detected: {', '.join(det)}")
        return caps

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
        from natix_miner.devices import plan_placement
        from natix_miner.models.registry import build_adapter

        prof = self.profile
        chosen: list[tuple["TierSpec", "ModelSpec"]] = []
        for tier, spec in prof.models():
            if spec.restricted and not self.allow_restricted:
                kinds = [k for k, on in (("non-commercial", spec.noncommercial), ("gated", spec.gated)) if on]
                why = (f"licence {spec.licence!r} is {' and '.join(kinds)}; start with --engine.allow_restricted "
                       "(ALLOW_RESTRICTED_LICENCES=1) if you accept its terms")
                logger.warning(f"model {spec.name} skipped: {why}")
                self.skipped[spec.name] = why
                continue
            chosen.append((tier, spec))
        if not chosen:
            raise EngineError(f"{prof.source}: no model left to run after skipping restricted licences "
                              f"({', '.join(self.skipped) or 'none enabled'}); pass allow_restricted=True "
                              "(--engine.allow_restricted) or enable an unrestricted model")

        built: list[tuple["TierSpec", "Adapter"]] = []
        for tier, spec in chosen:
            try:
                ad = self._injected.get(spec.name) or build_adapter(spec, prof)
            except Exception as e:
                self._drop(spec.name, f"cannot build adapter: {type(e).__name__}: {e}", only=len(chosen) == 1)
                continue
            built.append((tier, ad))
        if not built:
            raise EngineError(f"{prof.source}: no adapter could be built; see the errors above")

        plan = plan_placement([(ad.spec, ad.memory_mb) for _, ad in built], self._capacities(),
                              self.headroom)  # raises PlacementError before anything loads
        logger.info(f"placement for profile {prof.name}:\n{plan.table()}")

        loaded: list[tuple["TierSpec", "Adapter"]] = []
        for tier, ad in load_order(built):
            dev = plan.device_of(ad.name)
            t0 = time.monotonic()
            try:
                if not ad.loaded:
                    ad.load(dev)
                ad.warmup()
            except Exception as e:
                plan.remove(ad.name)
                self._drop(ad.name, f"failed to load on {dev}: {type(e).__name__}: {e}", only=len(built) == 1)
                try:
                    ad.unload()
                except Exception:
                    pass
                continue
            warn = plan.record_measured(ad.name, ad.measured_memory_mb)
            if warn:
                logger.warning(warn)
            logger.info(f"model {ad.name} ({tier.name}) loaded on {dev} in {time.monotonic() - t0:.1f} s, "
                        f"{ad.memory_mb:.0f} MB")
            loaded.append((tier, ad))
        if not loaded:
            raise EngineError(f"{prof.source}: no model could be loaded; see the errors above")

        for tier in prof.tiers:
            if not tier.enabled:
                continue
            runners = []
            for t, ad in loaded:
                if t is tier:
                    r = _ModelRunner(ad, tier.name, failure_threshold=self.breaker_failures,
                                     cooldown_s=self.breaker_cooldown_s, max_call_s=self.max_call_s)
                    runners.append(r)
                    self._runners[ad.name] = r
            if runners:
                self._tiers.append(_Tier(tier, runners))
        self.plan = plan
        self._batcher = MicroBatcher(self._process, max_batch=prof.batching.max_batch,
                                     max_wait_ms=prof.batching.max_wait_ms, workers=self.flush_workers,
                                     on_error=self._on_batch_error, name="engine").start()
        self._ready = True
        logger.info(f"engine ready: {len(self._runners)} model(s) in {len(self._tiers)} tier(s) "
                    f"[{', '.join(t.spec.name + ': ' + ', '.join(r.name for r in t.runners) for t in self._tiers)}]")
        return plan

    def _drop(self, name: str, why: str, *, only: bool) -> None:
        if only:
            raise EngineError(f"model {name}: {why} (it is the only model, so the engine cannot start)")
        logger.error(f"model {name} dropped: {why}")
        self.skipped[name] = why

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

    def _pooled(self, s: _ImageState) -> float | None:
        c = self.profile.consensus
        return pool(c.method, s.ps, s.ws, c.bias)

    def _calibrated(self, pooled: float) -> float:
        cal = self.profile.calibration
        return calibrate(pooled, cal.threshold, cal.temperature)

    def _finish(self, s: _ImageState, reason: str) -> None:
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
        states: list[_ImageState] = []
        leaders: dict[str, _ImageState] = {}
        followers: list[tuple[Pending, _ImageState]] = []
        for r in batch:
            if r.done:
                continue
            if r.key is not None and r.key in leaders:
                followers.append((r, leaders[r.key]))
                continue
            st = _ImageState(r)
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

    def _run_cascade(self, states: list[_ImageState]) -> None:
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
            self._run_tier(tier, assign)
            active = [s for s in active if not s.done]
            thr = tier.spec.exit_threshold
            for s in active:
                pooled = self._pooled(s)
                if pooled is not None and confidence(self._calibrated(pooled)) >= thr:
                    self._finish(s, "threshold")
            active = [s for s in active if not s.done]
        for s in active:
            self._finish(s, "exhausted")

    def _assign(self, tier: _Tier, active: list[_ImageState]) -> list[tuple[_ModelRunner, list[_ImageState]]]:
        """Which images each model of the tier runs on.

        A model that can run (breaker closed or due for a trial, worker not stuck) gets the
        images whose remaining time covers its latency estimate. An image that no runnable model
        fits is answered now with exit "deadline" (the tier is skipped for it). Models that cannot
        run get every image: they fail fast ("breaker_open" / "busy"), which records why and lets
        the breaker count a stuck worker.
        """
        runnable = [r for r in tier.runners if r.can_run()]
        out: list[tuple[_ModelRunner, list[_ImageState]]] = []
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

    def _run_tier(self, tier: _Tier, assign: list[tuple[_ModelRunner, list[_ImageState]]]) -> None:
        tname = tier.spec.name
        seen: set[int] = set()
        for _, ss in assign:
            for s in ss:
                if id(s) not in seen:
                    seen.add(id(s))
                    s.tiers_used.append(tname)
        pending: dict[Future, tuple[_ModelRunner, _Job, list[_ImageState]]] = {}
        for r, ss in assign:
            cap = max(s.req.deadline.at for s in ss) - time.monotonic()
            job = r.start([s.req.payload for s in ss], cap if math.isfinite(cap) else 0.0)
            if isinstance(job, str):
                for s in ss:
                    s.add(ModelVote(r.name, tname, None, r.spec.weight, 0.0, job))
                continue
            pending[job.future] = (r, job, ss)

        def record(r: _ModelRunner, job: _Job, ss: list[_ImageState], outcome: Any) -> None:
            lat = ((job.finished_at or time.monotonic()) - job.submitted_at) * 1000.0
            for i, s in enumerate(ss):
                if s.done:
                    continue
                if isinstance(outcome, str):
                    s.add(ModelVote(r.name, tname, None, r.spec.weight, lat, outcome))
                else:
                    ps, errs = outcome
                    s.add(ModelVote(r.name, tname, ps[i], r.spec.weight, lat, errs[i]))

        while pending:
            now = time.monotonic()
            for r, job, ss in pending.values():
                for s in ss:
                    if not s.done and s.req.deadline.at <= now:
                        for r2, job2, ss2 in pending.values():
                            if any(x is s for x in ss2):
                                s.add(ModelVote(r2.name, tname, None, r2.spec.weight,
                                                (now - job2.submitted_at) * 1000.0, "deadline"))
                        self._finish(s, "deadline")
            for fut, (r, job, ss) in list(pending.items()):
                if fut.done():
                    continue
                waiting = any(not s.done for s in ss)
                if not waiting or now >= job.limit_at:
                    why = "no request waits for it any more" if not waiting else f"over its {job.limit_s:.3f} s limit"
                    if r.abandon(job, why):
                        del pending[fut]
                        record(r, job, ss, f"timeout after {(now - job.submitted_at):.3f} s ({why})")
            if not pending:
                break
            wake = min([s.req.deadline.at for _, _, ss in pending.values() for s in ss if not s.done]
                       + [j.limit_at for _, j, _ in pending.values()])
            done, _ = wait(list(pending), timeout=max(0.0, wake - time.monotonic()), return_when=FIRST_COMPLETED)
            for fut in done:
                r, job, ss = pending.pop(fut)
                record(r, job, ss, r.outcome(job))

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
