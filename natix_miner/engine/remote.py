"""The miner's engine when the cascade runs as a shared service (``--engine.remote URL``).

:class:`RemoteEngine` has the part of :class:`~natix_miner.engine.cascade.CascadeEngine`'s interface
the miner uses (``start``, ``async infer(image, key=, deadline=)``, ``stats``, ``ready``, ``close``),
so the miner's request path does not change: it still decodes the image, builds the deadline and
finalises the answer; this class only replaces "run the cascade here" by "ask the service".

One request: result cache (by the image's sha256, like the in-process engine) → single flight (an
identical image already in flight, e.g. a validator's burst of ten copies, waits for that call
instead of sending its own, as the in-process engine computes a batch's copies once) → if the breaker lets
it through, POST the decoded image as raw RGB bytes with its remaining deadline to
``URL/infer`` (the service, ``python -m natix_miner.serve``, runs the same ``CascadeEngine``
there) → on any failure (connection refused, timeout, 5xx, a malformed answer) the *fallback*:
the local fallback engine when one is configured (``--engine.remote_fallback PROFILE``), else the
safe fallback value. The remote call is cut ``reserve_s`` before the deadline so the fallback
still answers in time.

Degraded mode: a :class:`~natix_miner.engine.breaker.CircuitBreaker` counts consecutive failures;
once open, requests go straight to the fallback (no time lost on a dead service) and a probe thread
polls ``URL/health`` every cool-down; the first healthy answer closes the breaker (reconnected).
``stats()["degraded"]`` (and the miner's ``/health``) says whether the service is in use.

Wire format (also read by :mod:`natix_miner.serve.deployments`): body = the image bytes, headers
``X-Image-Format`` (``raw``: RGB uint8 rows, with ``X-Image-Width`` / ``X-Image-Height``; or
``png``), ``X-Deadline-Ms`` (time left for the service), ``X-Image-Key`` (sha256, optional); the
answer is :meth:`CascadeResult.to_dict` as JSON.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

from loguru import logger

from natix_miner.engine.breaker import CLOSED, CircuitBreaker
from natix_miner.engine.cache import ResultCache
from natix_miner.engine.consensus import confidence, finalize
from natix_miner.engine.deadline import Deadline
from natix_miner.engine.types import CascadeResult, ModelVote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from natix_miner.profile import Profile

#: the service's largest accepted body (a 60-megapixel raw frame is 180 MB: too much to ship; PNG it)
MAX_RAW_PIXELS = 8_000_000


class WireError(ValueError):
    """A request or an answer does not follow the wire format."""


# ---------------------------------------------------------------------------------------------- wire
def encode_image(image: "Image.Image", fmt: str = "raw") -> tuple[bytes, dict[str, str]]:
    """Body and headers for one image. ``raw`` (default) costs no compression; images above
    :data:`MAX_RAW_PIXELS` are sent as PNG whatever ``fmt`` says."""
    im = image if image.mode == "RGB" else image.convert("RGB")
    w, h = im.size
    if fmt == "raw" and w * h <= MAX_RAW_PIXELS:
        return im.tobytes(), {"X-Image-Format": "raw", "X-Image-Width": str(w), "X-Image-Height": str(h)}
    if fmt not in ("raw", "png"):
        raise WireError(f"unknown image encoding {fmt!r} (raw or png)")
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), {"X-Image-Format": "png"}


def decode_image(body: bytes, headers: Mapping[str, str], *, max_pixels: int = 60_000_000) -> "Image.Image":
    """The inverse of :func:`encode_image`; raises :class:`WireError` on anything malformed."""
    from PIL import Image

    h = {k.lower(): v for k, v in headers.items()}
    fmt = h.get("x-image-format", "raw")
    if fmt == "raw":
        try:
            w, hh = int(h["x-image-width"]), int(h["x-image-height"])
        except (KeyError, ValueError) as e:
            raise WireError("raw image needs integer X-Image-Width and X-Image-Height headers") from e
        if w < 1 or hh < 1 or w * hh > min(max_pixels, MAX_RAW_PIXELS):
            raise WireError(f"bad raw image size {w}x{hh}")
        if len(body) != w * hh * 3:
            raise WireError(f"raw body is {len(body)} bytes, {w}x{hh} RGB needs {w * hh * 3}")
        return Image.frombytes("RGB", (w, hh), body)
    if fmt == "png":
        import io

        try:
            im = Image.open(io.BytesIO(body), formats=["PNG"])
            if im.size[0] * im.size[1] > max_pixels:
                raise WireError(f"png image too large: {im.size}")
            return im.convert("RGB")
        except WireError:
            raise
        except Exception as e:
            raise WireError(f"not a PNG image: {type(e).__name__}: {e}") from e
    raise WireError(f"unknown X-Image-Format {fmt!r} (raw or png)")


def result_from_dict(d: Any) -> CascadeResult:
    """A :class:`CascadeResult` from the service's JSON; :class:`WireError` if malformed or the
    prediction is not a finite number in [0, 1]."""
    try:
        p = float(d["prediction"])
        votes = [ModelVote(model=str(v["model"]), tier=str(v["tier"]),
                           p=None if v.get("p") is None else float(v["p"]), weight=float(v["weight"]),
                           latency_ms=float(v["latency_ms"]), error=v.get("error")) for v in d.get("votes", [])]
        raw = d.get("raw_p")
        res = CascadeResult(prediction=p, confidence=float(d.get("confidence", confidence(p))),
                            tiers_used=[str(t) for t in d.get("tiers_used", [])], votes=votes,
                            latency_ms=float(d.get("latency_ms", 0.0)), exit_reason=str(d["exit_reason"]),
                            raw_p=None if raw is None else float(raw), cached=bool(d.get("cached", False)))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise WireError(f"malformed answer from the service: {type(e).__name__}: {e}") from e
    if not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise WireError(f"the service answered prediction {p!r}, outside [0, 1]")
    return res


# ---------------------------------------------------------------------------------------------- client
@dataclass(frozen=True)
class RemoteOptions:
    """Knobs of :class:`RemoteEngine` (defaults suit a service on the same box or LAN)."""

    reserve_s: float | None = None  # cut the remote call this long before the deadline; None: 1.0 s
    #                                 with a local fallback engine (its time to answer), else 0.05 s
    failure_threshold: int = 2  # consecutive failures that open the breaker (degraded)
    cooldown_s: float = 5.0  # probe the service's /health this often while degraded
    connect_timeout_s: float = 1.0
    probe_timeout_s: float = 2.0
    encoding: str = "raw"  # raw | png

    def __post_init__(self) -> None:
        if self.reserve_s is not None and self.reserve_s < 0:
            raise ValueError("reserve_s must be >= 0")
        if self.failure_threshold < 1 or self.cooldown_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("failure_threshold >= 1, cooldown_s > 0 and connect_timeout_s > 0 are required")
        if self.encoding not in ("raw", "png"):
            raise ValueError(f"encoding must be raw or png, got {self.encoding!r}")


class RemoteEngine:
    """Ask a shared cascade service; answer locally when it cannot (see the module docstring)."""

    def __init__(self, url: str, profile: "Profile", *, fallback: Any = None,
                 options: RemoteOptions | None = None):
        """``profile``: the profile the miner would run (its deadline, cache size and epsilon are
        used here). ``fallback``: an engine with the same interface (a local ``CascadeEngine``) or
        None."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--engine.remote must be an http(s) URL, got {url!r}")
        self.url = url.rstrip("/")
        self.profile = profile
        self.fallback = fallback
        self.options = options or RemoteOptions()
        o = self.options
        self.reserve_s = o.reserve_s if o.reserve_s is not None else (1.0 if fallback is not None else 0.05)
        self.breaker = CircuitBreaker(o.failure_threshold, o.cooldown_s, name="remote")
        self.cache: ResultCache[CascadeResult] = ResultCache(profile.cache.size if profile.cache.enabled else 0)
        self._clients: dict[int, Any] = {}  # one AsyncClient per event loop
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probe_thread: threading.Thread | None = None
        self._started = False
        self._closed = False
        self.last_error: str | None = "not connected yet"
        self.service: dict[str, Any] = {}
        self.requests = 0
        self.remote_ok = 0
        self.remote_failed = 0
        self.local_answers = 0
        self.fallback_answers = 0
        self.reconnects = 0
        self.coalesced = 0  # requests answered by an identical request already in flight
        self._inflight: dict[str, asyncio.Future] = {}

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._started and not self._closed

    @property
    def degraded(self) -> bool:
        """True while the service is not in use (never reached, or the breaker is not closed)."""
        return not self._started or self.breaker.state != CLOSED

    def start(self) -> None:
        """Start the local fallback engine (if any) and probe the service once. Never waits for the
        service: a miner started before it answers from the fallback until it comes up."""
        if self._started:
            return
        if self.fallback is not None:
            self.fallback.start()
        self._started = True
        if self._probe():
            self.last_error = None
            logger.info(f"remote engine: service {self.url} is up ({self.service.get('profile', '?')})")
        else:
            # count it so the breaker opens and the probe thread keeps trying
            for _ in range(self.options.failure_threshold):
                self.breaker.record_failure()
            logger.warning(f"remote engine: service {self.url} not reachable yet ({self.last_error}); answering "
                           f"{'with the local fallback profile' if self.fallback else 'the fallback value'} "
                           f"until it is")
        self._probe_thread = threading.Thread(target=self._probe_loop, name="remote-probe", daemon=True)
        self._probe_thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self.fallback is not None:
            try:
                self.fallback.close()
            except Exception as e:  # pragma: no cover - best effort
                logger.warning(f"fallback engine close: {e}")
        for loop_client in list(self._clients.values()):
            loop, client = loop_client
            try:
                if not loop.is_closed() and loop.is_running():
                    asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            except Exception:  # pragma: no cover - best effort
                pass
        self._clients.clear()

    # ------------------------------------------------------------------------------ probe
    def _probe(self) -> bool:
        import httpx

        try:
            with httpx.Client(timeout=self.options.probe_timeout_s) as c:
                r = c.get(self.url + "/health")
            if r.status_code != 200:
                raise WireError(f"/health answered {r.status_code}: {r.text[:200]}")
            self.service = r.json()
            return True
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}"[:300]
            return False

    def _probe_loop(self) -> None:
        while not self._stop.wait(min(1.0, self.options.cooldown_s)):
            if self.breaker.state == CLOSED or not self.breaker.allow():
                continue
            if self._probe():
                self.breaker.record_success()
                self.reconnects += 1
                self.last_error = None
                logger.info(f"remote engine: service {self.url} is back; no longer degraded")
            else:
                self.breaker.record_failure()

    # ------------------------------------------------------------------------------ requests
    def _client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(id(loop))
            if entry is None or entry[0] is not loop:
                for k in [k for k, (lp, _) in self._clients.items() if lp.is_closed()]:
                    del self._clients[k]  # clients of finished loops (scripts calling asyncio.run repeatedly)
                client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256,
                                                                           max_keepalive_connections=64))
                entry = (loop, client)
                self._clients[id(loop)] = entry
        return entry[1]

    async def infer(self, image: Any, *, key: str | None = None, deadline: Deadline | None = None) -> CascadeResult:
        """Answer one image by the deadline; never raises for service faults."""
        t0 = time.monotonic()
        self.requests += 1
        if deadline is None:
            deadline = Deadline.after(self.profile.deadline_s)
        hit = self.cache.get(key)
        if hit is not None:
            return CascadeResult(prediction=hit.prediction, confidence=hit.confidence, tiers_used=list(hit.tiers_used),
                                 votes=list(hit.votes), latency_ms=(time.monotonic() - t0) * 1000.0,
                                 exit_reason="cache", raw_p=hit.raw_p, cached=True)
        if key is None:
            return await self._infer(image, key, deadline, t0)
        # single flight: identical images in flight (a validator's burst of ten copies) share one call,
        # as the in-process engine computes them once per micro-batch
        loop = asyncio.get_running_loop()
        lead = self._inflight.get(key)
        if lead is not None and lead.get_loop() is loop:
            self.coalesced += 1
            res = await asyncio.shield(lead)
            return replace(res, latency_ms=(time.monotonic() - t0) * 1000.0, votes=list(res.votes),
                           tiers_used=list(res.tiers_used))
        fut: asyncio.Future[CascadeResult] = loop.create_future()
        self._inflight[key] = fut
        try:
            res = await self._infer(image, key, deadline, t0)
            fut.set_result(res)
            return res
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody followed
            raise
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]

    async def _infer(self, image: Any, key: str | None, deadline: Deadline, t0: float) -> CascadeResult:
        budget = deadline.remaining() - self.reserve_s
        if not self._closed and budget > 0.01 and self.breaker.allow():
            try:
                res = await self._ask(image, key, budget)
            except WireError as e:  # the service answered, but not usably: its fault, not the network's
                self._failed(e)
            except Exception as e:  # timeout, refused, reset, 5xx
                self._failed(e)
            else:
                self.breaker.record_success()
                self.remote_ok += 1
                self.last_error = None
                res.latency_ms = (time.monotonic() - t0) * 1000.0
                if res.exit_reason in ("threshold", "exhausted") and all(v.error is None for v in res.votes):
                    self.cache.put(key, res)
                return res
        return await self._fallback(image, key, deadline, t0)

    def _failed(self, e: BaseException) -> None:
        was = self.breaker.state
        self.breaker.record_failure()
        self.remote_failed += 1
        self.last_error = f"{type(e).__name__}: {e or 'timed out'}"[:300]
        if self.breaker.state != was:
            logger.warning(f"remote engine degraded ({self.last_error}); answering locally, probing {self.url} "
                           f"every {self.options.cooldown_s:g} s")
        else:
            logger.debug(f"remote call failed: {self.last_error}")

    async def _ask(self, image: Any, key: str | None, budget_s: float) -> CascadeResult:
        body, headers = await asyncio.to_thread(encode_image, image, self.options.encoding)
        # the service must answer with time left for the trip back (HTTP + Serve proxy: tens of ms)
        margin = min(0.25, max(0.05, 0.05 * budget_s))
        headers["X-Deadline-Ms"] = f"{max(1.0, (budget_s - margin) * 1000.0):.1f}"
        if key:
            headers["X-Image-Key"] = key
        import httpx

        timeout = httpx.Timeout(budget_s, connect=min(budget_s, self.options.connect_timeout_s))
        r = await asyncio.wait_for(self._client().post(self.url + "/infer", content=body, headers=headers,
                                                       timeout=timeout), timeout=budget_s)
        if r.status_code != 200:
            raise RuntimeError(f"service answered HTTP {r.status_code}: {r.text[:200]}")
        return result_from_dict(r.json())

    async def _fallback(self, image: Any, key: str | None, deadline: Deadline, t0: float) -> CascadeResult:
        if self.fallback is not None and not self._closed:
            try:
                res = await self.fallback.infer(image, key=key, deadline=deadline)
                self.local_answers += 1
                return res
            except Exception as e:  # pragma: no cover - the local engine does not raise for model faults
                logger.warning(f"local fallback engine failed: {type(e).__name__}: {e}")
        self.fallback_answers += 1
        p = finalize(None, self.profile.calibration.epsilon)
        return CascadeResult(prediction=p, confidence=confidence(p), tiers_used=[], votes=[],
                             latency_ms=(time.monotonic() - t0) * 1000.0, exit_reason="fallback", raw_p=None)

    # ------------------------------------------------------------------------------ stats
    def stats(self) -> dict:
        d: dict[str, Any] = {
            "remote": self.url,
            "profile": self.profile.name,
            "ready": self.ready,
            "degraded": self.degraded,
            "last_error": self.last_error,
            "breaker": self.breaker.snapshot(),
            "requests": self.requests,
            "remote_ok": self.remote_ok,
            "remote_failed": self.remote_failed,
            "local_answers": self.local_answers,
            "fallback_answers": self.fallback_answers,
            "reconnects": self.reconnects,
            "coalesced": self.coalesced,
            "cache": self.cache.stats(),
            "service": {k: self.service.get(k) for k in ("profile", "ready", "models")} if self.service else {},
        }
        if self.fallback is not None:
            try:
                d["fallback_engine"] = self.fallback.stats()
            except Exception as e:  # pragma: no cover
                d["fallback_engine"] = {"error": str(e)}
        return d


def make_remote_engine(url: str, profile: "Profile", fallback_profile: str | None = None, *,
                       allow_restricted: bool = False, devices: list[str] | None = None,
                       options: RemoteOptions | None = None) -> RemoteEngine:
    """The miner's ``--engine.remote URL [--engine.remote_fallback PROFILE]``: a :class:`RemoteEngine`
    whose fallback is a local ``CascadeEngine`` over ``fallback_profile`` (with the miner's deadline)."""
    fallback = None
    if fallback_profile:
        from natix_miner.engine.cascade import CascadeEngine
        from natix_miner.profile import load_profile

        fp = load_profile(fallback_profile).replace(deadline_s=profile.deadline_s)  # profiles are frozen
        fallback = CascadeEngine(fp, allow_restricted=allow_restricted, devices=devices)
    return RemoteEngine(url, profile, fallback=fallback, options=options)
